//! Renderings: a snapshot of the human output of a representative plan, the summary line,
//! colour only on request, JSON that reads back as plan data, DOT with gates as diamonds, a
//! saved plan that renders like the fresh one, and no private key in any of them.

mod plan_fixture;

use certrotate::model::profile::Profile;
use certrotate::plan::diff::Diff;
use certrotate::plan::file::{self, ClusterIdentity, FileDigest, PlanFile, Sha256Digest, StepKind, TargetChanges};
use certrotate::plan::graph::{self, ActionGraph};
use certrotate::plan::render::{self, PlanParts};
use plan_fixture::{cluster, shipped, Age, Cluster};

fn plan(c: &Cluster, p: &Profile) -> (Diff, ActionGraph, PlanParts) {
    let d = c.diff(p);
    let g = graph::build(&d, &c.topo, p);
    let parts = PlanParts::assemble(&d, &g);
    (d, g, parts)
}

/// Replaces what changes from run to run (key material is random) with placeholders.
fn normalise(text: &str) -> String {
    let fp = regex::Regex::new(r"sha256:[0-9a-f]{12,64}…?").unwrap();
    let serial = regex::Regex::new(r#"(serial\s+= )"[0-9a-f]+""#).unwrap();
    serial.replace_all(&fp.replace_all(text, "sha256:<fp>"), "$1\"<serial>\"").into_owned()
}

/// The lab's main shape, 20 days before expiry, whose apiserver certificate lacks the second
/// master's address.
fn representative() -> (Cluster, Profile) {
    let mut c = cluster(3, 2, Age::ExpiringInDays(20));
    let without = c.issue_variant("apiserver", |t| {
        t.ip_sans.retain(|ip| ip.to_string() != "10.255.255.6");
        t.not_after = plan_fixture::NOW + time::Duration::days(20);
    });
    for i in 0..3 {
        let m = c.master(i);
        *c.file_mut(&m, "/etc/kubernetes/certs/apiserver.crt") =
            plan_fixture::cert_file("/etc/kubernetes/certs/apiserver.crt", "root", 0o644, &without.cert_pem);
        *c.file_mut(&m, "/etc/kubernetes/certs/apiserver.key") =
            plan_fixture::key_file("/etc/kubernetes/certs/apiserver.key", "root", &without.key_pem);
    }
    c.apimodel.iter_mut().find(|(id, _)| id == "apiserver").unwrap().1 = certrotate::pki::inspect::parse_cert_pem(&without.cert_pem).unwrap();
    (c, shipped("renew-expiring"))
}

#[test]
fn human_rendering_of_a_representative_plan() {
    let (c, p) = representative();
    let (_, _, parts) = plan(&c, &p);
    let text = render::human(&parts.view(), false);
    assert!(text.contains("+ \"10.255.255.6\","), "the missing SAN shows as an added list item:\n{text}");
    insta::assert_snapshot!(normalise(&text));
}

#[test]
fn summary_lines_count_changes_restarts_and_downtime() {
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    let (_, _, parts) = plan(&c, &shipped("renew-expiring"));
    // 28 leaf copies under the kept CA (17 in files on nodes, 3 inline in the admin
    // kubeconfigs, 8 in the API model);
    // the front-proxy pair on 3 masters and in etcd is replaced; 3 masters and 2 agents restart.
    assert_eq!(render::summary_line(&parts.view()), "Plan: 0 to create, 28 to reissue, 8 to replace; 5 restarts; API downtime: none");

    let healthy = cluster(3, 2, Age::Healthy);
    let (_, _, parts) = plan(&healthy, &shipped("rotate-ca"));
    assert_eq!(
        render::summary_line(&parts.view()),
        "Plan: 0 to create, 0 to reissue, 42 to replace; 5 restarts; API downtime: outage, up to 35m"
    );
    let text = render::human(&parts.view(), false);
    assert!(text.contains("new cluster CA must reach every master at once"), "{text}");

    let (_, g, parts) = plan(&healthy, &shipped("renew-expiring"));
    assert!(g.is_empty());
    assert_eq!(render::summary_line(&parts.view()), "No changes. Certificates match the profile.");
    assert!(render::human(&parts.view(), false).ends_with("No changes. Certificates match the profile.\n"));
}

#[test]
fn colour_only_when_asked() {
    let (c, p) = representative();
    let (_, _, parts) = plan(&c, &p);
    assert!(render::human(&parts.view(), true).contains("\u{1b}["));
    assert!(!render::human(&parts.view(), false).contains('\u{1b}'));
}

#[test]
fn json_reads_back_as_plan_data() {
    let (c, p) = representative();
    let (_, g, parts) = plan(&c, &p);
    let text = render::json(&parts.view()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["summary"]["reissue"], 28);
    assert_eq!(value["restarts"], 5);
    assert_eq!(value["expectedApiDowntime"]["kind"], "none");
    let changes: Vec<TargetChanges> = serde_json::from_value(value["changes"].clone()).unwrap();
    assert_eq!(changes, parts.changes);
    let graph: file::ActionGraph = serde_json::from_value(value["graph"].clone()).unwrap();
    assert_eq!(graph.steps.len(), g.len());
}

#[test]
fn dot_draws_gates_as_diamonds() {
    let (c, p) = representative();
    let (_, g, parts) = plan(&c, &p);
    let dot = render::dot(&parts.graph);
    assert!(dot.starts_with("digraph certrotate {\n") && dot.ends_with("}\n"));
    let gates = parts.graph.steps.iter().filter(|n| n.kind == StepKind::Gate).count();
    assert!(gates > 0);
    assert_eq!(dot.matches("shape=diamond").count(), gates);
    assert_eq!(dot.matches("shape=box").count(), g.len() - gates);
    assert_eq!(dot.matches(" -> ").count(), parts.graph.edges.len());
    assert!(dot.contains("subgraph cluster_"));
    assert!(dot.contains("\"etcdHealthy@preflight\" [label=\"etcdHealthy\\n(timeout 10m)\", shape=diamond"));
}

fn saved_plan(c: &Cluster, p: &Profile, parts: &PlanParts) -> PlanFile {
    let identity = ClusterIdentity {
        dns_prefix: c.topo.dns_prefix.clone(),
        location: c.topo.location.clone(),
        name_suffix: c.topo.name_suffix.clone(),
        apiserver_fqdn: c.topo.fqdn.clone(),
        resource_group: None,
        subscription_id: None,
        api_model: FileDigest { path: "apimodel.json".into(), digest: Sha256Digest::of_bytes(b"apimodel") },
    };
    let mut plan = parts.clone().into_plan(identity, p.clone());
    plan.seal();
    plan
}

#[test]
fn a_saved_plan_renders_like_the_fresh_one() {
    let (c, p) = representative();
    let (_, _, parts) = plan(&c, &p);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rotation.plan.yaml");
    saved_plan(&c, &p, &parts).write_atomic(&path).unwrap();
    let read = PlanFile::read(&path).unwrap();
    let view = render::PlanView::from_plan_file(&read);
    assert_eq!(render::human(&view, false), render::human(&parts.view(), false));
    assert_eq!(render::dot(&read.graph), render::dot(&parts.graph));
    ActionGraph::from_saved(&read.graph).unwrap().validate().unwrap();
}

#[test]
fn no_private_key_reaches_the_diff_the_graph_or_any_rendering() {
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    // The inputs were made from real key pairs: the scan below looks for something that existed.
    assert!(c.issued.values().all(|pair| pair.key_pem.contains("PRIVATE KEY")));
    for name in ["rotate-all", "renew-expiring", "rotate-ca"] {
        let p = shipped(name);
        let (d, g, parts) = plan(&c, &p);
        let view = parts.view();
        let texts = [
            ("diff", serde_json::to_string(&d).unwrap()),
            ("graph", serde_json::to_string(&g.steps().collect::<Vec<_>>()).unwrap()),
            ("human", render::human(&view, false)),
            ("human colour", render::human(&view, true)),
            ("json", render::json(&view).unwrap()),
            ("dot", render::dot(&parts.graph)),
            ("saved plan", saved_plan(&c, &p, &parts).to_yaml().unwrap()),
        ];
        for (what, text) in texts {
            assert!(!text.contains("PRIVATE KEY"), "{name}: {what} holds a private key");
            assert!(!file::contains_secret(&text), "{name}: {what} holds something that looks secret");
            for pair in c.issued.values() {
                let body: String = pair.key_pem.lines().nth(1).unwrap().to_string();
                assert!(!text.contains(&body), "{name}: {what} holds key material");
            }
        }
    }
}
