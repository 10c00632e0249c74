//! The `file` grant: the access token is read from a file and re-read when it changes.
//!
//! Kubernetes updates a Secret volume by writing a new timestamped directory and swapping the
//! `..data` symlink; editors and `mv` replace the file by rename. Both show up as events on the
//! file's *directory*, so that is what is watched (inotify through `notify`). A periodic check
//! backs the watch up (network file systems, missed events). A file that is empty, unreadable
//! or holds bytes a header cannot carry keeps the previous token and the reason is logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::secret::read_secret_file;
use crate::token::{NewToken, TokenStore};

/// Watches a token file and publishes its content into a store.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    poll_interval: Duration,
    store: Arc<TokenStore>,
    last_error: Option<String>,
    metrics: Option<crate::metrics::Metrics>,
}

impl FileSource {
    /// A source for `path`, checked at least every `poll_interval`.
    pub fn new(path: PathBuf, poll_interval: Duration, store: Arc<TokenStore>) -> Self {
        FileSource {
            path,
            poll_interval,
            store,
            last_error: None,
            metrics: None,
        }
    }

    /// Counts each token change (and each newly unusable file) in
    /// `token_sidecar_token_refreshes_total`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, trigger: &str, result: &str) {
        if let Some(m) = &self.metrics {
            m.token_refreshes
                .with_label_values(&[self.store.name(), trigger, result])
                .inc();
        }
    }

    /// Reads the file once and publishes its token if it differs from the current one.
    /// Returns whether a token is held afterwards.
    pub fn reload(&mut self, trigger: &'static str) -> bool {
        match self.read() {
            Ok(changed) => {
                if changed || self.last_error.is_some() {
                    self.store.record_attempt(trigger, Ok(()));
                }
                if changed {
                    self.count(trigger, "success");
                }
                self.last_error = None;
            }
            Err(e) => {
                if self.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(
                        token = %self.store.name(),
                        path = %self.path.display(),
                        error = %e,
                        "token file not usable; keeping the previous token"
                    );
                    self.store.record_attempt(trigger, Err(e.clone()));
                    self.count(trigger, "failure");
                }
                self.last_error = Some(e);
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
    pub async fn run(mut self, cancel: CancellationToken) {
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
        self.reload("file");
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
            self.reload("file");
        }
    }
}
