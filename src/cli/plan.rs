//! `plan`, `show` and `graph`: refresh the cluster, diff it against the profile, build the
//! action graph, render it, and save it as a sealed plan file; render saved plans offline.

use super::args::{ClusterArgs, GraphArgs, PlanArgs, ShowArgs};
use super::status::read_cluster_of;
use super::Outcome;
use crate::model::apimodel::ApiModel;
use crate::model::inventory::{Inventory, ObservedContent};
use crate::model::profile::Profile;
use crate::model::topology::{Role, Topology};
use crate::pki::audit::audit_certificate_profile;
use crate::plan::diff::{diff_with, DiffInput};
use crate::plan::file::{ClusterIdentity, FileDigest, Finding, NodeRole, Observed, ObservedItem, ObservedNode, PlanFile, Severity, Sha256Digest};
use crate::plan::graph;
use crate::plan::render::{self, PlanParts, PlanView};
use crate::pki::catalogue::{ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY};
use is_terminal::IsTerminal;
use miette::{miette, IntoDiagnostic};

pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn run_plan(a: &PlanArgs) -> miette::Result<Outcome> {
    let made = make_plan(&a.cluster)?;
    if a.json {
        println!("{}", render::json(&PlanView::from_plan_file(&made.plan)).into_diagnostic()?);
    } else {
        print!("{}", render::human(&PlanView::from_plan_file(&made.plan), colour_wanted()));
    }
    if let Some(out) = &a.out {
        made.plan.write_atomic(out).map_err(|e| miette!(help = "choose a writable path for --out", "cannot save the plan to {}: {e}", out.display()))?;
        if !a.json {
            println!("\nSaved the plan to {}. Review it with `certrotate show {}`; apply exactly it with `certrotate apply {}`.", out.display(), out.display(), out.display());
        }
    }
    Ok(if a.detailed_exitcode && made.has_changes { Outcome::Attention } else { Outcome::Ok })
}

/// A sealed plan made from the live cluster, with what refresh read.
pub struct MadePlan {
    pub plan: PlanFile,
    pub has_changes: bool,
}

/// Refreshes the cluster, diffs it against the profile, builds and checks the graph, and
/// seals the result as a plan file (not written anywhere).
pub fn make_plan(args: &ClusterArgs) -> miette::Result<MadePlan> {
    let profile = Profile::load(&args.model.profile)?;
    let now = time::OffsetDateTime::now_utc();
    // The operator's certificates are checked before the cluster is contacted: a bad file
    // costs nothing but a message.
    let model = ApiModel::load(&args.model.api_model)?;
    let supplied = match &args.model.certificate_profile {
        Some(path) => Some(super::supplied::load(path, &model, args.model.name_suffix.as_deref(), now)?),
        None => None,
    };
    let (model, topo, cat, inventory) = read_cluster_of(args, model)?;
    let audit = audit_certificate_profile(&model, &cat, now)?;
    let diff = diff_with(DiffInput {
        topology: &topo,
        catalogue: &cat,
        inventory: &inventory,
        apimodel_certificates: Some(&audit.certificates),
        profile: &profile,
        now,
        supplied: supplied.as_ref().map(|s| s.facts.as_slice()),
    });
    let action_graph = graph::build(&diff, &topo, &profile);
    action_graph.validate().map_err(|e| miette!("internal error: the planned action graph is invalid: {e}"))?;
    let parts = PlanParts::assemble(&diff, &action_graph);
    let cluster = ClusterIdentity {
        dns_prefix: topo.dns_prefix.clone(),
        location: topo.location.clone(),
        name_suffix: topo.name_suffix.clone(),
        apiserver_fqdn: topo.fqdn.clone(),
        resource_group: args.azure.resource_group.clone(),
        subscription_id: args.azure.subscription_id.clone(),
        api_model: FileDigest {
            path: std::fs::canonicalize(model.path()).unwrap_or_else(|_| model.path().to_path_buf()),
            digest: Sha256Digest::of_bytes(model.source.text.as_bytes()),
        },
    };
    let mut plan = parts.into_plan(cluster, profile);
    if let Some(s) = supplied {
        plan.supplied_certificates = Some(s.file);
        plan.findings.extend(s.findings);
    }
    // Agents only the Kubernetes API knows (see status::add_registered_nodes): say so in the plan.
    let from_model = Topology::derive_with_suffix(&model, &topo.name_suffix)?;
    for added in from_model.agents_missing_from(&topo) {
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
    plan.observed = observed(&topo, &inventory);
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

pub fn run_show(a: &ShowArgs) -> miette::Result<Outcome> {
    let plan = PlanFile::read(&a.plan_file)?;
    let view = PlanView::from_plan_file(&plan);
    if a.json {
        println!("{}", render::json(&view).into_diagnostic()?);
    } else {
        println!(
            "Plan for {} ({}), made {} by certrotate {} with profile {}.\n",
            plan.cluster.dns_prefix, plan.cluster.apiserver_fqdn, plan.created_at, plan.tool_version, plan.profile.name
        );
        if let Some(s) = &plan.supplied_certificates {
            println!("Certificates supplied by {} ({}); apply reads them from there.\n", s.path.display(), s.digest);
        }
        print!("{}", render::human(&view, colour_wanted()));
    }
    Ok(Outcome::Ok)
}

pub fn run_graph(a: &GraphArgs) -> miette::Result<Outcome> {
    let plan = PlanFile::read(&a.plan_file)?;
    print!("{}", render::dot(&plan.graph));
    Ok(Outcome::Ok)
}
