//! One supervised service: a task that owns the service's process (or in-process task),
//! starts and stops it on command, and restarts it when it crashes while it is wanted (as
//! systemd's Restart=always). A unit without anything to run ("virtual", e.g. a stand-in not
//! yet wired) only keeps its wanted/active state, so `systemctl` still answers truthfully.

use crate::control::UnitStatus;
use crate::error::LabError;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};

/// A started unit: a child process, or an in-process task (e.g. a stand-in on a thread that
/// joined the node's network namespace) with a way to ask it to stop.
pub enum Running {
    Process(Child),
    Task { stop: Option<oneshot::Sender<()>>, done: oneshot::Receiver<()> },
}

impl Running {
    async fn wait(&mut self) -> String {
        match self {
            Running::Process(child) => child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            Running::Task { done, .. } => {
                let _ = done.await;
                "task ended".into()
            }
        }
    }

    async fn terminate(self, grace: Duration) {
        match self {
            Running::Process(mut child) => {
                if let Some(pid) = child.id() {
                    // SAFETY: signalling our own child by pid.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGTERM);
                    }
                }
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
            Running::Task { mut stop, done } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                let _ = tokio::time::timeout(grace, done).await;
            }
        }
    }
}

/// How a unit is started; called on every (re)start so it re-reads config on disk.
pub type Launcher = Arc<dyn Fn() -> Result<Running, LabError> + Send + Sync>;

enum Command {
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    /// Stop without grace (lab teardown: nothing to be graceful for).
    Kill(oneshot::Sender<()>),
}

/// Handle on a running service task.
#[derive(Clone)]
pub struct Service {
    name: String,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<UnitStatus>,
}

/// How long a stopping process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause before restarting a crashed process, so a crash loop does not eat the machine.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);

impl Service {
    /// Spawn the task. `launcher` None makes a virtual unit.
    pub fn spawn(name: String, launcher: Option<Launcher>) -> Service {
        Self::spawn_with_grace(name, launcher, STOP_GRACE)
    }

    /// As `spawn`, with `grace` between SIGTERM and SIGKILL on a stop (systemd's
    /// TimeoutStopSec, a pod's terminationGracePeriodSeconds).
    pub fn spawn_with_grace(name: String, launcher: Option<Launcher>, grace: Duration) -> Service {
        let (commands, mut inbox) = mpsc::channel::<Command>(16);
        let placeholder = launcher.is_none();
        let (status_tx, status) = watch::channel(UnitStatus { wanted: false, active: false, restarts: 0, placeholder });
        let task_name = name.clone();
        tokio::spawn(async move {
            let mut wanted = false;
            let mut child: Option<Running> = None;
            let mut restarts = 0u32;
            let start = |child: &mut Option<Running>| {
                if let Some(launch) = &launcher {
                    match launch() {
                        Ok(c) => *child = Some(c),
                        Err(e) => eprintln!("lab: {task_name}: cannot start: {e}"),
                    }
                }
            };
            loop {
                let active = child.is_some() || (launcher.is_none() && wanted);
                let _ = status_tx.send(UnitStatus { wanted, active, restarts, placeholder });
                let retry_due = wanted && child.is_none() && launcher.is_some();
                tokio::select! {
                    command = inbox.recv() => match command {
                        None => {
                            if let Some(c) = child.take() { c.terminate(grace).await; }
                            return;
                        }
                        Some(Command::Start(ack)) => {
                            wanted = true;
                            if child.is_none() { start(&mut child); }
                            let _ = ack.send(());
                        }
                        Some(Command::Stop(ack)) => {
                            wanted = false;
                            if let Some(c) = child.take() { c.terminate(grace).await; }
                            let _ = ack.send(());
                        }
                        Some(Command::Kill(ack)) => {
                            wanted = false;
                            if let Some(c) = child.take() { c.terminate(Duration::ZERO).await; }
                            let _ = ack.send(());
                        }
                    },
                    exit = async { child.as_mut().expect("guarded by is_some").wait().await }, if child.is_some() => {
                        child = None;
                        eprintln!("lab: {task_name}: exited ({exit})");
                        if wanted {
                            tokio::time::sleep(RESTART_BACKOFF).await;
                            restarts += 1;
                            start(&mut child);
                        }
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)), if retry_due => {
                        restarts += 1;
                        start(&mut child);
                    }
                }
            }
        });
        Service { name, commands, status }
    }

    async fn send(&self, make: impl FnOnce(oneshot::Sender<()>) -> Command) -> Result<(), LabError> {
        let (ack, done) = oneshot::channel();
        self.commands
            .send(make(ack))
            .await
            .map_err(|_| LabError::Refused(format!("service {} is shut down", self.name)))?;
        done.await.map_err(|_| LabError::Refused(format!("service {} is shut down", self.name)))
    }

    pub async fn start(&self) -> Result<(), LabError> {
        self.send(Command::Start).await
    }
    pub async fn stop(&self) -> Result<(), LabError> {
        self.send(Command::Stop).await
    }
    pub async fn kill(&self) -> Result<(), LabError> {
        self.send(Command::Kill).await
    }
    pub async fn restart(&self) -> Result<(), LabError> {
        self.stop().await?;
        self.start().await
    }
    pub fn status(&self) -> UnitStatus {
        *self.status.borrow()
    }
}
