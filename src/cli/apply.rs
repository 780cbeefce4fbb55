//! `apply` and `rollback`. apply executes exactly a saved plan (or plans, shows and asks for
//! `yes`), after taking the cluster lock and checking the plan is not stale; rollback puts
//! every node's backed-up certificates and the backed-up API model back.

use super::args::{ApplyArgs, ClusterArgs, RollbackArgs};
use super::plan::{colour_wanted, make_plan, observed};
use super::status::ssh_settings;
use super::Outcome;
use crate::apply::executor::{self, Context, StepError};
use crate::apply::journal::Journal;
use crate::apply::lock::{self, LockHolder, LockOutcome};
use crate::apply::node;
use crate::apply::progress::{Event, Mode, Reporter};
use crate::apply::rollback;
use crate::apply::stale::{stale_items, Applied};
use crate::apply::store::{NewPki, RunDir};
use crate::cloud::azure::{AzureInputs, AzureSettings};
use crate::model::apimodel::{write_atomic, ApiModel};
use crate::model::topology::{OsType, Topology};
use crate::pki::catalogue;
use crate::pki::inspect;
use crate::plan::file::{ObservedItem, PlanFile, Sha256Digest};
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
    let plan = match &a.plan_file {
        Some(path) => PlanFile::read(path)?,
        None => {
            let made = make_plan(&a.cluster)?;
            print!("{}", render::human(&PlanView::from_plan_file(&made.plan), colour_wanted()));
            if !made.has_changes {
                return Ok(Outcome::Ok);
            }
            if !a.auto_approve && !ask_yes("\nDo you want to perform these actions?") {
                say!("\nApply cancelled; nothing was changed.");
                return Err(miette!("apply cancelled"));
            }
            made.plan
        }
    };
    let model = ApiModel::load(&a.cluster.model.api_model)?;
    if plan.cluster.dns_prefix != model.dns_prefix() {
        return Err(miette!(
            help = "pass the apimodel.json of the cluster the plan was made for",
            "the plan is for cluster {}, but {} describes {}; nothing was changed",
            plan.cluster.dns_prefix,
            model.path().display(),
            model.dns_prefix()
        ));
    }
    let topo = topology_of_plan(&model, a.cluster.model.name_suffix.as_deref(), &plan)?;
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
        let inputs = AzureInputs::from_args(&a.cluster.azure).map_err(|e| miette!("{e}"))?;
        Some(AzureSettings::from_api_model(&model, inputs).map_err(|e| {
            miette!(help = "this plan restarts master VMs through Azure: pass the Azure flags (see `certrotate apply --help`)", "{e}")
        })?)
    } else {
        None
    };
    let settings = ssh_settings(&a.cluster, &model, &topo)?;
    let fleet = Arc::new(SshFleet::new(settings).into_diagnostic()?);
    let reporter = Arc::new(Reporter::new(Mode::detect(a.json), graph.len()));
    let old_admin = std::fs::read_to_string(model.dir().join("kubeconfig").join(format!("kubeconfig.{}.json", topo.location))).ok();
    let already = journal.done_count();
    let mut ctx = Context::new(graph, topo, plan.profile.clone(), model.path().to_path_buf(), run, journal, reporter.clone(), fleet, digest.hex().to_string());
    ctx.parallelism = a.cluster.parallelism as usize;
    ctx.force = a.cluster.force;
    ctx.apiserver = a.cluster.apiserver.clone();
    ctx.azure = azure;
    ctx.old_admin_kubeconfig = old_admin;
    if let Some(recorded) = &plan.supplied_certificates {
        // A resumed run installs what the first run persisted; the file is needed only
        // until then.
        if !NewPki::is_persisted(&ctx.run.pki_dir()) {
            ctx.supplied = Some(Arc::new(super::supplied::reload(recorded)?));
        }
    }

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
            checked = preflight(&ctx, &plan, &model) => checked,
            signal = ctx.stop.wait() => Err(miette!("{} received while checking the cluster; nothing was changed", signal.name())),
        };
        if let Err(e) = checked {
            release(&ctx, &first, &digest).await;
            ctx.close_sessions().await;
            return Err(e);
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
        let saved = plan_path.clone().unwrap_or_else(|| ctx.run.root.join("plan.yaml"));
        let args: Vec<String> = std::env::args().collect();
        if ok {
            say!("\nApply complete: {} steps done, {} already done.", walked.done, walked.skipped);
            let forced: Vec<String> = ctx.graph.steps().filter(|s| ctx.journal.was_forced(&s.id)).map(|s| s.id.clone()).collect();
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
                ctx.journal.path().display(),
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

/// What an unfinished apply leaves paused, for its error message.
fn autoscaler_note(ctx: &Context) -> String {
    let st = ctx.state.lock().expect("state lock");
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
        let takes_value = !matches!(flag, "--auto-approve" | "--break-lock" | "--json" | "--force" | "--skip-unreachable" | "--detailed-exitcode" | "--offline");
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

/// The cluster as the plan saw it: the API model's nodes plus agents the plan read that the
/// API model does not count (added by `aks-engine scale`, found through the Kubernetes API).
fn topology_of_plan(model: &ApiModel, name_suffix: Option<&str>, plan: &PlanFile) -> miette::Result<Topology> {
    let topo = Topology::derive(model, name_suffix.or(Some(plan.cluster.name_suffix.as_str())))?;
    let observed: Vec<crate::model::topology::RegisteredNode> = plan
        .observed
        .nodes
        .iter()
        .filter(|n| topo.node(&n.node).is_none())
        .map(|n| crate::model::topology::RegisteredNode { name: n.node.clone(), os: OsType::Linux })
        .collect();
    if observed.is_empty() {
        return Ok(topo);
    }
    let (extended, notes) = topo.with_registered_nodes(&observed);
    if let Some(missing) = observed.iter().find(|n| extended.node(&n.name).is_none()) {
        return Err(miette!(
            help = "make a new plan against the current apimodel.json",
            "the plan names node {}, which this API model cannot place ({}); nothing was changed",
            missing.name,
            notes.join("; ")
        ));
    }
    Ok(extended)
}

/// Takes the cluster lock on `first`; `Some(holder)` when it was taken over from a dead holder
/// (or broken with `break_lock`), an error naming the holder when a live one has it.
async fn take_lock(ctx: &Context, first: &str, holder: &LockHolder, break_lock: bool, held_by: &str, held_help: &str) -> miette::Result<Option<String>> {
    let answer = ctx.run_root(first, "take the cluster lock", &node::lock_take_script(&holder.line(), None)).await.map_err(step_report)?;
    let held = lock::held_line(&answer).unwrap_or("").to_string();
    match lock::decide(&answer, break_lock).0 {
        LockOutcome::Taken => Ok(None),
        LockOutcome::Held(who) => Err(miette!(
            help = held_help.to_string(),
            "the cluster is locked by {held_by}{who} (lock file {} on {first}); nothing was changed",
            node::LOCK_FILE
        )),
        LockOutcome::TakenFrom(who) => {
            let again = ctx.run_root(first, "take the cluster lock", &node::lock_take_script(&holder.line(), Some(&held))).await.map_err(step_report)?;
            if !again.trim_start().starts_with("TAKEN") {
                return Err(miette!(
                    help = "another certrotate took the lock at the same moment; nothing was changed",
                    "the cluster lock changed hands while taking it over: {}",
                    again.lines().nth(1).unwrap_or("").trim()
                ));
            }
            Ok(Some(who))
        }
    }
}

fn step_report(e: StepError) -> miette::Report {
    miette!(help = "check --ssh-host and the SSH key; nothing was changed", "{}", e.message)
}

async fn release(ctx: &Context, first: &str, digest: &Sha256Digest) {
    let _ = ctx.run_root(first, "release the cluster lock", &node::lock_release_script(&digest.to_string())).await;
}

/// Checks before any change: the plan still matches the cluster, the API model is the
/// one planned against, Azure answers when VMs will be restarted.
async fn preflight(ctx: &Arc<Context>, plan: &PlanFile, model: &ApiModel) -> miette::Result<()> {
    let model_digest = Sha256Digest::of_bytes(model.source.text.as_bytes());
    if model_digest != plan.cluster.api_model.digest && !ctx.journal.is_done("updateApiModel") {
        return Err(miette!(
            help = "make a new plan against the current apimodel.json, review it, and apply that",
            "the plan is stale: {} changed since the plan was made ({} in the plan, {} now); nothing was changed",
            model.path().display(),
            plan.cluster.api_model.digest,
            model_digest
        ));
    }
    let inventory = read_nodes(ctx).await?;
    let live = observed(&ctx.topo, &inventory);
    let applied = applied_material(ctx);
    let stale = stale_items(&plan.observed, &live, &applied);
    if !stale.is_empty() {
        let list: Vec<String> = stale.iter().map(|s| format!("  {s}")).collect();
        return Err(miette!(
            help = "the cluster changed after the plan was made: make a new plan, review it, and apply that",
            "the plan is stale; {} difference(s) since it was made:\n{}\nnothing was changed",
            stale.len(),
            list.join("\n")
        ));
    }
    let mut servers = std::collections::HashMap::new();
    for n in &inventory.nodes {
        for k in &n.kubeconfigs {
            if k.path.starts_with("/home/") {
                if let Some(s) = &k.server {
                    servers.insert(n.node.clone(), s.clone());
                }
            }
        }
    }
    *ctx.master_kubeconfig_servers.lock().expect("servers lock") = servers;
    if ctx.azure.is_some() {
        ctx.check_azure().await.map_err(|e| miette!(help = "this plan restarts master VMs through Azure; check the Azure flags and the service principal", "Azure does not answer: {}", e.message))?;
    }
    Ok(())
}

/// Reads every node with refresh, over the connections the walk will go on using, so each
/// node sees one SSH login for the whole apply (reboots aside).
async fn read_nodes(ctx: &Arc<Context>) -> miette::Result<crate::model::inventory::Inventory> {
    use crate::remote::refresh::{refresh, RefreshError, RefreshOptions};
    use crate::remote::ssh::RemoteError;
    // Every node must answer: apply never goes on without one.
    let opts = RefreshOptions { parallelism: ctx.parallelism, skip_unreachable: false };
    let run_ctx = ctx.clone();
    let read = refresh(&ctx.topo, &ctx.catalogue, opts, move |node, script| {
        let ctx = run_ctx.clone();
        async move { ctx.run_root(&node.name, "refresh", &script).await.map_err(|e| RemoteError::Reported(e.message)) }
    })
    .await;
    read.map_err(|e| match e {
        RefreshError::Unreachable(failed) => miette!(
            help = "every node must answer before apply changes anything; check --ssh-host and the SSH key",
            "{} node(s) could not be read; nothing was changed:\n{}",
            failed.len(),
            failed.iter().map(|u| format!("  {}: {}", u.node, u.error)).collect::<Vec<_>>().join("\n")
        ),
        other => miette!("{other}"),
    })
}

/// What this plan's persisted PKI would put on each node (and in etcd), as refresh sees it.
fn applied_material(ctx: &Context) -> Applied {
    let mut out = Applied::new();
    let Ok(Some(pki)) = NewPki::load(&ctx.run.pki_dir()) else { return out };
    let cert_item = |pem: &str| inspect::parse_cert_pem(pem).ok().map(|_| ObservedItem::Content { digest: Sha256Digest::of_bytes(pem.as_bytes()) });
    let key_item = |pem: &str| {
        inspect::parse_key_pem(pem).ok().and_then(|k| Sha256Digest::from_hex(&k.public_key_sha256)).map(|fp| ObservedItem::PrivateKey { public_key_fingerprint: fp })
    };
    for node in ctx.topo.nodes() {
        for (id, pair) in &pki.items {
            let entry = match id.strip_prefix("kubeletserver:") {
                Some(n) if n == node.name => catalogue::kubelet_server_entry(node),
                Some(_) => continue,
                None => match ctx.catalogue.iter().find(|e| &e.id() == id) {
                    Some(e) => e.clone(),
                    None => continue,
                },
            };
            if !entry.holders.contains(&node.name) {
                continue;
            }
            if let Some(item) = cert_item(&pair.cert_pem) {
                out.insert((node.name.clone(), entry.cert_file.path.clone()), item);
            }
            if let (Some(k), true) = (&entry.key_file, catalogue::holds_key(&entry, node)) {
                if let Some(item) = key_item(&pair.key_pem) {
                    out.insert((node.name.clone(), k.path.clone()), item);
                }
            }
        }
    }
    let fp = |id: &str| pki.fingerprint(id).and_then(|h| Sha256Digest::from_hex(&h));
    if let Some(d) = fp("proxy-ca") {
        out.insert(("etcd".into(), catalogue::ETCD_PROXY_CA_KEY.into()), ObservedItem::Content { digest: d });
    }
    if let Some(d) = fp("proxy") {
        out.insert(("etcd".into(), catalogue::ETCD_PROXY_CERT_KEY.into()), ObservedItem::Content { digest: d });
    }
    if let Some(item) = pki.get("proxy").and_then(|p| key_item(&p.key_pem)) {
        out.insert(("etcd".into(), catalogue::ETCD_PROXY_KEY_KEY.into()), item);
    }
    out
}

/// Asks the API for its version every second while apply runs, to measure the downtime an
/// operator's clients would have seen.
struct ApiProber {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(u64, u64, f64)>,
}

impl ApiProber {
    fn start(ctx: Arc<Context>) -> ApiProber {
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

    async fn stop(self) -> (u64, u64, f64) {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or((0, 0, 0.0))
    }
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
