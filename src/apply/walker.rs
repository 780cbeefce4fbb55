//! The walker: schedules an action graph's steps in dependency order and hands each ready
//! step to a [`StepRunner`], which does the work. The walker knows nothing of SSH, Azure or
//! Kubernetes; it owns the order (the plan's order among ready steps), the concurrency bound,
//! resume (steps a [`StepRecord`] holds as done are skipped), the stop signal (no new step
//! starts, gates in flight are cancelled, actions in flight finish and are recorded) and the
//! first failure (nothing new is scheduled; work in flight finishes).
//!
//! Apply and rollback both walk with it, over different graphs and runners.

use crate::apply::progress::Event;
use crate::interrupt::{StopRequest, StopSignal};
use crate::plan::graph::ActionGraph;
use crate::plan::step::{Phase, Step};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Why a step failed: the error and what was observed, for the operator.
#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    pub observed: Vec<String>,
}

impl StepError {
    pub fn new(message: impl Into<String>) -> Self {
        StepError { message: message.into(), observed: Vec::new() }
    }
}

/// Does one step's work. `Ok` carries an optional note for the journal.
#[async_trait]
pub trait StepRunner: Send + Sync + 'static {
    async fn run(&self, step: &Step) -> Result<Option<String>, StepError>;
}

/// What earlier runs finished, and where this run records what it finishes.
#[async_trait]
pub trait StepRecord: Send + Sync {
    fn is_done(&self, id: &str) -> bool;
    /// Recorded only because `--force` skipped it: it runs again when it can.
    fn was_forced(&self, id: &str) -> bool;
    /// Records a finished step; it is on disk when this returns.
    async fn record(&self, id: &str, secs: f64, note: Option<String>) -> std::io::Result<()>;
    /// Where the record lives, for error messages.
    fn location(&self) -> String;
}

/// Where the walker reports starts, skips, finishes, failures and warnings.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// How a walk ended.
#[derive(Debug, Default)]
pub struct WalkResult {
    pub failed: Vec<(String, StepError)>,
    pub done: usize,
    pub skipped: usize,
    /// Seconds spent in gates and waits for reboots, versus everything else.
    pub waiting_secs: f64,
    pub own_secs: f64,
    /// A stop signal ended the walk early: every step it had started finished, except gates.
    pub interrupted: Option<StopSignal>,
    /// Gates in flight when the stop came, cancelled because they only wait.
    pub cancelled_gates: Vec<String>,
}

pub struct WalkSettings {
    /// At most this many steps run at once (at least one).
    pub parallelism: usize,
    pub stop: StopRequest,
}

struct InFlight {
    id: String,
    gate: bool,
    handle: tokio::task::AbortHandle,
}

/// The walk's bookkeeping: how many predecessors each step still waits for, and which steps
/// are ready, kept in the plan's order.
struct Schedule<'g> {
    graph: &'g ActionGraph,
    position: HashMap<&'g str, usize>,
    pending: HashMap<&'g str, usize>,
    ready: Vec<&'g str>,
}

impl<'g> Schedule<'g> {
    fn new(graph: &'g ActionGraph, order: &[&'g Step]) -> Self {
        let position: HashMap<&str, usize> = order.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
        let pending: HashMap<&str, usize> = order.iter().map(|s| (s.id.as_str(), graph.predecessors(&s.id).len())).collect();
        let ready = order.iter().map(|s| s.id.as_str()).filter(|id| pending[id] == 0).collect();
        Schedule { graph, position, pending, ready }
    }

    /// The ready step that comes first in the plan.
    fn next(&mut self) -> Option<&'g str> {
        let (at, _) = self.ready.iter().enumerate().min_by_key(|(_, id)| self.position[*id])?;
        Some(self.ready.swap_remove(at))
    }

    fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// A step is done (or skipped): its successors wait for one step fewer.
    fn finished(&mut self, id: &str) {
        for next in self.graph.successors(id) {
            let (key, left) = self.pending.get_key_value(next).map(|(k, v)| (*k, *v)).expect("a step of the graph");
            self.pending.insert(key, left - 1);
            if left == 1 {
                self.ready.push(key);
            }
        }
    }
}

/// Walks the graph. Returns when every step finished or, after a failure or a stop signal,
/// when the work in flight has finished.
pub async fn walk<R: StepRunner>(graph: &ActionGraph, runner: Arc<R>, record: &dyn StepRecord, events: &dyn EventSink, settings: &WalkSettings) -> WalkResult {
    let order = match graph.topological_order() {
        Ok(o) => o,
        Err(e) => return WalkResult { failed: vec![("graph".into(), StepError::new(e.to_string()))], ..WalkResult::default() },
    };
    let mut schedule = Schedule::new(graph, &order);
    // Preflight gates prove the cluster healthy before anything changes. Once an earlier run
    // of this plan changed the cluster, it is mid-rotation by design (etcd members trust
    // different CAs until each restarts), so a preflight run again would wait for a health
    // that only the rest of the plan brings back. It passed before the changes began.
    let changes_began = graph.steps().any(|s| s.operation.is_disruptive() && record.is_done(&s.id));
    let mut running = tokio::task::JoinSet::new();
    let mut result = WalkResult::default();
    let mut failed = false;
    let mut in_flight: HashMap<tokio::task::Id, InFlight> = HashMap::new();
    loop {
        if result.interrupted.is_none() {
            if let Some(signal) = settings.stop.requested() {
                result.interrupted = Some(signal);
                stop_for_signal(events, signal, &in_flight, &mut result);
            }
        }
        while !failed && result.interrupted.is_none() && running.len() < settings.parallelism.max(1) && schedule.has_ready() {
            let id = schedule.next().expect("a ready step");
            let step = graph.step(id).expect("a step of the graph");
            let gate = step.operation.is_gate();
            // Gates look again on every run: what held before a failure may not hold now.
            // Steps skipped under --force were not done and run when they can.
            let passed_preflight = gate && changes_began && step.phase == Phase::Preflight;
            if (!gate || passed_preflight) && record.is_done(id) && !record.was_forced(id) {
                let reason = if gate { "passed before the changes began (journal); the cluster is mid-rotation now" } else { "already done (journal)" };
                events.emit(Event::StepSkipped { id: id.to_string(), reason: reason.into() });
                result.skipped += 1;
                schedule.finished(id);
                continue;
            }
            // Reported here, as the step is scheduled, not when its task first runs: a stop
            // signal's warning, which names the steps in flight, must come after their starts.
            events.emit(Event::StepStarted { id: step.id.clone(), operation: step.operation.to_string(), target: step.target.clone(), phase: step.phase });
            let (runner, step) = (runner.clone(), step.clone());
            let handle = running.spawn(async move {
                let started = Instant::now();
                let outcome = runner.run(&step).await;
                (step.id, outcome, started.elapsed().as_secs_f64())
            });
            in_flight.insert(handle.id(), InFlight { id: id.to_string(), gate, handle });
        }
        let joined = if result.interrupted.is_some() || running.is_empty() {
            running.join_next_with_id().await
        } else {
            tokio::select! {
                joined = running.join_next_with_id() => joined,
                signal = settings.stop.wait() => {
                    result.interrupted = Some(signal);
                    stop_for_signal(events, signal, &in_flight, &mut result);
                    continue;
                }
            }
        };
        let Some(joined) = joined else { break };
        let (id, outcome, secs) = match joined {
            Ok((task, v)) => {
                in_flight.remove(&task);
                // A gate can finish in the moment its abort comes: then it is done, not cancelled.
                result.cancelled_gates.retain(|g| *g != v.0);
                v
            }
            Err(e) if e.is_cancelled() => {
                if let Some(f) = in_flight.remove(&e.id()) {
                    events.emit(Event::StepSkipped { id: f.id, reason: "gate cancelled by the stop signal; it runs again on resume".into() });
                }
                continue;
            }
            Err(e) => {
                let id = in_flight.remove(&e.id()).map(|f| f.id).unwrap_or_else(|| "(task)".into());
                result.failed.push((id, StepError::new(format!("a step panicked: {e}"))));
                failed = true;
                continue;
            }
        };
        let step = graph.step(&id).expect("a step of the graph");
        // Restarts and reboots wait on the node's services, not on certrotate.
        let waiting = step.operation.is_waiting();
        if waiting {
            result.waiting_secs += secs;
        } else {
            result.own_secs += secs;
        }
        match outcome {
            Ok(note) => {
                if let Err(e) = record.record(&id, secs, note).await {
                    result.failed.push((id.clone(), StepError::new(format!("cannot record the step in the journal {}: {e}", record.location()))));
                    failed = true;
                    continue;
                }
                events.emit(Event::StepFinished { id: id.clone(), elapsed_secs: secs, waiting });
                result.done += 1;
                schedule.finished(&id);
            }
            Err(e) => {
                events.emit(Event::StepFailed { id: id.clone(), error: e.message.clone(), observed: e.observed.clone() });
                result.failed.push((id, e));
                failed = true;
            }
        }
    }
    result
}

/// The first stop signal: says what happens next, and cancels the gates in flight (they
/// only wait, and run again on resume); steps that change nodes finish and are recorded.
fn stop_for_signal(events: &dyn EventSink, signal: StopSignal, in_flight: &HashMap<tokio::task::Id, InFlight>, result: &mut WalkResult) {
    let mut finishing: Vec<&str> = Vec::new();
    for f in in_flight.values() {
        if f.gate {
            f.handle.abort();
            result.cancelled_gates.push(f.id.clone());
        } else {
            finishing.push(&f.id);
        }
    }
    finishing.sort_unstable();
    result.cancelled_gates.sort_unstable();
    let waiting_for = if finishing.is_empty() {
        "nothing is in flight".to_string()
    } else {
        format!("waiting for {} step(s) in flight to finish: {}", finishing.len(), finishing.join(", "))
    };
    events.emit(Event::Warning {
        message: format!("{} received: no new step starts; {waiting_for}. Send it again to exit at once (steps cut short are done again on resume).", signal.name()),
    });
}

#[async_trait]
impl StepRecord for crate::apply::journal::Journal {
    fn is_done(&self, id: &str) -> bool {
        crate::apply::journal::Journal::is_done(self, id)
    }

    fn was_forced(&self, id: &str) -> bool {
        crate::apply::journal::Journal::was_forced(self, id)
    }

    async fn record(&self, id: &str, secs: f64, note: Option<String>) -> std::io::Result<()> {
        crate::apply::journal::Journal::record(self, id, secs, note).await
    }

    fn location(&self) -> String {
        self.path().display().to_string()
    }
}

#[cfg(test)]
mod tests {
    //! The walker on plain data: a fake runner that records what ran when, an in-memory record.
    use super::*;
    use crate::model::profile::{Duration as ProfileDuration, GateKind};
    use crate::plan::file;
    use crate::plan::step::{GateSpec, Operation, Probe, Scope, StepParams};
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::time::Duration;

    fn step(id: &str, operation: Operation, phase: Phase) -> Step {
        let gate = operation.is_gate().then(|| GateSpec {
            probe: Probe::Api,
            nodes: Vec::new(),
            timeout: ProfileDuration::from_secs(60).unwrap(),
            interval: ProfileDuration::from_secs(1).unwrap(),
            checks: "holds".into(),
            on_failure: "look".into(),
            why_ssh: None,
        });
        Step {
            id: id.into(),
            kind: operation.kind(),
            operation,
            phase,
            scope: Scope::Cluster,
            target: None,
            description: id.into(),
            params: StepParams::default(),
            requires: Vec::new(),
            gate,
        }
    }

    fn action(id: &str) -> Step {
        step(id, Operation::InstallCerts, Phase::Masters)
    }

    fn gate(id: &str, phase: Phase) -> Step {
        step(id, Operation::Gate(GateKind::EtcdHealthy), phase)
    }

    fn graph(steps: Vec<Step>, edges: &[(&str, &str)]) -> ActionGraph {
        let edges = edges.iter().map(|(a, b)| file::GraphEdge { from: (*a).into(), to: (*b).into() }).collect();
        ActionGraph::from_saved(&file::ActionGraph { steps, edges }).expect("a consistent graph")
    }

    /// How a fake step behaves: how long it takes, whether it fails, whether it never ends.
    #[derive(Default)]
    struct FakeRunner {
        delay: HashMap<String, Duration>,
        fails: HashSet<String>,
        hangs: HashSet<String>,
        default_delay: Duration,
        log: Mutex<Vec<String>>,
        running: Mutex<usize>,
        most_at_once: Mutex<usize>,
    }

    impl FakeRunner {
        fn ran(&self) -> Vec<String> {
            self.log.lock().unwrap().iter().filter_map(|l| l.strip_prefix("end ").map(String::from)).collect()
        }
        fn started(&self) -> Vec<String> {
            self.log.lock().unwrap().iter().filter_map(|l| l.strip_prefix("start ").map(String::from)).collect()
        }
    }

    #[async_trait]
    impl StepRunner for FakeRunner {
        async fn run(&self, step: &Step) -> Result<Option<String>, StepError> {
            self.log.lock().unwrap().push(format!("start {}", step.id));
            {
                let mut n = self.running.lock().unwrap();
                *n += 1;
                let mut most = self.most_at_once.lock().unwrap();
                *most = (*most).max(*n);
            }
            if self.hangs.contains(&step.id) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.delay.get(&step.id).copied().unwrap_or(self.default_delay)).await;
            *self.running.lock().unwrap() -= 1;
            self.log.lock().unwrap().push(format!("end {}", step.id));
            if self.fails.contains(&step.id) {
                return Err(StepError::new(format!("{} broke", step.id)));
            }
            Ok(Some(format!("{} done", step.id)))
        }
    }

    #[derive(Default)]
    struct MemoryRecord {
        done: Mutex<HashMap<String, Option<String>>>,
    }

    impl MemoryRecord {
        fn with(done: &[&str], forced: &[&str]) -> Self {
            let mut m: HashMap<String, Option<String>> = done.iter().map(|id| (id.to_string(), None)).collect();
            m.extend(forced.iter().map(|id| (id.to_string(), Some(format!("{}: API down)", crate::apply::journal::FORCED_NOTE)))));
            MemoryRecord { done: Mutex::new(m) }
        }
        fn has(&self, id: &str) -> bool {
            self.done.lock().unwrap().contains_key(id)
        }
    }

    #[async_trait]
    impl StepRecord for MemoryRecord {
        fn is_done(&self, id: &str) -> bool {
            self.has(id)
        }
        fn was_forced(&self, id: &str) -> bool {
            self.done.lock().unwrap().get(id).cloned().flatten().is_some_and(|n| n.starts_with(crate::apply::journal::FORCED_NOTE))
        }
        async fn record(&self, id: &str, _secs: f64, note: Option<String>) -> std::io::Result<()> {
            self.done.lock().unwrap().insert(id.into(), note);
            Ok(())
        }
        fn location(&self) -> String {
            "memory".into()
        }
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<Event>>);

    impl EventSink for Events {
        fn emit(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Events {
        fn skipped(&self) -> Vec<String> {
            self.0.lock().unwrap().iter().filter_map(|e| if let Event::StepSkipped { id, .. } = e { Some(id.clone()) } else { None }).collect()
        }
        fn started(&self) -> Vec<String> {
            self.0.lock().unwrap().iter().filter_map(|e| if let Event::StepStarted { id, .. } = e { Some(id.clone()) } else { None }).collect()
        }
    }

    fn settings(parallelism: usize) -> WalkSettings {
        WalkSettings { parallelism, stop: StopRequest::detached().1 }
    }

    async fn run(g: &ActionGraph, runner: FakeRunner, record: &MemoryRecord, settings: &WalkSettings) -> (WalkResult, Arc<FakeRunner>, Events) {
        let runner = Arc::new(runner);
        let events = Events::default();
        let result = walk(g, runner.clone(), record, &events, settings).await;
        (result, runner, events)
    }

    #[tokio::test]
    async fn steps_run_after_their_predecessors_and_in_plan_order_among_ready_ones() {
        // b and c wait for a; d waits for b and c; e is free. Added in the order a, e, c, b, d.
        let g = graph(vec![action("a"), action("e"), action("c"), action("b"), action("d")], &[("a", "c"), ("a", "b"), ("b", "d"), ("c", "d")]);
        let record = MemoryRecord::default();
        let (result, runner, events) = run(&g, FakeRunner::default(), &record, &settings(1)).await;
        assert!(result.failed.is_empty(), "{:?}", result.failed);
        assert_eq!(result.done, 5);
        assert_eq!(runner.ran(), vec!["a", "e", "c", "b", "d"], "one at a time, the plan's order");
        assert_eq!(events.started(), runner.started());
        assert!(["a", "b", "c", "d", "e"].iter().all(|id| record.has(id)), "every finished step is recorded");
    }

    #[tokio::test]
    async fn no_more_steps_run_at_once_than_the_parallelism() {
        let steps: Vec<Step> = (0..6).map(|i| action(&format!("s{i}"))).collect();
        let g = graph(steps, &[]);
        for limit in [1, 2, 4] {
            let runner = FakeRunner { default_delay: Duration::from_millis(40), ..FakeRunner::default() };
            let (result, runner, _) = run(&g, runner, &MemoryRecord::default(), &settings(limit)).await;
            assert_eq!(result.done, 6);
            assert_eq!(*runner.most_at_once.lock().unwrap(), limit, "parallelism {limit}");
        }
    }

    #[tokio::test]
    async fn a_resume_skips_recorded_actions_but_looks_again_through_gates() {
        let g = graph(vec![action("a"), gate("g", Phase::Masters), action("b"), action("c")], &[("a", "g"), ("g", "b"), ("b", "c")]);
        let record = MemoryRecord::with(&["a", "g", "b"], &[]);
        let (result, runner, events) = run(&g, FakeRunner::default(), &record, &settings(4)).await;
        assert_eq!(runner.ran(), vec!["g", "c"], "the gate runs again, the recorded actions do not");
        assert_eq!(events.skipped(), vec!["a", "b"]);
        assert_eq!((result.done, result.skipped), (2, 2));
    }

    #[tokio::test]
    async fn a_preflight_gate_is_not_run_again_once_the_changes_began() {
        let steps = vec![gate("pre", Phase::Preflight), action("install"), gate("after", Phase::Masters)];
        let edges = [("pre", "install"), ("install", "after")];
        // Before any change: the preflight gate runs again even though it passed before.
        let g = graph(steps.clone(), &edges);
        let (_, runner, _) = run(&g, FakeRunner::default(), &MemoryRecord::with(&["pre"], &[]), &settings(2)).await;
        assert_eq!(runner.ran(), vec!["pre", "install", "after"]);
        // After installCerts was recorded: the cluster is mid-rotation; preflight is skipped.
        let (_, runner, events) = run(&g, FakeRunner::default(), &MemoryRecord::with(&["pre", "install"], &[]), &settings(2)).await;
        assert_eq!(runner.ran(), vec!["after"]);
        assert_eq!(events.skipped(), vec!["pre", "install"]);
    }

    #[tokio::test]
    async fn a_step_recorded_as_skipped_under_force_runs_again() {
        let g = graph(vec![action("pause"), action("b")], &[("pause", "b")]);
        let record = MemoryRecord::with(&["b"], &["pause"]);
        let (result, runner, _) = run(&g, FakeRunner::default(), &record, &settings(2)).await;
        assert_eq!(runner.ran(), vec!["pause"]);
        assert_eq!((result.done, result.skipped), (1, 1));
        assert!(!record.was_forced("pause"), "the real run replaced the forced note");
    }

    #[tokio::test]
    async fn the_first_failure_stops_scheduling_and_lets_work_in_flight_finish() {
        // a fails quickly while slow runs beside it; nothing after either starts.
        let g = graph(vec![action("a"), action("slow"), action("after-a"), action("after-slow"), action("later")], &[("a", "after-a"), ("slow", "after-slow")]);
        let runner = FakeRunner {
            fails: ["a".to_string()].into(),
            delay: [("slow".to_string(), Duration::from_millis(150))].into(),
            ..FakeRunner::default()
        };
        let (result, runner, _) = run(&g, runner, &MemoryRecord::default(), &settings(2)).await;
        let failed: Vec<&str> = result.failed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(failed, vec!["a"]);
        assert_eq!(runner.ran(), vec!["a", "slow"], "slow finished; nothing new started");
        assert_eq!(result.done, 1);
    }

    #[tokio::test]
    async fn a_stop_cancels_waiting_gates_and_lets_actions_finish() {
        let g = graph(
            vec![gate("wait", Phase::Masters), action("change"), action("next"), action("after-wait")],
            &[("change", "next"), ("wait", "after-wait")],
        );
        let runner = FakeRunner {
            hangs: ["wait".to_string()].into(),
            delay: [("change".to_string(), Duration::from_millis(200))].into(),
            ..FakeRunner::default()
        };
        let (stop, request) = StopRequest::detached();
        let settings = WalkSettings { parallelism: 4, stop: request };
        let record = MemoryRecord::default();
        let runner = Arc::new(runner);
        let events = Events::default();
        let walking = walk(&g, runner.clone(), &record, &events, &settings);
        let stopping = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.send_replace(Some(StopSignal::Terminate));
        };
        // A gate left running would hang the walk: bound it, so such a break fails here.
        let walking = async { tokio::time::timeout(Duration::from_secs(5), walking).await.expect("the walk ended: the waiting gate was cancelled") };
        let (result, ()) = tokio::join!(walking, stopping);
        assert_eq!(result.interrupted, Some(StopSignal::Terminate));
        assert_eq!(result.cancelled_gates, vec!["wait"]);
        assert_eq!(runner.ran(), vec!["change"], "the action in flight finished; nothing new started");
        assert!(record.has("change") && !record.has("wait") && !record.has("next"));
        assert!(events.skipped().contains(&"wait".to_string()), "the cancelled gate is reported");
        let warned = events.0.lock().unwrap().iter().any(|e| matches!(e, Event::Warning { message } if message.contains("change") && message.contains("SIGTERM")));
        assert!(warned, "the warning names the step it waits for");
    }

    #[tokio::test]
    async fn a_stop_before_the_walk_starts_nothing() {
        let g = graph(vec![action("a")], &[]);
        let (stop, request) = StopRequest::detached();
        stop.send_replace(Some(StopSignal::Interrupt));
        let (result, runner, _) = run(&g, FakeRunner::default(), &MemoryRecord::default(), &WalkSettings { parallelism: 2, stop: request }).await;
        assert_eq!(result.interrupted, Some(StopSignal::Interrupt));
        assert!(runner.ran().is_empty());
    }
}
