//! `evidence`: finds the applied plan's run beside the API model, reads the cluster's expiry
//! table now and every node's log and backups over SSH, and writes the bundle that
//! [`crate::flow::evidence`] assembles to `--out` (a directory, or a .tar.gz file).

use super::args::EvidenceArgs;
use super::status::{discover_model, ssh_settings};
use super::Outcome;
use crate::flow::evidence::{self, Gathered, StatusAfter, MANIFEST};
use crate::flow::expiry;
use crate::flow::read::{self, ReadInputs, ReadLimit};
use crate::model::apimodel::ApiModel;
use crate::remote::refresh::RefreshError;
use miette::{miette, IntoDiagnostic};

pub fn run(a: &EvidenceArgs) -> miette::Result<Outcome> {
    let tar_gz = a.out.to_string_lossy().ends_with(".tar.gz");
    if a.out.exists() {
        return Err(miette!(help = "pass a new path (evidence never overwrites an earlier bundle)", "{} already exists; nothing was written", a.out.display()));
    }
    let model = ApiModel::load(&a.cluster.model.api_model)?;
    let run = evidence::locate(&model, a.plan_file.as_deref())?;
    let suffix = a.cluster.model.name_suffix.clone().unwrap_or_else(|| run.plan.cluster.name_suffix.clone());
    let cluster = discover_model(&a.cluster, model, Some(&suffix))?;
    let topo = cluster.topology_of_plan(&run.plan).unwrap_or_else(|_| cluster.topology.clone());
    let settings = ssh_settings(&a.cluster, &cluster.model, &topo)?;
    let fleet = read::read_fleet(settings).into_diagnostic()?;
    let runtime = tokio::runtime::Runtime::new().into_diagnostic()?;
    let limit = ReadLimit::new(a.cluster.parallelism as usize);
    let (after, (nodes, unread_nodes, not_read_kinds)) = runtime.block_on(async {
        let inputs = ReadInputs { fleet: fleet.clone(), limit: limit.clone(), skip_unreachable: true, apiserver: a.cluster.apiserver.clone() };
        let after = match read::read_cluster(&cluster, inputs).await {
            Ok(read) => {
                let rows = expiry::rows_of_inventory(&read.catalogue, &read.inventory, read.inventory.taken_at);
                Ok(StatusAfter::Read { text: expiry::render_with_unreachable(&rows, &read.inventory), rows })
            }
            Err(e @ RefreshError::HostKey(_)) => Err(e),
            Err(e) => Ok(StatusAfter::NotRead(e.to_string())),
        };
        (after, evidence::read_nodes(fleet.clone(), &topo, limit).await)
    });
    let after = after.map_err(|e| miette!(help = "do not go on until you know why the key changed; nothing was written", "{e}"))?;
    let gathered = Gathered { run, cluster: cluster.topology.dns_prefix.clone(), after, nodes, unread_nodes, not_read_kinds, taken_at: time::OffsetDateTime::now_utc() };
    let bundle = evidence::assemble(&gathered)?;
    if tar_gz {
        evidence::write_tar_gz(&bundle, &a.out)?;
    } else {
        evidence::write_dir(&bundle, &a.out)?;
    }
    say!("Evidence of plan {} written to {}: {} files, listed with their SHA-256 in {MANIFEST}.", gathered.run.plan.digest.as_ref().map(|d| d.to_string()).unwrap_or_default(), a.out.display(), bundle.files.len());
    let not_done = gathered.run.steps_not_done();
    if !not_done.is_empty() {
        say!("Note: the apply is not complete: {} of {} steps are not in the journal (evidence.json lists them).", not_done.len(), gathered.run.plan.graph.steps.len());
    }
    if gathered.run.rollback_journal.is_some() {
        say!("Note: this apply was rolled back (rollback.jsonl is in the bundle).");
    }
    if let StatusAfter::NotRead(why) = &gathered.after {
        say!("Note: the status now could not be read: {why}");
    }
    for u in &gathered.unread_nodes {
        say!("Note: {} was not read: {}", u.node, u.error);
    }
    for k in &gathered.not_read_kinds {
        say!("Note: {k}");
    }
    Ok(Outcome::Ok)
}
