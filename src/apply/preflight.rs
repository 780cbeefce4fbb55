//! What apply (and rollback) do before walking the graph: take the cluster lock (or take it
//! over from a holder that is gone), re-read every node over the connections the walk goes on
//! using, re-check that the plan still matches the cluster, and check Azure answers when VMs
//! will be restarted. Nothing here changes a node but the lock file.

use crate::apply::executor::{Context, StepError};
use crate::apply::lock::{self, LockHolder, LockOutcome};
use crate::apply::node;
use crate::apply::store::NewPki;
use crate::flow::{self, discover::Discovered, planner::Staleness};
use crate::model::apimodel::write_atomic;
use crate::plan::file::{PlanFile, Sha256Digest};
use miette::miette;
use std::sync::Arc;

/// Takes the cluster lock on `first`; `Some(holder)` when it was taken over from a dead holder
/// (or broken with `break_lock`), an error naming the holder when a live one has it.
pub async fn take_lock(ctx: &Context, first: &str, holder: &LockHolder, break_lock: bool, held_by: &str, held_help: &str) -> miette::Result<Option<String>> {
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

pub async fn release(ctx: &Context, first: &str, digest: &Sha256Digest) {
    let _ = ctx.run_root(first, "release the cluster lock", &node::lock_release_script(&digest.to_string())).await;
}

/// Checks before any change: the plan still matches the cluster, the API model is the
/// one planned against, Azure answers when VMs will be restarted.
pub async fn preflight(ctx: &Arc<Context>, plan: &PlanFile, cluster: &Discovered) -> miette::Result<()> {
    let inventory = read_nodes(ctx).await?;
    let pki = NewPki::load(&ctx.store.run.pki_dir()).ok().flatten();
    match flow::planner::recheck(plan, cluster, &ctx.topo, &inventory, pki.as_ref(), ctx.store.journal.is_done("updateApiModel")) {
        Ok(()) => {}
        Err(Staleness::ApiModelChanged { planned, now }) => {
            return Err(miette!(
                help = "make a new plan against the current apimodel.json, review it, and apply that",
                "the plan is stale: {} changed since the plan was made ({planned} in the plan, {now} now); nothing was changed",
                cluster.model.path().display(),
            ))
        }
        Err(Staleness::ClusterChanged(stale)) => {
            let list: Vec<String> = stale.iter().map(|s| format!("  {s}")).collect();
            return Err(miette!(
                help = "the cluster changed after the plan was made: make a new plan, review it, and apply that",
                "the plan is stale; {} difference(s) since it was made:\n{}\nnothing was changed",
                stale.len(),
                list.join("\n")
            ));
        }
    }
    keep_status_before(ctx, &inventory)?;
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
    if ctx.conn.azure.is_some() {
        ctx.conn.check_azure().await.map_err(|e| miette!(help = "this plan restarts master VMs through Azure; check the Azure flags and the service principal", "Azure does not answer: {}", e.message))?;
    }
    Ok(())
}

/// Keeps the expiry table of the cluster as this plan first found it, before anything
/// changed; a resumed run keeps the first run's. `evidence` shows it beside the one after.
fn keep_status_before(ctx: &Context, inventory: &crate::model::inventory::Inventory) -> miette::Result<()> {
    use crate::flow::expiry;
    let run = &ctx.store.run;
    if run.status_before_json().exists() {
        return Ok(());
    }
    let rows = expiry::rows_of_inventory(&ctx.catalogue, inventory, inventory.taken_at);
    let json = serde_json::to_string_pretty(&rows).expect("rows serialise");
    let text = expiry::render_with_unreachable(&rows, inventory);
    for (path, bytes) in [(run.status_before_text(), text.as_bytes()), (run.status_before_json(), json.as_bytes())] {
        write_atomic(&path, bytes, Some(0o600)).map_err(|e| miette!("cannot keep the status before apply in {}: {e}; nothing was changed", path.display()))?;
    }
    Ok(())
}

/// Reads every node with refresh, over the connections the walk will go on using, so each
/// node sees one SSH login for the whole apply (reboots aside).
async fn read_nodes(ctx: &Arc<Context>) -> miette::Result<crate::model::inventory::Inventory> {
    use crate::remote::refresh::{refresh, ReadLimit, RefreshError, RefreshOptions};
    use crate::remote::ssh::RemoteError;
    // Every node must answer: apply never goes on without one.
    let opts = RefreshOptions { limit: ReadLimit::new(ctx.parallelism), skip_unreachable: false };
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

