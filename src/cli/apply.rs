//! `apply` and `rollback`. apply executes exactly a saved plan (or plans, shows and asks for
//! `yes`), after taking the cluster lock and checking the plan is not stale; rollback puts
//! every node's backed-up certificates and the backed-up API model back.

use super::args::{ApplyArgs, ClusterArgs, RollbackArgs};
use super::plan::{colour_wanted, make_plan};
use super::status::{discover_with_suffix, ssh_settings};
use super::Outcome;
use crate::apply::executor::{self, Context, StepError};
use crate::apply::preflight::{preflight, release, take_lock};
use crate::apply::prober::ApiProber;
use crate::apply::journal::{Approval, ApprovalHow, Journal};
use crate::apply::lock::LockHolder;
use crate::apply::node;
use crate::apply::progress::{Event, Mode, Reporter};
use crate::flow::{self, discover::Discovered};
use crate::apply::store::{self, NewPki, RunDir};
use crate::cloud::azure::AzureSettings;
use crate::model::apimodel::{write_atomic, ApiModel};
use crate::model::topology::{OsType, Topology};
use crate::plan::file::PlanFile;
use crate::plan::graph::{ActionGraph, Operation};
use crate::plan::render::{self, PlanView};
use crate::remote::ssh::SshFleet;
use miette::{miette, IntoDiagnostic};
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ask_yes(question: &str) -> bool {
    print!("{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim() == "yes"
}

pub fn run_apply(a: &ApplyArgs) -> miette::Result<Outcome> {
    let (plan, cluster) = match &a.plan_file {
        Some(path) => {
            let plan = PlanFile::read(path)?;
            approval_required(&plan, a.approved_by.as_deref())?;
            // A saved plan names its VM name suffix: the API model alone may not.
            let suffix = a.cluster.model.name_suffix.as_deref().unwrap_or(&plan.cluster.name_suffix);
            let cluster = discover_with_suffix(&a.cluster, Some(suffix))?;
            (plan, cluster)
        }
        None => {
            let (cluster, made) = make_plan(&a.cluster)?;
            print!("{}", render::human(&PlanView::from_plan_file(&made.plan), colour_wanted()));
            if !made.has_changes {
                return Ok(Outcome::Ok);
            }
            approval_required(&made.plan, a.approved_by.as_deref())?;
            if !a.auto_approve && !ask_yes("\nDo you want to perform these actions?") {
                say!("\nApply cancelled; nothing was changed.");
                return Err(miette!("apply cancelled"));
            }
            (made.plan, cluster)
        }
    };
    let model = &cluster.model;
    if plan.cluster.dns_prefix != model.dns_prefix() {
        return Err(miette!(
            help = "pass the apimodel.json of the cluster the plan was made for",
            "the plan is for cluster {}, but {} describes {}; nothing was changed",
            plan.cluster.dns_prefix,
            model.path().display(),
            model.dns_prefix()
        ));
    }
    let topo = cluster
        .topology_of_plan(&plan)
        .map_err(|e| miette!(help = "make a new plan against the current apimodel.json", "{e}; nothing was changed"))?;
    let graph = ActionGraph::from_saved(&plan.graph).map_err(|e| miette!("the plan's graph cannot be used: {e}"))?;
    graph.validate().map_err(|e| miette!(help = "make a new plan", "the plan's graph is not valid: {e}"))?;
    if graph.is_empty() {
        say!("No changes. Nothing to apply.");
        return Ok(Outcome::Ok);
    }
    let digest = plan.digest.clone().ok_or_else(|| miette!("the plan is not sealed"))?;
    let run = RunDir::open(&model.dir(), digest.hex()).into_diagnostic()?;
    write_atomic(&run.root.join("plan.yaml"), plan.to_yaml().into_diagnostic()?.as_bytes(), Some(0o600)).into_diagnostic()?;
    let journal = Journal::open(&run.journal_path()).into_diagnostic()?;
    if graph.steps().all(|s| journal.is_done(&s.id) && !journal.was_forced(&s.id)) {
        say!("This plan has already been applied completely (journal {}). Nothing to do.", journal.path().display());
        return Ok(Outcome::Ok);
    }
    let azure = if graph.steps().any(|s| s.operation == Operation::RebootVm) {
        let inputs = a.cluster.azure.to_inputs().map_err(|e| miette!("{e}"))?;
        Some(AzureSettings::from_api_model(model, inputs).map_err(|e| {
            miette!(help = "this plan restarts master VMs through Azure: pass the Azure flags (see `certrotate apply --help`)", "{e}")
        })?)
    } else {
        None
    };
    let settings = ssh_settings(&a.cluster, model, &topo)?;
    let fleet = Arc::new(SshFleet::new(settings).into_diagnostic()?);
    let reporter = Arc::new(Reporter::new(Mode::detect(a.json), graph.len()));
    let old_admin = std::fs::read_to_string(cluster.admin_kubeconfig_path()).ok();
    let already = journal.done_count();
    let mut ctx = Context::new(graph, topo, plan.profile.clone(), model.path().to_path_buf(), run, journal, reporter.clone(), fleet, digest.hex().to_string());
    ctx.parallelism = a.cluster.parallelism as usize;
    ctx.force = a.cluster.force;
    ctx.conn.apiserver = a.cluster.apiserver.clone();
    ctx.conn.azure = azure;
    ctx.old_admin_kubeconfig = old_admin;
    ctx.api_model = Some(Arc::new(model.clone()));
    if let Some(recorded) = &plan.supplied_certificates {
        // A resumed run installs what the first run persisted; the file is needed only
        // until then.
        if !NewPki::is_persisted(&ctx.store.run.pki_dir()) {
            ctx.store.supplied = Some(Arc::new(flow::supplied::reload(recorded)?));
        }
    }

    let approval_how = match (&a.plan_file, a.auto_approve) {
        (_, true) => ApprovalHow::AutoApprove,
        (None, false) => ApprovalHow::Prompt,
        (Some(_), false) => ApprovalHow::SavedPlan,
    };
    let approver = a.approved_by.clone().unwrap_or_else(operator_name);
    let runtime = tokio::runtime::Runtime::new().into_diagnostic()?;
    let plan_path = a.plan_file.clone();
    // From here on a first Ctrl-C stops at a safe point instead of exiting.
    let _graceful = crate::interrupt::Graceful::begin();
    let result = runtime.block_on(async move {
        // The run's time includes taking the lock and re-reading the nodes.
        let started = Instant::now();
        let first = ctx.topo.masters.first().map(|m| m.name.clone()).ok_or_else(|| miette!("the cluster has no master"))?;
        let holder = LockHolder::me(&digest.to_string());
        if let Some(who) = take_lock(&ctx, &first, &holder, a.break_lock, "another apply: ", "wait for that apply to finish; if it is gone for good, run again with --break-lock").await? {
            reporter.emit(Event::Warning { message: format!("took over the cluster lock held by {who}") });
        }
        let ctx = Arc::new(ctx);
        let checked = tokio::select! {
            checked = preflight(&ctx, &plan, &cluster) => checked,
            signal = ctx.stop.wait() => Err(miette!("{} received while checking the cluster; nothing was changed", signal.name())),
        };
        if let Err(e) = checked {
            release(&ctx, &first, &digest).await;
            ctx.close_sessions().await;
            return Err(e);
        }
        let approval = Approval { approved_by: approver.clone(), how: approval_how, plan_digest: digest.to_string(), at: time::OffsetDateTime::now_utc() };
        if let Err(e) = ctx.store.journal.record_approval(approval).await {
            release(&ctx, &first, &digest).await;
            ctx.close_sessions().await;
            return Err(miette!("cannot record the approval in the journal {}: {e}; nothing was changed", ctx.store.journal.path().display()));
        }
        reporter.set_steps(&executor::step_phases(&ctx.graph));
        ctx.emit(Event::ApplyStarted { plan_digest: digest.to_string(), steps: ctx.graph.len(), already_done: already });
        let prober = ApiProber::start(ctx.clone());
        let walked = executor::walk(ctx.clone()).await;
        let (probes, failures, down) = prober.stop().await;
        let total = started.elapsed().as_secs_f64();
        let ok = walked.failed.is_empty() && walked.interrupted.is_none();
        if ok {
            release(&ctx, &first, &digest).await;
        }
        ctx.close_sessions().await;
        let summary = ctx.timings.lock().expect("timings lock").summary(total, down, probes, failures);
        ctx.emit(Event::ApplyFinished { ok, stopped_by: walked.interrupted.map(|s| s.name().to_string()), summary: summary.clone() });
        let saved = plan_path.clone().unwrap_or_else(|| ctx.store.run.root.join("plan.yaml"));
        let args: Vec<String> = std::env::args().collect();
        if ok {
            say!("\nApply complete: {} steps done, {} already done.", walked.done, walked.skipped);
            let forced: Vec<String> = ctx.graph.steps().filter(|s| ctx.store.journal.was_forced(&s.id)).map(|s| s.id.clone()).collect();
            if !forced.is_empty() {
                let unforced: Vec<String> = args.into_iter().filter(|a| a != "--force").collect();
                say!(
                    "Not done yet: {} step(s) were skipped under --force because the API did not answer ({}). Once it answers, run `{}` to do them.",
                    forced.len(),
                    forced.join(", "),
                    command_line("apply", &saved, &unforced)
                );
            }
            Ok(Outcome::Ok)
        } else {
            let autoscaler = autoscaler_note(&ctx);
            let go_on = format!(
                "resume with `{}` (finished steps are skipped; journal {}), or return to the previous certificates with `{}`",
                command_line("apply", &saved, &args),
                ctx.store.journal.path().display(),
                command_line("rollback", &saved, &args)
            );
            let Some((id, e)) = walked.failed.first() else {
                let signal = walked.interrupted.map(|s| s.name()).unwrap_or("a stop signal");
                let left = ctx.graph.len() - walked.done - walked.skipped;
                let gates = if walked.cancelled_gates.is_empty() {
                    String::new()
                } else {
                    format!("; gates cancelled (they run again on resume): {}", walked.cancelled_gates.join(", "))
                };
                return Err(miette!(
                    help = go_on,
                    "apply stopped by {signal}: {} step(s) done, {} already done, {left} not done; every step that changed a node finished and is in the journal{gates}{autoscaler}",
                    walked.done,
                    walked.skipped
                ));
            };
            let observed = if e.observed.is_empty() { String::new() } else { format!("\nobserved:\n  {}", e.observed.join("\n  ")) };
            Err(miette!(
                help = format!("fix the cause, then {go_on}"),
                "step {id} failed: {}{observed}{autoscaler}",
                e.message
            ))
        }
    });
    result
}

/// Refuses an apply whose profile requires a named approver when none is named.
fn approval_required(plan: &PlanFile, approved_by: Option<&str>) -> miette::Result<()> {
    if !plan.profile.approval.required || approved_by.is_some_and(|n| !n.trim().is_empty()) {
        return Ok(());
    }
    Err(miette!(
        help = "name who approved the change with --approved-by NAME (recorded in the journal with the plan's digest)",
        "profile {} requires a named approver (approval.required), and none was named; nothing was changed",
        plan.profile.name
    ))
}

/// The operator's login name, for an approval nobody named.
fn operator_name() -> String {
    ["LOGNAME", "USER"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| format!("uid {}", current_uid()))
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// What an unfinished apply leaves paused, for its error message.
fn autoscaler_note(ctx: &Context) -> String {
    let st = ctx.store.state.lock().expect("state lock");
    match (st.autoscaler_paused, st.autoscaler_replicas) {
        (true, Some(n)) => format!(
            "\ncluster-autoscaler stays scaled to 0 until the apply completes (to run it meanwhile: kubectl -n kube-system scale deployment cluster-autoscaler --replicas={n})"
        ),
        _ => String::new(),
    }
}

/// The command that resumes (or rolls back) this run: the same flags, the saved plan instead of
/// planning again, nothing that answers a prompt, and never a secret's value.
pub fn command_line(command: &str, plan: &std::path::Path, args: &[String]) -> String {
    fn quote(s: &str) -> String {
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c)) {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    }
    let program = args.first().map(|p| quote(p)).unwrap_or_else(|| "certrotate".into());
    let mut out = vec![program, command.to_string()];
    if command == "apply" {
        out.push(quote(&plan.display().to_string()));
    }
    let plan_arg = args.get(2).filter(|a| !a.starts_with('-')).cloned();
    let mut rest = args.iter().skip(2).peekable();
    while let Some(a) = rest.next() {
        if Some(a) == plan_arg.as_ref() {
            continue;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (a.as_str(), None),
        };
        let takes_value = !matches!(flag, "--auto-approve" | "--break-lock" | "--json" | "--force" | "--skip-unreachable" | "--detailed-exitcode" | "--offline" | "--debug");
        let drop = matches!(flag, "--profile" | "--auto-approve" | "--break-lock" | "--out" | "--certificate-profile")
            || (command == "rollback" && matches!(flag, "--json" | "--parallelism"));
        let value = if takes_value && inline.is_none() && flag.starts_with("--") { rest.next().cloned() } else { inline.map(str::to_string) };
        if drop {
            continue;
        }
        out.push(flag.to_string());
        if let Some(v) = value {
            out.push(if flag == "--client-secret" { "\"$AZURE_CLIENT_SECRET\"".into() } else { quote(&v) });
        }
    }
    out.join(" ")
}

/// The cluster as the plan saw it, for rollback (see [`Discovered::topology_of_plan`]).
fn topology_of_plan(model: &ApiModel, name_suffix: Option<&str>, plan: &PlanFile) -> miette::Result<Topology> {
    let topology = Topology::derive(model, Some(name_suffix.unwrap_or(&plan.cluster.name_suffix)))?;
    Discovered { model: model.clone(), topology }
        .topology_of_plan(plan)
        .map_err(|e| miette!(help = "make a new plan against the current apimodel.json", "{e}; nothing was changed"))
}

/// The run an apply left beside the API model: the given plan's, or the most recent one.
fn run_to_roll_back(model: &ApiModel, plan_file: Option<&std::path::Path>) -> miette::Result<(RunDir, PlanFile)> {
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

/// `rollback`: for the nodes the applied plan touched, /etc/kubernetes/certs from the backup
/// that plan made (refused where the backup is another plan's), etcd's front-proxy material
/// from the restored files, restarts; then the API model and admin kubeconfig from the plan's
/// local backup, the autoscaler back, and the wait until the cluster is Ready.
pub fn run_rollback(a: &RollbackArgs) -> miette::Result<Outcome> {
    let c: &ClusterArgs = &a.cluster;
    let model = ApiModel::load(&c.model.api_model)?;
    let (run, plan) = run_to_roll_back(&model, a.plan_file.as_deref())?;
    let topo = topology_of_plan(&model, c.model.name_suffix.as_deref(), &plan)?;
    let stamp = run.root.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let state = run.load_state();
    let local_backup = state
        .backup_dir
        .clone()
        .filter(|d| d.join("apimodel.json").is_file())
        .ok_or_else(|| miette!("the apply of plan {stamp} made no local backup of the API model (state in {}); nothing was changed", run.root.display()))?;
    let graph = ActionGraph::from_saved(&plan.graph).map_err(|e| miette!("the plan's graph cannot be used: {e}"))?;
    let touched: Vec<String> = graph.steps().filter(|s| s.operation == Operation::DistributeCerts).filter_map(|s| s.target.clone()).collect();
    let tokens_changed = graph.steps().any(|s| s.operation == Operation::DeleteServiceAccountTokens);
    say!("Rollback of plan {stamp} (applied from {}):", run.root.display());
    say!("  restore /etc/kubernetes/certs from {} on {}", node::BACKUP, touched.join(", "));
    say!("  restart etcd and the control plane on those masters, kubelet on those agents");
    say!("  restore {} and the admin kubeconfig from {}", model.path().display(), local_backup.display());
    if !a.auto_approve && !ask_yes("\nDo you want to roll back?") {
        say!("\nRollback cancelled; nothing was changed.");
        return Err(miette!("rollback cancelled"));
    }
    let settings = ssh_settings(c, &model, &topo)?;
    let fleet = Arc::new(SshFleet::new(settings).into_diagnostic()?);
    let journal = Journal::open(&run.journal_path()).into_diagnostic()?;
    let reporter = Arc::new(Reporter::new(Mode::detect(false), 0));
    let old_admin = std::fs::read_to_string(flow::discover::admin_kubeconfig_path(&local_backup, &topo.location)).ok();
    let empty = crate::plan::file::ActionGraph { steps: vec![], edges: vec![] };
    let mut ctx = Context::new(ActionGraph::from_saved(&empty).expect("empty graph"), topo.clone(), plan.profile.clone(), model.path().to_path_buf(), run, journal, reporter, fleet, stamp.clone());
    ctx.conn.apiserver = c.apiserver.clone();
    ctx.old_admin_kubeconfig = old_admin;
    let runtime = tokio::runtime::Runtime::new().into_diagnostic()?;
    // A first Ctrl-C stops rollback between nodes, not in the middle of one.
    let _graceful = crate::interrupt::Graceful::begin();
    runtime.block_on(async move {
        let ctx = Arc::new(ctx);
        let started = Instant::now();
        // Said at once: the masters' restore and etcd's recovery can take minutes, and an
        // operator who sees nothing presses again, which exits in the middle of a node.
        let acknowledge = {
            let stop = ctx.stop.clone();
            tokio::spawn(async move {
                let signal = stop.wait().await;
                let text = format!(
                    "\n{} received: rollback stops before the next node it restores, or in its wait for Ready. Send it again to exit at once.\n",
                    signal.name()
                );
                let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
            })
        };
        let first = topo.masters.first().map(|m| m.name.clone()).ok_or_else(|| miette!("the cluster has no master"))?;
        let lock_id = format!("rollback-of-{stamp}");
        let holder = LockHolder::me(&lock_id);
        // Rollback never breaks a live lock: the apply holding it may still be changing nodes.
        let help = "wait for that apply to finish before rolling back; if it is gone for good, stop it and run rollback again";
        if let Some(who) = take_lock(&ctx, &first, &holder, false, "", help).await? {
            let _ = writeln!(std::io::stderr(), "warning: took over the cluster lock held by {who}");
        }
        let result = rollback_nodes(&ctx, &topo, &touched, &stamp, &local_backup, &model, tokens_changed, &state).await;
        acknowledge.abort();
        let _ = ctx.run_root(&first, "release the cluster lock", &node::lock_release_script(&lock_id)).await;
        ctx.close_sessions().await;
        result?;
        say!("\nRollback complete in {:.1}s: the nodes hold the certificates they had before plan {stamp}, and the cluster is Ready.", started.elapsed().as_secs_f64());
        Ok(Outcome::Ok)
    })
}

#[allow(clippy::too_many_arguments)]
async fn rollback_nodes(
    ctx: &Arc<Context>,
    topo: &Topology,
    touched: &[String],
    stamp: &str,
    local_backup: &std::path::Path,
    model: &ApiModel,
    tokens_changed: bool,
    state: &store::RunState,
) -> miette::Result<()> {
    let fail = |what: &str, e: StepError| {
        miette!(help = "fix the cause and run rollback again: nodes already restored are left as they are", "{what}: {}", e.message)
    };
    let admin = format!("/home/{}/.kube/config", topo.admin_username);
    let masters: Vec<String> = topo.masters.iter().map(|m| m.name.clone()).filter(|m| touched.contains(m)).collect();
    let agents: Vec<(String, bool)> =
        topo.agents.iter().filter(|a| touched.contains(&a.name)).map(|a| (a.name.clone(), a.os == OsType::Windows)).collect();

    // Every touched Linux node must hold this plan's backup before any is restored.
    let mut missing = Vec::new();
    for n in masters.iter().chain(agents.iter().filter(|(_, w)| !w).map(|(n, _)| n)) {
        let answer = ctx.run_root(n, "check the backup", &node::backup_stamp_script()).await.map_err(|e| fail(n, e))?;
        if answer.trim() != format!("BACKUP {stamp}") {
            missing.push(format!("  {n}: {}", answer.trim().replace("BACKUP ", "backup of plan ")));
        }
    }
    if !missing.is_empty() {
        return Err(miette!(
            help = "these nodes do not hold the backup this plan's apply made; restore them by hand from /etc/kubernetes/certs.bak* if you know which is right",
            "nothing was changed; no backup of plan {stamp} on:\n{}",
            missing.join("\n")
        ));
    }
    // Checked before each node or group of masters is touched: what was restored stays so.
    let stop_point = |done: &str| match ctx.stop.requested() {
        Some(signal) => Err(miette!(
            help = "run rollback again to finish: it restores every node from the same backup, so those already restored end up as they are now",
            "rollback stopped by {}: {done}",
            signal.name()
        )),
        None => Ok(()),
    };
    stop_point("nothing was changed")?;
    let on_all = |names: Vec<String>, script: String, what: &'static str| {
        let ctx = ctx.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for n in names {
                let (ctx, script) = (ctx.clone(), script.clone());
                set.spawn(async move { ctx.run_root(&n, what, &script).await.map_err(|e| (n, e)) });
            }
            while let Some(r) = set.join_next().await {
                if let Ok(Err((n, e))) = r {
                    return Err(StepError::new(format!("{n}: {}", e.message)));
                }
            }
            Ok(())
        }
    };
    if !masters.is_empty() {
        say!("restoring certificates on {}", masters.join(", "));
        on_all(masters.clone(), node::restore_script(stamp, Some(&admin)), "restore certificates").await.map_err(|e| fail("restoring the masters", e))?;
        say!("restarting etcd");
        on_all(masters.clone(), node::restart_script(stamp, "rollback", &["etcd"], &[]), "restart etcd").await.map_err(|e| fail("restarting etcd", e))?;
        let all_masters: Vec<String> = topo.masters.iter().map(|m| m.name.clone()).collect();
        wait_etcd(ctx, &all_masters).await.map_err(|e| fail("etcd did not become healthy with the restored certificates", e))?;
        ctx.run_root(&masters[0], "restore front-proxy material in etcd", &node::etcd_restore_proxy_script(stamp))
            .await
            .map_err(|e| fail("restoring /proxycerts", e))?;
        say!("restarting kubelet and the control plane");
        on_all(masters.clone(), node::restart_script(stamp, "rollback", &["kubelet"], &["kube-apiserver", "kube-controller-manager", "kube-scheduler"]), "restart control plane")
            .await
            .map_err(|e| fail("restarting the control plane", e))?;
    }
    let mut restored_nodes: Vec<&str> = masters.iter().map(String::as_str).collect();
    for (n, windows) in &agents {
        stop_point(&format!("restored: {}", if restored_nodes.is_empty() { "none".to_string() } else { restored_nodes.join(", ") }))?;
        say!("restoring {n}");
        if *windows {
            crate::apply::winexec::restore_windows(ctx, n).await.map_err(|e| fail(n, e))?;
        } else {
            ctx.run_root(n, "restore certificates", &node::restore_script(stamp, None)).await.map_err(|e| fail(n, e))?;
            ctx.run_root(n, "restart kubelet", &node::restart_script(stamp, "rollback", &["kubelet"], &[])).await.map_err(|e| fail(n, e))?;
        }
        restored_nodes.push(n);
    }
    stop_point(&format!("every node is restored; {} is not yet", model.path().display()))?;

    say!("restoring {} from {}", model.path().display(), local_backup.display());
    let kept = store::backup_api_model_as(&model.dir(), "before-rollback-").map_err(|e| miette!("{e}"))?;
    say!("(the rotated API model is kept in {})", kept.display());
    let restored = std::fs::read(local_backup.join("apimodel.json")).into_diagnostic()?;
    write_atomic(model.path(), &restored, None).into_diagnostic()?;
    let kc_dir = local_backup.join("kubeconfig");
    if kc_dir.is_dir() {
        for e in std::fs::read_dir(&kc_dir).into_diagnostic()?.flatten() {
            let bytes = std::fs::read(e.path()).into_diagnostic()?;
            write_atomic(&model.dir().join("kubeconfig").join(e.file_name()), &bytes, Some(0o600)).into_diagnostic()?;
        }
    }
    // A re-apply of a rolled-back plan must run again, not skip what its journal says it did.
    let archived = ctx.store.run.root.join(format!("journal.rolled-back-{}.jsonl", time::OffsetDateTime::now_utc().unix_timestamp()));
    std::fs::rename(ctx.store.run.journal_path(), &archived).into_diagnostic()?;

    say!("waiting for every node to be Ready and kube-system to settle");
    let deadline = Instant::now() + ctx.profile.gates.timing(crate::model::profile::GateKind::NodesReady).timeout.as_std();
    let all: Vec<String> = topo.nodes().map(|n| n.name.clone()).collect();
    let mut tokens_renewed = !tokens_changed;
    let mut autoscaler_back = !(state.autoscaler_paused && state.autoscaler_replicas.is_some());
    loop {
        let problems = match ctx.kube_client().await {
            Ok(client) => {
                if !autoscaler_back {
                    if let Some(n) = state.autoscaler_replicas {
                        if crate::cloud::kube::scale_autoscaler(&client, n).await.is_ok() {
                            say!("scaled cluster-autoscaler back to {n}");
                            autoscaler_back = true;
                        }
                    }
                }
                if !tokens_renewed {
                    // Tokens signed with the rotated apiserver key are invalid again.
                    if let Ok(n) = crate::cloud::kube::delete_service_account_tokens(&client).await {
                        let at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                        let rolled = crate::cloud::kube::rollout_restart_all(&client, &at).await.unwrap_or(0);
                        say!("deleted {n} service-account token secrets and restarted {rolled} deployments and daemonsets");
                        tokens_renewed = true;
                    }
                }
                let mut p = crate::cloud::kube::nodes_not_ready(&client, &all).await.unwrap_or_else(|e| vec![e.to_string()]);
                if p.is_empty() {
                    p = crate::cloud::kube::kube_system_not_ready(&client).await.unwrap_or_else(|e| vec![e.to_string()]);
                }
                p
            }
            Err(e) => vec![e.message],
        };
        if problems.is_empty() && tokens_renewed && autoscaler_back {
            return Ok(());
        }
        if let Some(signal) = ctx.stop.requested() {
            let mut left = vec![format!("not Ready yet: {}", problems.join("; "))];
            if !autoscaler_back {
                left.push(format!(
                    "cluster-autoscaler is still scaled to 0 (kubectl -n kube-system scale deployment cluster-autoscaler --replicas={})",
                    state.autoscaler_replicas.unwrap_or(1)
                ));
            }
            if !tokens_renewed {
                left.push("service-account token secrets signed with the rotated key are not yet deleted, nor deployments and daemonsets restarted".into());
            }
            return Err(miette!(
                help = "the certificates and the API model are restored; what is left is above, for kubectl",
                "rollback stopped by {} while waiting for the cluster:\n  {}",
                signal.name(),
                left.join("\n  ")
            ));
        }
        if Instant::now() > deadline {
            return Err(miette!(
                help = "the certificates and the API model are restored; find out why with `kubectl get nodes` and `kubectl -n kube-system get pods` (rollback need not run again)",
                "the cluster is not Ready after rollback:\n  {}",
                problems.join("\n  ")
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn wait_etcd(ctx: &Context, masters: &[String]) -> Result<(), StepError> {
    let endpoints = ctx.topo.etcd_client_endpoints();
    let deadline = Instant::now() + ctx.profile.gates.timing(crate::model::profile::GateKind::EtcdHealthy).timeout.as_std();
    loop {
        match ctx.run_root(&masters[0], "etcd health", &node::etcd_health_script(&endpoints)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::command_line;
    use std::path::Path;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn resume_command_repeats_the_flags_uses_the_saved_plan_and_hides_the_secret() {
        let args = argv("certrotate apply --profile rotate-all --auto-approve --api-model /m/apimodel.json --client-secret s3cr3t --force --parallelism 4");
        assert_eq!(
            command_line("apply", Path::new("/m/_rotate_certs_output/ab/plan.yaml"), &args),
            "certrotate apply /m/_rotate_certs_output/ab/plan.yaml --api-model /m/apimodel.json --client-secret \"$AZURE_CLIENT_SECRET\" --force --parallelism 4"
        );
        let args = argv("certrotate apply /p/x.yaml --api-model=/m/a.json --break-lock --json");
        assert_eq!(command_line("apply", Path::new("/p/x.yaml"), &args), "certrotate apply /p/x.yaml --api-model /m/a.json --json");
        assert_eq!(command_line("rollback", Path::new("/p/x.yaml"), &args), "certrotate rollback --api-model /m/a.json");
    }
}
