//! Ctrl-C (SIGINT), SIGTERM and SIGHUP, handled the way Terraform handles an interrupt.
//!
//! While a command has work that must not be cut in half (apply's walk, rollback), it holds a
//! [`Graceful`] guard: the first signal then only asks it to stop at a safe point (apply starts
//! no new step, lets the steps that change nodes finish and be journaled, and cancels gates,
//! which only wait). Any other signal, a second one included, exits at once with 128 + the
//! signal's number, after closing the run's SSH connections and removing their temporary
//! directories, which a plain kill would leave behind (the ControlMasters are daemons that
//! outlive certrotate). A journaled apply resumes either way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use tokio::sync::watch;

/// A signal that asks certrotate to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
    HangUp,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT (Ctrl-C)",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::HangUp => "SIGHUP",
        }
    }

    fn number(self) -> i32 {
        match self {
            StopSignal::Interrupt => libc::SIGINT,
            StopSignal::Terminate => libc::SIGTERM,
            StopSignal::HangUp => libc::SIGHUP,
        }
    }
}

type Cleanup = Box<dyn FnOnce() + Send>;

struct Shared {
    requested: watch::Sender<Option<StopSignal>>,
    graceful_holders: AtomicUsize,
    cleanups: Mutex<BTreeMap<u64, Cleanup>>,
    next_cleanup: AtomicU64,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        requested: watch::channel(None).0,
        graceful_holders: AtomicUsize::new(0),
        cleanups: Mutex::new(BTreeMap::new()),
        next_cleanup: AtomicU64::new(0),
    })
}

/// Starts listening for the signals on a thread of its own, which lives as long as the
/// process: once a handler is installed the default action is gone, so the listener must
/// outlast every runtime a command creates and drops.
pub fn install() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    // Registered here, before returning, so no signal falls between install and the listener.
    let (mut interrupt, mut terminate, mut hang_up) = runtime.block_on(async {
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?, signal(SignalKind::hangup())?))
    })?;
    std::thread::Builder::new().name("certrotate-signals".into()).spawn(move || {
        runtime.block_on(async move {
            loop {
                let received = tokio::select! {
                    _ = interrupt.recv() => StopSignal::Interrupt,
                    _ = terminate.recv() => StopSignal::Terminate,
                    _ = hang_up.recv() => StopSignal::HangUp,
                };
                on_signal(received);
            }
        })
    })?;
    Ok(())
}

/// What a signal does.
#[derive(Debug, PartialEq, Eq)]
enum Response {
    /// Ask the running work to stop at its next safe point.
    RequestStop,
    /// Clean up and exit with this code; `why` is for the message.
    ExitNow { code: i32, why: &'static str },
}

fn respond(received: StopSignal, graceful_holders: usize, already_requested: bool) -> Response {
    match (graceful_holders > 0, already_requested) {
        (true, false) => Response::RequestStop,
        (true, true) => Response::ExitNow { code: 128 + received.number(), why: "a second stop signal" },
        (false, _) => Response::ExitNow { code: 128 + received.number(), why: "a stop signal" },
    }
}

fn on_signal(received: StopSignal) {
    let shared = shared();
    let already_requested = shared.requested.borrow().is_some();
    match respond(received, shared.graceful_holders.load(Ordering::SeqCst), already_requested) {
        Response::RequestStop => {
            shared.requested.send_replace(Some(received));
        }
        Response::ExitNow { code, why } => {
            // Written straight to the file descriptor: a hung-up terminal makes eprintln! panic.
            let text = format!("\ncertrotate: {} received ({why}): exiting now.\n", received.name());
            let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
            run_cleanups();
            std::process::exit(code);
        }
    }
}

fn run_cleanups() {
    let cleanups = std::mem::take(&mut *shared().cleanups.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, cleanup) in cleanups {
        cleanup();
    }
}

/// Work to do should the process exit on a signal (closing SSH connections); it is dropped
/// unrun when the returned handle is.
pub fn on_exit(cleanup: impl FnOnce() + Send + 'static) -> ExitCleanup {
    let shared = shared();
    let key = shared.next_cleanup.fetch_add(1, Ordering::SeqCst);
    shared.cleanups.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Box::new(cleanup));
    ExitCleanup { key }
}

/// Keeps a cleanup registered with [`on_exit`] until dropped.
#[derive(Debug)]
pub struct ExitCleanup {
    key: u64,
}

impl Drop for ExitCleanup {
    fn drop(&mut self) {
        shared().cleanups.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

/// While held, the first stop signal is a request to stop at a safe point, not an exit.
#[derive(Debug)]
pub struct Graceful {
    _private: (),
}

impl Graceful {
    pub fn begin() -> Graceful {
        shared().graceful_holders.fetch_add(1, Ordering::SeqCst);
        Graceful { _private: () }
    }
}

impl Drop for Graceful {
    fn drop(&mut self) {
        shared().graceful_holders.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A view of whether a stop was requested, for work that stops at safe points.
#[derive(Debug, Clone)]
pub struct StopRequest {
    receiver: watch::Receiver<Option<StopSignal>>,
}

impl Default for StopRequest {
    fn default() -> Self {
        StopRequest { receiver: shared().requested.subscribe() }
    }
}

impl StopRequest {
    /// A stop request of its own, not tied to the process's signals: the sender asks for the
    /// stop. For tests of work that stops at safe points, which must not share a stop.
    pub fn detached() -> (watch::Sender<Option<StopSignal>>, StopRequest) {
        let (sender, receiver) = watch::channel(None);
        (sender, StopRequest { receiver })
    }

    /// The signal that asked for the stop, if one did.
    pub fn requested(&self) -> Option<StopSignal> {
        *self.receiver.borrow()
    }

    /// Resolves once a stop is requested (at once if it already was).
    pub async fn wait(&self) -> StopSignal {
        let mut receiver = self.receiver.clone();
        loop {
            if let Some(signal) = *receiver.borrow_and_update() {
                return signal;
            }
            if receiver.changed().await.is_err() {
                // The sender lives in a static and is never dropped.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Asks for a stop as a signal would while a [`Graceful`] is held; for tests, which cannot
/// send this process a signal without disturbing the test harness.
#[cfg(test)]
pub fn request_for_test(signal: StopSignal) {
    shared().requested.send_replace(Some(signal));
}

#[cfg(test)]
pub fn reset_for_test() {
    shared().requested.send_replace(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_signal_under_a_graceful_guard_is_a_request() {
        assert_eq!(respond(StopSignal::Interrupt, 1, false), Response::RequestStop);
        assert_eq!(respond(StopSignal::Interrupt, 1, true), Response::ExitNow { code: 130, why: "a second stop signal" });
        assert_eq!(respond(StopSignal::Terminate, 0, false), Response::ExitNow { code: 143, why: "a stop signal" });
        assert_eq!(respond(StopSignal::HangUp, 0, true), Response::ExitNow { code: 129, why: "a stop signal" });
        assert_eq!(respond(StopSignal::HangUp, 2, false), Response::RequestStop);
    }

    #[tokio::test]
    async fn a_request_reaches_waiters_and_later_views() {
        // One test touches the process-wide state, so no other test races it.
        reset_for_test();
        let early = StopRequest::default();
        assert_eq!(early.requested(), None);
        let waiter = tokio::spawn({
            let early = early.clone();
            async move { early.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let _graceful = Graceful::begin();
        request_for_test(StopSignal::Terminate);
        assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap(), StopSignal::Terminate);
        assert_eq!(StopRequest::default().requested(), Some(StopSignal::Terminate), "a view taken after the request sees it");
        assert_eq!(StopRequest::default().wait().await, StopSignal::Terminate);
        reset_for_test();

        // Cleanups run once, and not at all once their handle is dropped.
        let ran = std::sync::Arc::new(AtomicUsize::new(0));
        let kept = on_exit({
            let ran = ran.clone();
            move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        });
        drop(on_exit({
            let ran = ran.clone();
            move || {
                ran.fetch_add(10, Ordering::SeqCst);
            }
        }));
        run_cleanups();
        run_cleanups();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        drop(kept);
    }
}
