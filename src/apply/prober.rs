//! The API prober: while apply runs, asks the Kubernetes API for its version every second
//! with the credentials apply holds, to measure the downtime an operator's clients saw.

use crate::apply::executor::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asks the API for its version every second while apply runs, to measure the downtime an
/// operator's clients would have seen.
pub struct ApiProber {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(u64, u64, f64)>,
}

impl ApiProber {
    pub fn start(ctx: Arc<Context>) -> ApiProber {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut probes, mut failures, mut down) = (0u64, 0u64, 0.0f64);
            let mut client: Option<kube::Client> = None;
            let mut down_since: Option<Instant> = None;
            loop {
                let t = Instant::now();
                let ok = match &client {
                    Some(c) => tokio::time::timeout(Duration::from_secs(2), c.apiserver_version()).await.map(|r| r.is_ok()).unwrap_or(false),
                    None => false,
                };
                let ok = if ok {
                    true
                } else {
                    client = tokio::time::timeout(Duration::from_secs(3), ctx.kube_client()).await.ok().and_then(|r| r.ok());
                    client.is_some()
                };
                probes += 1;
                match (ok, down_since) {
                    (false, None) => {
                        failures += 1;
                        down_since = Some(t);
                    }
                    (false, Some(_)) => failures += 1,
                    (true, Some(since)) => {
                        down += since.elapsed().as_secs_f64();
                        down_since = None;
                    }
                    (true, None) => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => break,
                }
            }
            if let Some(since) = down_since {
                down += since.elapsed().as_secs_f64();
            }
            (probes, failures, down)
        });
        ApiProber { stop, task }
    }

    pub async fn stop(self) -> (u64, u64, f64) {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or((0, 0, 0.0))
    }
}

