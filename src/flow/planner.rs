//! The planner: the diff of the live cluster against the profile, the action graph that
//! carries it out, sealed into a plan file; and before apply, the re-check that a saved plan
//! still matches the cluster (what it observed, allowing for what an earlier run of the same
//! plan already installed).

use crate::apply::stale::{stale_items, Applied};
use crate::apply::store::NewPki;
use crate::flow::discover::Discovered;
use crate::flow::read::ClusterRead;
use crate::flow::supplied::Supplied;
use crate::model::inventory::{Inventory, ObservedContent};
use crate::model::profile::Profile;
use crate::model::topology::{Role, Topology};
use crate::pki::audit::audit_certificate_profile;
use crate::pki::catalogue::{self, CertEntry, ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY};
use crate::pki::inspect;
use crate::plan::diff::{diff_with, DiffInput};
use crate::plan::file::{ClusterIdentity, FileDigest, Finding, NodeRole, Observed, ObservedItem, ObservedNode, PlanFile, Severity, Sha256Digest};
use crate::plan::graph;
use crate::plan::render::PlanParts;

/// What a plan is made from besides the cluster.
pub struct PlanInputs {
    pub profile: Profile,
    /// The operator's certificates (`--certificate-profile`), already checked.
    pub supplied: Option<Supplied>,
    /// Recorded in the plan for the operator's review; apply reads its own.
    pub resource_group: Option<String>,
    pub subscription_id: Option<String>,
    pub now: time::OffsetDateTime,
}

/// A sealed plan made from the live cluster.
pub struct MadePlan {
    pub plan: PlanFile,
    pub has_changes: bool,
}

/// Diffs the read cluster against the profile, builds and checks the graph, and seals the
/// result as a plan file (not written anywhere).
pub fn make_plan(cluster: &Discovered, read: &ClusterRead, inputs: PlanInputs) -> miette::Result<MadePlan> {
    let (model, topo) = (&cluster.model, &read.topology);
    let audit = audit_certificate_profile(model, &read.catalogue, inputs.now)?;
    let diff = diff_with(DiffInput {
        topology: topo,
        catalogue: &read.catalogue,
        inventory: &read.inventory,
        apimodel_certificates: Some(&audit.certificates),
        profile: &inputs.profile,
        now: inputs.now,
        supplied: inputs.supplied.as_ref().map(|s| s.facts.as_slice()),
    });
    let action_graph = graph::build(&diff, topo, &inputs.profile);
    action_graph.validate().map_err(|e| miette::miette!("internal error: the planned action graph is invalid: {e}"))?;
    let parts = PlanParts::assemble(&diff, &action_graph);
    let identity = ClusterIdentity {
        dns_prefix: topo.dns_prefix.clone(),
        location: topo.location.clone(),
        name_suffix: topo.name_suffix.clone(),
        apiserver_fqdn: topo.fqdn.clone(),
        resource_group: inputs.resource_group,
        subscription_id: inputs.subscription_id,
        api_model: FileDigest {
            path: std::fs::canonicalize(model.path()).unwrap_or_else(|_| model.path().to_path_buf()),
            digest: Sha256Digest::of_bytes(model.source.text.as_bytes()),
        },
    };
    let mut plan = parts.into_plan(identity, inputs.profile);
    if let Some(s) = inputs.supplied {
        plan.supplied_certificates = Some(s.file);
        plan.findings.extend(s.findings);
    }
    // Agents only the Kubernetes API knows (see read::add_registered_nodes): say so in the plan.
    for added in cluster.topology.agents_missing_from(topo) {
        plan.findings.push(Finding {
            severity: Severity::Info,
            code: "node-from-api".into(),
            node: Some(added.name.clone()),
            path: None,
            message: format!(
                "{} is registered in the Kubernetes API but not in the API model (pool {} lists fewer agents); it is planned like the others",
                added.name,
                added.pool.as_deref().unwrap_or("?")
            ),
        });
    }
    plan.observed = observed(topo, &read.inventory);
    plan.seal();
    Ok(MadePlan { plan, has_changes: diff.has_changes() })
}

/// Digests of what refresh read, for the plan to be checked against before apply.
pub fn observed(topo: &Topology, inventory: &Inventory) -> Observed {
    let mut out = Observed::default();
    for node in &inventory.nodes {
        let role = match topo.node(&node.node).map(|n| n.role) {
            Some(Role::Master) => NodeRole::Master,
            _ => NodeRole::Agent,
        };
        let files = node
            .files
            .iter()
            .map(|f| {
                let item = match &f.content {
                    ObservedContent::Certificate { .. } => match Sha256Digest::from_hex(&f.sha256) {
                        Some(digest) => ObservedItem::Content { digest },
                        None => ObservedItem::Unreadable { reason: "no digest".into() },
                    },
                    ObservedContent::PrivateKey { public_key_sha256, .. } => match Sha256Digest::from_hex(public_key_sha256) {
                        Some(fp) => ObservedItem::PrivateKey { public_key_fingerprint: fp },
                        None => ObservedItem::Unreadable { reason: "no public key fingerprint".into() },
                    },
                    ObservedContent::Missing => ObservedItem::Missing {},
                    ObservedContent::Unparseable { error } => ObservedItem::Unreadable { reason: error.clone() },
                };
                (f.path.clone(), item)
            })
            .collect();
        out.nodes.push(ObservedNode { node: node.node.clone(), role, files });
        if let (Some(etcd), true) = (&node.etcd_proxy, out.etcd.is_empty()) {
            let mut put = |key: &str, value: &Option<String>, private: bool| {
                let item = match value.as_deref().and_then(Sha256Digest::from_hex) {
                    Some(d) if private => ObservedItem::PrivateKey { public_key_fingerprint: d },
                    Some(d) => ObservedItem::Content { digest: d },
                    None => ObservedItem::Missing {},
                };
                out.etcd.insert(key.to_string(), item);
            };
            put(ETCD_PROXY_CA_KEY, &etcd.ca_sha256, false);
            put(ETCD_PROXY_CERT_KEY, &etcd.client_cert_sha256, false);
            put(ETCD_PROXY_KEY_KEY, &etcd.client_key_public_sha256, true);
        }
    }
    out
}

/// What a plan's persisted PKI puts on each node (and in etcd), as refresh would see it: an
/// earlier run of the same plan may have installed it, which is not a change behind its back.
pub fn applied_material(topo: &Topology, cat: &[CertEntry], pki: &NewPki) -> Applied {
    let mut out = Applied::new();
    let cert_item = |pem: &str| inspect::parse_cert_pem(pem).ok().map(|_| ObservedItem::Content { digest: Sha256Digest::of_bytes(pem.as_bytes()) });
    let key_item = |pem: &str| {
        inspect::parse_key_pem(pem).ok().and_then(|k| Sha256Digest::from_hex(&k.public_key_sha256)).map(|fp| ObservedItem::PrivateKey { public_key_fingerprint: fp })
    };
    for node in topo.nodes() {
        for (id, pair) in &pki.items {
            // The kubeconfig certificate goes inline into the admin kubeconfig, where refresh
            // observes it by the digest of its PEM.
            if catalogue::entry_of_plan_id(cat, topo, id).is_ok_and(|e| e.in_admin_kubeconfig() && e.holders.contains(&node.name)) {
                if let Some(item) = cert_item(&pair.cert_pem) {
                    out.insert((node.name.clone(), catalogue::admin_kubeconfig_path(&topo.admin_username)), item);
                }
                continue;
            }
            let Ok(Some(files)) = catalogue::files_on_node(cat, topo, id, node) else { continue };
            if let Some(item) = cert_item(&pair.cert_pem) {
                out.insert((node.name.clone(), files.cert.path.clone()), item);
            }
            if let (Some(k), Some(item)) = (&files.key, key_item(&pair.key_pem)) {
                out.insert((node.name.clone(), k.path.clone()), item);
            }
        }
    }
    let fp = |id: &str| pki.fingerprint(id).and_then(|h| Sha256Digest::from_hex(&h));
    if let Some(d) = fp("proxy-ca") {
        out.insert(("etcd".into(), ETCD_PROXY_CA_KEY.into()), ObservedItem::Content { digest: d });
    }
    if let Some(d) = fp("proxy") {
        out.insert(("etcd".into(), ETCD_PROXY_CERT_KEY.into()), ObservedItem::Content { digest: d });
    }
    if let Some(item) = pki.get("proxy").and_then(|p| key_item(&p.key_pem)) {
        out.insert(("etcd".into(), ETCD_PROXY_KEY_KEY.into()), item);
    }
    out
}

/// Why a saved plan cannot be applied to the cluster as it is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Staleness {
    /// apimodel.json changed since the plan (and this plan's apply has not written it).
    ApiModelChanged { planned: Sha256Digest, now: Sha256Digest },
    /// Files or etcd keys differ from what the plan observed, beyond this plan's own work.
    ClusterChanged(Vec<String>),
}

/// Re-checks what the plan assumed: the API model it was made against, and the live state
/// it observed (allowing for what `pki`, this plan's persisted PKI, already installed).
/// `api_model_written`: this plan's apply already wrote apimodel.json.
pub fn recheck(plan: &PlanFile, cluster: &Discovered, topo: &Topology, live: &Inventory, pki: Option<&NewPki>, api_model_written: bool) -> Result<(), Staleness> {
    let now = Sha256Digest::of_bytes(cluster.model.source.text.as_bytes());
    if now != plan.cluster.api_model.digest && !api_model_written {
        return Err(Staleness::ApiModelChanged { planned: plan.cluster.api_model.digest.clone(), now });
    }
    let applied = match pki {
        Some(pki) => applied_material(topo, &catalogue::catalogue(topo), pki),
        None => Applied::new(),
    };
    let stale = stale_items(&plan.observed, &observed(topo, live), &applied);
    if stale.is_empty() {
        Ok(())
    } else {
        Err(Staleness::ClusterChanged(stale.iter().map(|s| s.to_string()).collect()))
    }
}
