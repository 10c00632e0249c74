//! The `file` grant: the access token is read from a file and re-read when it changes.
//!
//! Kubernetes updates a Secret volume by writing a new timestamped directory and swapping the
//! `..data` symlink; editors and `mv` replace the file by rename. Both show up as events on the
//! file's *directory*, so that is what is watched (inotify through `notify`). A periodic check
//! backs the watch up (network file systems, missed events). A file that is empty, unreadable,
//! oversized or holds bytes a header cannot carry keeps the previous token and the reason is
//! logged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::source::{RefreshError, TokenSource};
use super::{NewToken, Outcome, TokenStore, Trigger};
use crate::secret::read_secret_file;

/// A token file, watched, publishing its content into a store.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    poll_interval: Duration,
    store: Arc<TokenStore>,
    /// The last error reported, so that a file that stays bad is reported once.
    last_error: Mutex<Option<String>>,
}

impl TokenFile {
    /// A source for `path`, checked at least every `poll_interval`.
    pub fn new(path: PathBuf, poll_interval: Duration, store: Arc<TokenStore>) -> Self {
        TokenFile {
            path,
            poll_interval,
            store,
            last_error: Mutex::new(None),
        }
    }

    /// Reads the file once and publishes its token if it differs from the current one.
    /// Returns whether a token is held afterwards.
    pub fn reload(&self, trigger: Trigger) -> bool {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match self.read() {
            // The watcher's reloads are counted when something changed; a manual one (`POST
            // /refresh`) is an attempt someone asked for, counted whatever it finds.
            Ok(changed) => {
                if changed {
                    self.store.record(trigger, Outcome::Obtained);
                } else if last.is_some() || trigger == Trigger::Manual {
                    // The file is good again (or was asked for), with the token already held.
                    self.store.record(trigger, Outcome::Reused);
                }
                *last = None;
            }
            Err(e) => {
                let new = last.as_deref() != Some(e.as_str());
                if new {
                    tracing::warn!(
                        token = %self.store.name(),
                        path = %self.path.display(),
                        error = %e,
                        "token file not usable; keeping the previous token"
                    );
                }
                if new || trigger == Trigger::Manual {
                    self.store.record(trigger, Outcome::Failed(e.clone()));
                }
                *last = Some(e);
            }
        }
        self.store.load().is_some()
    }

    fn read(&self) -> Result<bool, String> {
        let secret = read_secret_file(&self.path).map_err(|e| e.to_string())?;
        if let Some(current) = self.store.load().as_ref() {
            if current.access_token() == &secret {
                return Ok(false);
            }
        }
        self.store
            .publish(NewToken {
                access_token: secret,
                expires_at: None,
                obtained_at: SystemTime::now(),
            })
            .map_err(|e| format!("token file {}: {e}", self.path.display()))?;
        Ok(true)
    }

    /// Watches the file until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let watch_dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), |p| p.to_owned());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                // A full channel already means "look again": coalesce.
                let _ = tx.try_send(());
            }
        })
        .and_then(|mut w| {
            w.watch(&watch_dir, notify::RecursiveMode::NonRecursive)
                .map(|()| w)
        });
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    path = %watch_dir.display(),
                    error = %e,
                    "cannot watch the token file's directory; relying on the periodic check"
                );
                None
            }
        };
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // A change between the first read and the watch starting would otherwise wait for the
        // periodic check.
        self.reload(Trigger::File);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                Some(()) = rx.recv() => {
                    // Let a burst of events (a symlink swap is several) settle.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            self.reload(Trigger::File);
        }
    }
}

impl TokenSource for TokenFile {
    fn refresh_now(&self, trigger: Trigger) -> BoxFuture<'_, Result<(), RefreshError>> {
        self.reload(trigger);
        let status = self.store.status();
        let result = match status.error {
            Some(e) if status.result == Some("failure") => Err(RefreshError::Failed(e)),
            _ => Ok(()),
        };
        Box::pin(async move { result })
    }

    fn on_unauthorized(&self, failed_version: u64) -> BoxFuture<'_, Option<u64>> {
        // The file may hold a newer token than the watch has seen yet.
        self.reload(Trigger::File);
        let v = self.store.version();
        Box::pin(async move { (v > failed_version).then_some(v) })
    }

    fn info(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "token_file": self.path.display().to_string() }))
    }
}
