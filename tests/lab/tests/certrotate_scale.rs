//! Agents added by `aks-engine scale` that the API model does not list: `status` and `plan`
//! take them from the Kubernetes node list when the admin kubeconfig is beside the API model
//! and the API answers, and go on with the API model's nodes (saying so) when it is not.
//! Needs root and the certrotate binary built beside this test (`cargo build --workspace`).

mod support;

use lab::control::Fault;
use lab::spec::LabSpec;
use lab::Lab;
use std::path::Path;
use std::process::Output;
use support::{api_flags, text, up};

/// Runs `certrotate <command>` against the lab, reaching the apiserver at LAB_APISERVER.
fn certrotate(lab: &Lab, command: &str, extra: &[&str]) -> Output {
    support::run(&[&[command], extra].concat(), &api_flags(lab))
}

/// Sets agentPoolProfiles[0].count, writing apimodel.json back as AKS Engine does.
fn set_agent_count(api_model: &Path, count: u64) {
    let text = std::fs::read_to_string(api_model).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["properties"]["agentPoolProfiles"][0]["count"] = count.into();
    let written = certrotate::model::apimodel::go_json_indent(&doc);
    // Only the count changed: same format, same key order.
    assert_eq!(text.lines().count(), written.lines().count());
    assert_eq!(text.lines().filter(|l| !l.contains("\"count\"")).collect::<Vec<_>>(), written.lines().filter(|l| !l.contains("\"count\"")).collect::<Vec<_>>());
    std::fs::write(api_model, written).unwrap();
}

fn status_nodes(out: &Output) -> Vec<String> {
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    let mut nodes: Vec<String> = rows.iter().map(|r| r["location"].as_str().unwrap().split(':').next().unwrap().to_string()).collect();
    nodes.dedup();
    nodes
}

#[test]
fn agents_registered_in_the_api_but_missing_from_the_api_model_are_planned() {
    let dir = tempfile::tempdir().unwrap();
    let lab = up(dir.path(), LabSpec { masters: 3, agents: 3, ..LabSpec::default() });
    let env = lab.env();
    let suffix = env["LAB_NAME_SUFFIX"].clone();
    let third = format!("k8s-agentpool1-{suffix}-2");
    let api_model = Path::new(&env["LAB_API_MODEL"]).to_path_buf();
    set_agent_count(&api_model, 2);

    // The API lists the third agent: status reads its certificates too.
    let out = certrotate(&lab, "status", &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let nodes = status_nodes(&out);
    assert!(nodes.contains(&third), "{nodes:?}\n{}", text(&out));
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 3 * 10 + 3 * 3, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("note: ") && l.contains(&third) && l.contains("not in the API model")), "{stderr}");

    // The API model's nodes are read while the API lists the nodes, and the agents it adds
    // after: an error for unreachable nodes still names every one of them.
    let first = format!("k8s-agentpool1-{suffix}-0");
    lab.fault(Fault::CutNetwork { node: first.clone() }).unwrap();
    lab.fault(Fault::CutNetwork { node: third.clone() }).unwrap();
    let out = certrotate(&lab, "status", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 node(s) could not be read") && stderr.contains(&first) && stderr.contains(&third), "{stderr}");
    lab.fault(Fault::RestoreNetwork { node: first }).unwrap();
    lab.fault(Fault::RestoreNetwork { node: third.clone() }).unwrap();

    // And plan replaces its certificates like any other agent's, with a finding naming it.
    let out = certrotate(&lab, "plan", &["--profile", "rotate-all", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let on_third: Vec<&serde_json::Value> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["target"].to_string().contains(&third))
        .flat_map(|t| t["certificates"].as_array().unwrap())
        .collect();
    let ids: Vec<&str> = on_third.iter().map(|c| c["certificate"].as_str().unwrap()).collect();
    assert_eq!(on_third.len(), 3, "ca, client and kubeletserver on {third}: {ids:?}");
    // Its ca and client are replaced; its kubelet serving certificate is left alone, as
    // aks-engine rotate-certs leaves it.
    for c in &on_third {
        let want_noop = c["certificate"].as_str().unwrap().starts_with("kubeletserver");
        assert_eq!(c["action"] == "noop", want_noop, "{c:#}");
    }
    let steps_on_third = json["graph"]["steps"].as_array().unwrap().iter().filter(|s| s["target"] == third.as_str()).count();
    assert!(steps_on_third > 0, "the graph installs the new certificates on {third}");
    let findings = json["findings"].as_array().unwrap();
    let from_api: Vec<&serde_json::Value> = findings.iter().filter(|f| f["code"] == "node-from-api").collect();
    assert_eq!(from_api.len(), 1, "{findings:#?}");
    assert_eq!((from_api[0]["node"].as_str(), from_api[0]["severity"].as_str()), (Some(third.as_str()), Some("info")));

    // Without the admin kubeconfig the API is not consulted: only the API model's agents.
    let kubeconfig = api_model.parent().unwrap().join("kubeconfig").join(format!("kubeconfig.{}.json", env.get("LAB_LOCATION").map(String::as_str).unwrap_or("local")));
    assert!(kubeconfig.is_file(), "{}", kubeconfig.display());
    let aside = dir.path().join("kubeconfig.aside.json");
    std::fs::rename(&kubeconfig, &aside).unwrap();
    let out = certrotate(&lab, "status", &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let nodes = status_nodes(&out);
    assert!(!nodes.contains(&third), "{nodes:?}");
    assert_eq!(nodes.len(), 5, "{nodes:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("note: ") && l.contains("not consulted")), "{stderr}");
    let out = certrotate(&lab, "plan", &["--profile", "rotate-all", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan_text = String::from_utf8_lossy(&out.stdout);
    assert!(!plan_text.contains(&third) && !plan_text.contains("node-from-api"), "{}", text(&out));
    std::fs::rename(&aside, &kubeconfig).unwrap();

    lab.down().unwrap();
}
