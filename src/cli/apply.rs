//! `apply` and `rollback`. apply executes exactly a saved plan (or plans, shows and asks for
//! `yes`), after taking the cluster lock and checking the plan is not stale; rollback puts
//! every node's backed-up certificates and the backed-up API model back.

use super::args::{ApplyArgs, ClusterArgs, RollbackArgs};
use super::plan::{colour_wanted, make_plan};
use super::status::{discover_model, ssh_settings};
use super::Outcome;
use crate::apply::executor::{self, Context};
use crate::apply::preflight::{preflight, release, take_lock};
use crate::apply::prober::ApiProber;
use crate::apply::journal::{Approval, ApprovalHow, Journal};
use crate::apply::lock::LockHolder;
use crate::apply::progress::{Event, Mode, Reporter};
use crate::apply::rollback;
use crate::flow::{self, discover::Discovered};
use crate::apply::store::{NewPki, RunDir};
use crate::cloud::azure::AzureSettings;
use crate::model::apimodel::{write_atomic, ApiModel};
use crate::model::topology::Topology;
use crate::plan::file::PlanFile;
use crate::plan::graph::{ActionGraph, Operation};
use crate::plan::render::{self, PlanView};
use crate::remote::ssh::SshFleet;
use miette::{miette, IntoDiagnostic};
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Instant;

fn ask_yes(question: &str) -> bool {
    print!("{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim() == "yes"
}

fn same_cluster(plan: &PlanFile, model: &ApiModel) -> miette::Result<()> {
    if plan.cluster.dns_prefix != model.dns_prefix() {
        return Err(miette!(
            help = "pass the apimodel.json of the cluster the plan was made for",
            "the plan is for cluster {}, but {} describes {}; nothing was changed",
            plan.cluster.dns_prefix,
            model.path().display(),
            model.dns_prefix()
        ));
    }
    Ok(())
}

pub fn run_apply(a: &ApplyArgs) -> miette::Result<Outcome> {
    let (plan, cluster) = match &a.plan_file {
        Some(path) => {
            let plan = PlanFile::read(path)?;
            approval_required(&plan, a.approved_by.as_deref())?;
            // Another cluster's plan is named as such before its VM name suffix (below) makes
            // this API model's nodes look misnamed.
            let model = ApiModel::load(&a.cluster.model.api_model)?;
            same_cluster(&plan, &model)?;
            // A saved plan names its VM name suffix: the API model alone may not.
            let suffix = a.cluster.model.name_suffix.as_deref().unwrap_or(&plan.cluster.name_suffix);
            let cluster = discover_model(&a.cluster, model, Some(suffix))?;
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
    same_cluster(&plan, model)?;
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

/// `rollback`: undoes the most recent apply beside the API model (or that of the given plan)
/// by walking its rollback graph (`plan::rollback`, run by `apply::rollback`): shown first,
/// confirmed unless `--auto-approve`, journaled and resumable.
pub fn run_rollback(a: &RollbackArgs) -> miette::Result<Outcome> {
    let c: &ClusterArgs = &a.cluster;
    let model = ApiModel::load(&c.model.api_model)?;
    let (run, plan) = rollback::find_run(&model, a.plan_file.as_deref())?;
    let topo = topology_of_plan(&model, c.model.name_suffix.as_deref(), &plan)?;
    let settings = ssh_settings(c, &model, &topo)?;
    let prepared = rollback::prepare(&model, run, plan, topo)?;
    print!("{}", prepared.preview(colour_wanted()));
    if !a.auto_approve && !ask_yes("\nDo you want to roll back?") {
        say!("\nRollback cancelled; nothing was changed.");
        return Err(miette!("rollback cancelled"));
    }
    let args: Vec<String> = std::env::args().collect();
    let mut again = command_line("rollback", a.plan_file.as_deref().unwrap_or(std::path::Path::new("")), &args);
    if let Some(p) = &a.plan_file {
        // command_line leaves the plan out of a rollback; this one was given one.
        again = again.replacen(" rollback", &format!(" rollback {}", p.display()), 1);
    }
    let options = rollback::RunOptions { apiserver: c.apiserver.clone(), parallelism: c.parallelism as usize, again };
    let finished = prepared.execute(settings, options)?;
    say!(
        "\nRollback complete in {:.1}s: {} steps done, {} already done; the nodes hold the certificates they had before plan {}, and the cluster is Ready.",
        finished.secs,
        finished.done,
        finished.skipped,
        finished.stamp
    );
    Ok(Outcome::Ok)
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
