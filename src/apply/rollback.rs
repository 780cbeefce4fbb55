//! `rollback` as a run: finds the apply to undo beside the API model, builds its rollback
//! graph (`plan::rollback`), shows it, and walks it with the same walker, step runner, gates
//! and stop semantics as apply, journaled in `rollback.jsonl` in the plan's run directory so
//! a second rollback resumes where the first stopped. After success the run's journals are
//! archived, so a later apply of the same plan runs again in full.

use crate::apply::executor::{self, Context};
use crate::apply::journal::Journal;
use crate::apply::lock::LockHolder;
use crate::apply::preflight::take_lock;
use crate::apply::node;
use crate::apply::progress::{Mode, Reporter};
use crate::apply::store::{self, RunDir};
use crate::model::apimodel::ApiModel;
use crate::model::topology::Topology;
use crate::plan::file::PlanFile;
use crate::plan::graph::ActionGraph;
use crate::plan::render;
use crate::plan::rollback::{self as rollback_graph, RollbackInput};
use crate::remote::ssh::{SshFleet, SshSettings};
use miette::{miette, IntoDiagnostic};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The rollback's own journal, beside the apply's in the run directory.
pub const ROLLBACK_JOURNAL: &str = "rollback.jsonl";

/// The run an apply left beside the API model: the given plan's, or the most recent one.
pub fn find_run(model: &ApiModel, plan_file: Option<&Path>) -> miette::Result<(RunDir, PlanFile)> {
    let base = model.dir().join(store::OUTPUT_DIR);
    let dir = match plan_file {
        Some(p) => {
            let plan = PlanFile::read(p)?;
            let digest = plan.digest.clone().ok_or_else(|| miette!("the plan is not sealed"))?;
            base.join(&digest.hex()[..16])
        }
        None => std::fs::read_dir(&base)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let j = e.path().join("journal.jsonl");
                let modified = std::fs::metadata(&j).and_then(|m| m.modified()).ok()?;
                Some((modified, e.path()))
            })
            .max()
            .map(|(_, p)| p)
            .ok_or_else(|| miette!(help = "rollback undoes what apply did; pass the applied plan file", "no apply to roll back in {}", base.display()))?,
    };
    let journal = dir.join("journal.jsonl");
    if !journal.is_file() {
        return Err(miette!(
            help = "rollback undoes an apply of this plan; it may have been rolled back already",
            "no journal of an apply in {} (nothing to roll back for this plan)",
            dir.display()
        ));
    }
    let plan = PlanFile::read(&dir.join("plan.yaml"))?;
    Ok((RunDir { root: dir }, plan))
}

/// A rollback ready to be shown and walked.
pub struct Prepared {
    pub stamp: String,
    pub run: RunDir,
    pub graph: ActionGraph,
    pub journal: Journal,
    plan: PlanFile,
    topo: Topology,
    model_path: PathBuf,
    local_backup: PathBuf,
}

/// How the walk is run, from the command line.
pub struct RunOptions {
    pub apiserver: Option<String>,
    pub parallelism: usize,
    /// The command that runs this rollback again, for the messages of a stopped one.
    pub again: String,
}

/// A rollback that finished.
pub struct Finished {
    pub stamp: String,
    pub done: usize,
    pub skipped: usize,
    pub secs: f64,
}

/// Builds the rollback of the apply in `run` and opens its journal; changes nothing.
pub fn prepare(model: &ApiModel, run: RunDir, plan: PlanFile, topo: Topology) -> miette::Result<Prepared> {
    let stamp = run.root.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let state = run.load_state();
    let local_backup = state
        .backup_dir
        .clone()
        .filter(|d| d.join("apimodel.json").is_file())
        .ok_or_else(|| miette!("the apply of plan {stamp} made no local backup of the API model (state in {}); nothing was changed", run.root.display()))?;
    let applied = ActionGraph::from_saved(&plan.graph).map_err(|e| miette!("the plan's graph cannot be used: {e}"))?;
    let apply_journal = Journal::open(&run.journal_path()).into_diagnostic()?;
    let applied_done = |id: &str| apply_journal.is_done(id);
    let input = RollbackInput {
        applied: &applied,
        applied_done: &applied_done,
        topo: &topo,
        profile: &plan.profile,
        local_backup: local_backup.display().to_string(),
        autoscaler_paused: state.autoscaler_paused && state.autoscaler_replicas.is_some(),
    };
    let graph = rollback_graph::build(&input);
    graph.validate().map_err(|e| miette!("the rollback graph is not valid: {e}"))?;
    let journal = Journal::open(&run.root.join(ROLLBACK_JOURNAL)).into_diagnostic()?;
    Ok(Prepared { stamp, run, graph, journal, plan, topo, model_path: model.path().to_path_buf(), local_backup })
}

impl Prepared {
    /// What the rollback will do, step by step, and what an earlier run of it already did.
    pub fn preview(&self, colour: bool) -> String {
        let saved = self.graph.to_saved();
        let gates = self.graph.steps().filter(|s| s.operation.is_gate()).count();
        let done = self.graph.steps().filter(|s| !s.operation.is_gate() && self.journal.is_done(&s.id)).count();
        let mut out = format!("Rollback of plan {} (applied from {}):\n", self.stamp, self.run.root.display());
        out.push_str(&render::step_list(&saved, &|id| self.graph.step(id).is_some_and(|s| !s.operation.is_gate()) && self.journal.is_done(id), colour));
        out.push_str(&format!("\nRollback walks {} steps, {gates} of them gates.", self.graph.len()));
        if done > 0 {
            out.push_str(&format!(" An earlier run did {done} of them (journal {}); they are skipped.", self.journal.path().display()));
        }
        out.push('\n');
        out
    }

    /// Takes the cluster lock and walks the rollback. A stop signal or a failure leaves the
    /// journal for the next run; success archives the run's journals.
    pub fn execute(self, ssh: SshSettings, options: RunOptions) -> miette::Result<Finished> {
        let Prepared { stamp, run, graph, journal, plan, topo, model_path, local_backup } = self;
        let fleet = Arc::new(SshFleet::new(ssh).into_diagnostic()?);
        let reporter = Arc::new(Reporter::new(Mode::detect(false), graph.len()));
        let old_admin = std::fs::read_to_string(local_backup.join("kubeconfig").join(format!("kubeconfig.{}.json", topo.location))).ok();
        let mut ctx = Context::new(graph, topo, plan.profile.clone(), model_path, run, journal, reporter.clone(), fleet, stamp.clone());
        ctx.conn.apiserver = options.apiserver.clone();
        ctx.parallelism = options.parallelism.max(1);
        ctx.old_admin_kubeconfig = old_admin;
        // The apply's rollout stamp would make the rollback's rollout change nothing.
        if !ctx.store.journal.is_done("rolloutWorkloads") {
            ctx.store.state.lock().expect("state lock").rollout_stamp = None;
        }
        let runtime = tokio::runtime::Runtime::new().into_diagnostic()?;
        // From here on a first Ctrl-C stops at a safe point instead of exiting.
        let _graceful = crate::interrupt::Graceful::begin();
        runtime.block_on(async move {
            let started = Instant::now();
            let first = ctx.topo.masters.first().map(|m| m.name.clone()).ok_or_else(|| miette!("the cluster has no master"))?;
            let lock_id = format!("rollback-of-{stamp}");
            // Rollback never breaks a live lock: the apply holding it may still be changing nodes.
            let help = "wait for that apply to finish before rolling back; if it is gone for good, stop it and run rollback again";
            if let Some(who) = take_lock(&ctx, &first, &LockHolder::me(&lock_id), false, "", help).await? {
                reporter.emit(crate::apply::progress::Event::Warning { message: format!("took over the cluster lock held by {who}") });
            }
            reporter.set_steps(&executor::step_phases(&ctx.graph));
            let ctx = Arc::new(ctx);
            let walked = executor::walk(ctx.clone()).await;
            let _ = ctx.run_root(&first, "release the cluster lock", &node::lock_release_script(&lock_id)).await;
            ctx.close_sessions().await;
            if let Some((id, e)) = walked.failed.first() {
                let observed = if e.observed.is_empty() { String::new() } else { format!("\nobserved:\n  {}", e.observed.join("\n  ")) };
                return Err(miette!(
                    help = format!(
                        "fix the cause, then run `{}`: it skips the {} step(s) its journal {} records",
                        options.again,
                        ctx.graph.steps().filter(|s| ctx.store.journal.is_done(&s.id)).count(),
                        ctx.store.journal.path().display()
                    ),
                    "rollback step {id} failed: {}{observed}",
                    e.message
                ));
            }
            if let Some(signal) = walked.interrupted {
                let left = ctx.graph.len() - walked.done - walked.skipped;
                let gates = if walked.cancelled_gates.is_empty() {
                    String::new()
                } else {
                    format!("; gates cancelled (they run again on resume): {}", walked.cancelled_gates.join(", "))
                };
                return Err(miette!(
                    help = format!("run `{}` to finish: it skips what the journal {} records", options.again, ctx.store.journal.path().display()),
                    "rollback stopped by {}: {} step(s) done, {} already done, {left} not done; every step that changed a node finished and is in the journal{gates}",
                    signal.name(),
                    walked.done,
                    walked.skipped
                ));
            }
            archive(&ctx.store.run).map_err(|e| miette!("the rollback finished, but its journals could not be archived: {e}"))?;
            Ok(Finished { stamp, done: walked.done, skipped: walked.skipped, secs: started.elapsed().as_secs_f64() })
        })
    }
}

/// After a rollback: the apply's journal and the rollback's move aside (a re-apply of the
/// plan must run again, not skip what its journal says it did; a later rollback starts
/// afresh), and the rollout stamp is forgotten so a re-apply rolls workloads out anew.
fn archive(run: &RunDir) -> std::io::Result<()> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let journal = run.journal_path();
    if journal.is_file() {
        std::fs::rename(&journal, run.root.join(format!("journal.rolled-back-{now}.jsonl")))?;
    }
    let rollback = run.root.join(ROLLBACK_JOURNAL);
    if rollback.is_file() {
        std::fs::rename(&rollback, run.root.join(format!("rollback.done-{now}.jsonl")))?;
    }
    let mut state = run.load_state();
    state.rollout_stamp = None;
    run.save_state(&state).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiving_moves_both_journals_aside_and_forgets_the_rollout_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir { root: dir.path().to_path_buf() };
        std::fs::write(run.journal_path(), "{}\n").unwrap();
        std::fs::write(run.root.join(ROLLBACK_JOURNAL), "{}\n").unwrap();
        run.save_state(&store::RunState { rollout_stamp: Some("2026-01-01T00:00:00Z".into()), ..Default::default() }).unwrap();
        archive(&run).unwrap();
        assert!(!run.journal_path().exists() && !run.root.join(ROLLBACK_JOURNAL).exists());
        let names: Vec<String> = std::fs::read_dir(&run.root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
        assert!(names.iter().any(|n| n.starts_with("journal.rolled-back-")), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("rollback.done-")), "{names:?}");
        assert_eq!(run.load_state().rollout_stamp, None);
    }
}
