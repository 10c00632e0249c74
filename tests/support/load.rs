//! Steady request load through sidecars, counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::client::Client;

/// Requests sent by [`Load`] through one URL: how many were answered 200, and every other
/// answer (status and body).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answered 200.
    pub ok: u32,
    /// Anything else.
    pub failed: Vec<String>,
}

/// One task per URL sending GETs back to back (5 ms apart) until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
}

impl Load {
    /// Starts sending to every URL of `urls`.
    pub fn start(urls: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = urls
            .into_iter()
            .map(|url| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = Client::http1();
                    let mut out = Outcome::default();
                    while !stop.load(Ordering::Relaxed) {
                        let r = client.get(&url).await;
                        if r.status == 200 {
                            out.ok += 1;
                        } else {
                            out.failed.push(format!("{} {}", r.status, r.text()));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops, and returns the outcome of each URL.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.expect("load task"));
        }
        out
    }
}
