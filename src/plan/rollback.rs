//! The rollback graph: what `certrotate rollback` walks to put a cluster back on the
//! certificates an apply backed up, built from the applied plan's graph and what that
//! apply's journal says it reached, with the same step adder, gate kinds and profile timings
//! as a rotation. Pure data; the walker and the step runner do the rest.
//!
//! The order of effects: every backup is confirmed before anything changes; the masters'
//! certificates come back and etcd restarts on them (behind an etcd gate), then etcd's
//! front-proxy material and the control plane; then the agents, in the profile's lanes;
//! then the API model and the admin kubeconfig on the operator's machine; and once every
//! node is Ready again the autoscaler, the service-account tokens and the kube-system gate.

use crate::model::profile::{GateKind, Profile};
use crate::model::topology::{OsType, Topology};
use crate::pki::catalogue::{ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY};
use crate::plan::graph::{ActionGraph, GateCheck, Purpose, StepAdder};
use crate::plan::step::{Operation, Phase, Probe, StepParams};
use petgraph::graph::NodeIndex;

/// What the rollback is built from.
pub struct RollbackInput<'a> {
    /// The graph of the plan whose apply is rolled back.
    pub applied: &'a ActionGraph,
    /// Whether that apply's journal records a step as done.
    pub applied_done: &'a dyn Fn(&str) -> bool,
    pub topo: &'a Topology,
    /// The applied plan's profile: its gate timings and agent lanes.
    pub profile: &'a Profile,
    /// The local backup of the API model that apply made (`_rotate_certs_backup/<time>`).
    pub local_backup: String,
    /// The apply paused cluster-autoscaler and has not scaled it back.
    pub autoscaler_paused: bool,
}

/// The nodes the apply backed up and may have changed: those whose backup step (merged
/// into distributeCerts; a separate backupNodeCerts in older plans) its journal records.
/// A node the apply never reached was not changed and holds no backup of this plan.
pub fn touched_nodes(input: &RollbackInput<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for step in input.applied.steps() {
        let backs_up = matches!(step.operation, Operation::DistributeCerts | Operation::BackupNodeCerts);
        if let (true, Some(node)) = (backs_up, &step.target) {
            if (input.applied_done)(&step.id) && !out.contains(node) {
                out.push(node.clone());
            }
        }
    }
    // In the cluster's order (masters first), whatever order the plan listed them in.
    let order: Vec<&str> = input.topo.nodes().map(|n| n.name.as_str()).collect();
    out.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
    out
}

fn hint() -> &'static str {
    "fix the cause and run `certrotate rollback` again: it resumes from its journal (rollback.jsonl in the run directory)"
}

/// Builds the rollback of `input.applied`.
pub fn build(input: &RollbackInput<'_>) -> ActionGraph {
    let mut b = StepAdder::new(Purpose::Rollback, input.profile);
    let touched = touched_nodes(input);
    let topo = input.topo;
    let is_windows = |n: &str| topo.node(n).is_some_and(|x| x.os == OsType::Windows);
    let masters: Vec<String> = topo.masters.iter().map(|m| m.name.clone()).filter(|m| touched.contains(m)).collect();
    let agents: Vec<String> = topo.agents.iter().map(|a| a.name.clone()).filter(|a| touched.contains(a)).collect();
    let all_masters: Vec<String> = topo.masters.iter().map(|m| m.name.clone()).collect();

    // Preflight: every Linux node holds this plan's backup. A Windows agent's restore script
    // checks its own backup marker before it touches anything.
    let verified: Vec<NodeIndex> = touched
        .iter()
        .filter(|n| !is_windows(n))
        .map(|n| {
            b.action(
                Operation::VerifyBackup,
                Phase::Preflight,
                Some(n),
                format!("check that {n} holds the backup this plan's apply made (/etc/kubernetes/certs.bak, stamped)"),
                StepParams::default(),
                &[],
            )
        })
        .collect();

    // Masters together: their certificates, etcd on them, the etcd gate, then the control plane.
    let mut master_end: Vec<NodeIndex> = verified.clone();
    let mut etcd_gate: Vec<NodeIndex> = Vec::new();
    if !masters.is_empty() {
        let admin = format!("/home/{}/.kube/config", topo.admin_username);
        let mut etcd_restarts = Vec::new();
        for m in &masters {
            let restore = b.action(
                Operation::RestoreCerts,
                Phase::Masters,
                Some(m),
                format!("put /etc/kubernetes/certs and the admin kubeconfig back from the backup on {m}"),
                StepParams {
                    backup_from: Some("/etc/kubernetes/certs.bak".into()),
                    backup_to: Some("/etc/kubernetes/certs".into()),
                    admin_kubeconfig: Some(admin.clone()),
                    ..StepParams::default()
                },
                &[],
            );
            b.edges_from(&verified, restore);
            let restart = b.action(Operation::RestartEtcd, Phase::Masters, Some(m), format!("restart etcd on {m} with the restored certificates"), StepParams::default(), &[]);
            b.edge(restore, restart);
            etcd_restarts.push(restart);
        }
        let check = GateCheck {
            kind: GateKind::EtcdHealthy,
            probe: Probe::Api,
            nodes: all_masters.clone(),
            checks: "every etcd member answers healthy to the restored client certificate".into(),
            on_failure: format!("etcd did not come back with the restored certificates: compare `journalctl -u etcd` on the masters; {}", hint()),
            why_ssh: None,
        };
        etcd_gate = b.gate_chain(&etcd_restarts, Phase::Masters, "rollback", Some(&masters[0]), vec![check]);
        let mut before_control_plane = etcd_gate.clone();
        // etcd's /proxycerts back where the plan changed them, on the master that wrote them
        // (it keeps etcd's earlier values beside its backup).
        let proxy_writer = input.applied.steps().find(|s| s.operation == Operation::PutFrontProxyInEtcd).and_then(|s| s.target.clone());
        if let Some(writer) = proxy_writer.filter(|w| masters.contains(w)) {
            let put = b.action(
                Operation::RestoreFrontProxyInEtcd,
                Phase::FrontProxy,
                Some(&writer),
                "put the front-proxy CA, client certificate and key under /proxycerts in etcd back as they were".into(),
                StepParams { etcd_keys: vec![ETCD_PROXY_CA_KEY.into(), ETCD_PROXY_CERT_KEY.into(), ETCD_PROXY_KEY_KEY.into()], ..StepParams::default() },
                &etcd_gate,
            );
            b.edges_from(&etcd_gate, put);
            before_control_plane = vec![put];
        }
        master_end = masters
            .iter()
            .map(|m| {
                let restart = b.action(
                    Operation::RestartControlPlane,
                    Phase::Masters,
                    Some(m),
                    format!("restart kubelet and the control plane on {m} so they load the restored certificates"),
                    StepParams::default(),
                    &etcd_gate,
                );
                b.edges_from(&before_control_plane, restart);
                restart
            })
            .collect();
    }

    // Agents in the profile's lanes: agent k follows agent k - lanes.
    let lanes = input.profile.agents.parallelism.get().max(1) as usize;
    let mut lane_end: Vec<Option<NodeIndex>> = vec![None; lanes];
    for (k, a) in agents.iter().enumerate() {
        let restore = b.action(
            Operation::RestoreCerts,
            Phase::Agents,
            Some(a),
            if is_windows(a) {
                format!("put c:\\k back from its backup on {a} and restart kubelet and kubeproxy")
            } else {
                format!("put /etc/kubernetes/certs back from the backup on {a}")
            },
            StepParams::default(),
            &etcd_gate,
        );
        b.edges_from(&master_end, restore);
        b.edges_from(&verified, restore);
        if let Some(prev) = lane_end[k % lanes] {
            b.edge(prev, restore);
        }
        let mut last = restore;
        // The Windows restore restarts its services itself.
        if !is_windows(a) {
            let restart = b.action(Operation::RestartKubelet, Phase::Agents, Some(a), format!("restart kubelet on {a}"), StepParams::default(), &[]);
            b.edge(restore, restart);
            last = restart;
        }
        lane_end[k % lanes] = Some(last);
    }
    let mut nodes_end: Vec<NodeIndex> = lane_end.into_iter().flatten().collect();
    nodes_end.extend(master_end.iter().copied());

    // The operator's side last among the changes: a rollback stopped before it leaves the API
    // model describing what the nodes it has not restored still hold.
    let api_model = b.action(
        Operation::RestoreApiModel,
        Phase::Finish,
        None,
        format!("put apimodel.json and the admin kubeconfig back from {} (the rotated ones are kept)", input.local_backup),
        StepParams { local_backup: Some(input.local_backup.clone()), ..StepParams::default() },
        &etcd_gate,
    );
    b.edges_from(&nodes_end, api_model);

    // As after a rotation, the autoscaler and the workloads wait for every node to be Ready.
    let all_nodes: Vec<String> = topo.nodes().map(|n| n.name.clone()).collect();
    let nodes_ready = b.gate_chain(
        &[api_model],
        Phase::Finish,
        "rollback",
        None,
        vec![GateCheck {
            kind: GateKind::NodesReady,
            probe: Probe::Api,
            nodes: all_nodes,
            checks: "every node reports Ready with its kubelet using the restored certificates".into(),
            on_failure: format!("a node is not Ready: `journalctl -u kubelet` on it shows why; {}", hint()),
            why_ssh: None,
        }],
    );
    let mut before_final = nodes_ready.clone();
    if input.autoscaler_paused {
        let resume = b.action(
            Operation::ResumeAutoscaler,
            Phase::Finish,
            None,
            "scale cluster-autoscaler back to the replica count the apply paused it at".into(),
            StepParams::default(),
            &nodes_ready,
        );
        b.edges_from(&nodes_ready, resume);
        before_final.push(resume);
    }
    // Tokens signed with the rotated apiserver key are invalid again under the old one.
    if input.applied.steps().any(|s| s.operation == Operation::DeleteServiceAccountTokens) {
        let del = b.action(
            Operation::DeleteServiceAccountTokens,
            Phase::Workloads,
            None,
            "delete every service-account token secret so the controller manager recreates them with the restored apiserver key".into(),
            StepParams::default(),
            &nodes_ready,
        );
        b.edges_from(&nodes_ready, del);
        let roll = b.action(
            Operation::RolloutWorkloads,
            Phase::Workloads,
            None,
            "roll out every deployment and daemonset so pods pick up the recreated tokens and the restored CA".into(),
            StepParams::default(),
            &[],
        );
        b.edge(del, roll);
        before_final.push(roll);
    }
    let final_gate = b.gate(
        GateCheck {
            kind: GateKind::KubeSystemReady,
            probe: Probe::Api,
            nodes: Vec::new(),
            checks: "every pod in kube-system is Ready".into(),
            on_failure: format!(
                "some kube-system pods are not Ready: `kubectl -n kube-system get pods` shows which (certificates and API model are restored); {}",
                hint()
            ),
            why_ssh: None,
        },
        Phase::Finish,
        "rollback",
        None,
    );
    b.edges_from(&before_final, final_gate);
    b.g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use crate::model::apimodel::ApiModel;
    use crate::plan::file;
    use crate::plan::step::{Scope, Step, StepKind};

    fn topo(windows: bool) -> Topology {
        let windows_pool = if windows { r#",{"name":"winpool","count":1,"osType":"Windows"}"# } else { "" };
        let json = format!(
            r#"{{"apiVersion":"vlabs","location":"local","properties":{{
            "masterProfile":{{"count":3,"dnsPrefix":"kube-lab","firstConsecutiveStaticIP":"10.255.255.5"}},
            "agentPoolProfiles":[{{"name":"agentpool1","count":2}}{windows_pool}],
            "linuxProfile":{{"adminUsername":"azureuser"}},
            "customCloudProfile":{{"environment":{{"resourceManagerVMDNSSuffix":"cloudapp.azurestack.external"}}}}}}}}"#
        );
        let m = ApiModel::parse(SourceFile::from_text("apimodel.json", json)).unwrap();
        Topology::derive_with_suffix(&m, "12345678").unwrap()
    }

    fn profile(agent_lanes: u32) -> Profile {
        let shipped = Profile::shipped_source("rotate-all").unwrap();
        assert!(shipped.text.contains("parallelism: 3"), "the shipped rotate-all sets three agent lanes");
        let text = shipped.text.replace("parallelism: 3", &format!("parallelism: {agent_lanes}"));
        Profile::from_source(&SourceFile::from_text("rotate-all.yaml", text)).unwrap()
    }

    fn step(op: Operation, target: Option<&str>) -> Step {
        Step {
            id: match target {
                Some(t) => format!("{op}@{t}"),
                None => op.to_string(),
            },
            kind: StepKind::Action,
            operation: op,
            phase: Phase::Prepare,
            scope: if target.is_some() { Scope::Node } else { Scope::Cluster },
            target: target.map(str::to_string),
            description: String::new(),
            params: StepParams::default(),
            requires: Vec::new(),
            gate: None,
        }
    }

    /// An applied plan that distributed to `nodes`, optionally with the front proxy in etcd
    /// (written from the first master) and the token renewal.
    fn applied(nodes: &[String], proxy: bool, tokens: bool) -> ActionGraph {
        let mut steps: Vec<Step> = nodes.iter().map(|n| step(Operation::DistributeCerts, Some(n))).collect();
        if proxy {
            steps.push(step(Operation::PutFrontProxyInEtcd, Some("k8s-master-12345678-0")));
        }
        if tokens {
            steps.push(step(Operation::DeleteServiceAccountTokens, None));
        }
        ActionGraph::from_saved(&file::ActionGraph { steps, edges: Vec::new() }).unwrap()
    }

    fn names(t: &Topology) -> Vec<String> {
        t.nodes().map(|n| n.name.clone()).collect()
    }

    fn build_with(t: &Topology, p: &Profile, g: &ActionGraph, done: &dyn Fn(&str) -> bool, paused: bool) -> ActionGraph {
        let input = RollbackInput { applied: g, applied_done: done, topo: t, profile: p, local_backup: "/m/_rotate_certs_backup/20260101T000000Z".into(), autoscaler_paused: paused };
        let graph = build(&input);
        graph.validate().expect("a valid rollback graph");
        graph
    }

    fn ids(g: &ActionGraph, op: Operation) -> Vec<String> {
        let mut v: Vec<String> = g.steps().filter(|s| s.operation == op).map(|s| s.id.clone()).collect();
        v.sort();
        v
    }

    const M0: &str = "k8s-master-12345678-0";
    const A0: &str = "k8s-agentpool1-12345678-0";
    const A1: &str = "k8s-agentpool1-12345678-1";

    #[test]
    fn every_backup_is_confirmed_before_anything_changes() {
        let t = topo(false);
        let (p, g) = (profile(3), applied(&names(&t), true, true));
        let r = build_with(&t, &p, &g, &|_| true, true);
        let verifies = ids(&r, Operation::VerifyBackup);
        assert_eq!(verifies.len(), 5, "one per touched node: {verifies:?}");
        for s in r.steps() {
            assert_eq!(s.operation == Operation::VerifyBackup, s.phase == Phase::Preflight, "{}", s.id);
            if s.operation.is_disruptive() {
                for v in &verifies {
                    assert!(r.precedes(v, &s.id), "{v} must come before {}", s.id);
                }
            }
        }
    }

    #[test]
    fn masters_restore_then_etcd_then_its_gate_then_front_proxy_then_control_plane() {
        let t = topo(false);
        let (p, g) = (profile(3), applied(&names(&t), true, false));
        let r = build_with(&t, &p, &g, &|_| true, false);
        let gate = "etcdHealthy@rollback";
        let spec = r.step(gate).and_then(|s| s.gate.clone()).expect("an etcd gate");
        assert_eq!(spec.nodes.len(), 3, "it checks every member");
        assert_eq!(spec.timeout, p.gates.timing(GateKind::EtcdHealthy).timeout, "the profile's timing, as in apply");
        assert_eq!(r.step(gate).unwrap().target.as_deref(), Some(M0));
        let proxy = format!("restoreFrontProxyInEtcd@{M0}");
        assert_eq!(ids(&r, Operation::RestoreFrontProxyInEtcd), vec![proxy.clone()], "once, where it was written");
        assert!(r.precedes(gate, &proxy));
        for m in t.masters.iter().map(|m| &m.name) {
            assert!(r.precedes(&format!("restoreCerts@{m}"), &format!("restartEtcd@{m}")));
            assert!(r.precedes(&format!("restartEtcd@{m}"), gate));
            assert!(r.precedes(&proxy, &format!("restartControlPlane@{m}")));
            assert_eq!(r.step(&format!("restoreCerts@{m}")).unwrap().params.admin_kubeconfig.as_deref(), Some("/home/azureuser/.kube/config"));
        }
        // Without a front-proxy change etcd is left alone.
        let r = build_with(&t, &p, &applied(&names(&t), false, false), &|_| true, false);
        assert!(ids(&r, Operation::RestoreFrontProxyInEtcd).is_empty());
        assert!(r.precedes(gate, &format!("restartControlPlane@{M0}")));
    }

    #[test]
    fn agents_follow_the_control_plane_in_the_profile_lanes() {
        let t = topo(false);
        let g = applied(&names(&t), false, false);
        let r = build_with(&t, &profile(1), &g, &|_| true, false);
        for a in [A0, A1] {
            assert!(r.precedes(&format!("restartControlPlane@{M0}"), &format!("restoreCerts@{a}")));
            assert!(r.precedes(&format!("restoreCerts@{a}"), &format!("restartKubelet@{a}")));
            assert_eq!(r.step(&format!("restoreCerts@{a}")).unwrap().phase, Phase::Agents);
        }
        assert!(r.precedes(&format!("restartKubelet@{A0}"), &format!("restoreCerts@{A1}")), "one lane: one agent after the other");
        let r = build_with(&t, &profile(2), &g, &|_| true, false);
        assert!(!r.precedes(&format!("restartKubelet@{A0}"), &format!("restoreCerts@{A1}")), "two lanes: side by side");
    }

    #[test]
    fn a_windows_agent_is_restored_by_its_own_script_without_a_linux_backup_check() {
        let t = topo(true);
        let win = t.agents.iter().find(|a| a.os == OsType::Windows).unwrap().name.clone();
        let r = build_with(&t, &profile(3), &applied(&names(&t), false, false), &|_| true, false);
        assert!(r.step(&format!("restoreCerts@{win}")).is_some());
        assert!(r.step(&format!("verifyBackup@{win}")).is_none());
        assert!(r.step(&format!("restartKubelet@{win}")).is_none(), "its restore restarts kubelet and kubeproxy");
        assert!(r.precedes(&format!("restoreCerts@{win}"), "restoreApiModel"));
    }

    #[test]
    fn the_api_model_comes_back_after_every_node_then_the_gates_and_the_workloads() {
        let t = topo(false);
        let r = build_with(&t, &profile(3), &applied(&names(&t), true, true), &|_| true, true);
        let api = r.step("restoreApiModel").unwrap();
        assert_eq!((api.scope, api.phase), (Scope::Local, Phase::Finish));
        assert_eq!(api.params.local_backup.as_deref(), Some("/m/_rotate_certs_backup/20260101T000000Z"));
        for a in [A0, A1] {
            assert!(r.precedes(&format!("restartKubelet@{a}"), "restoreApiModel"));
        }
        assert!(r.precedes(&format!("restartControlPlane@{M0}"), "restoreApiModel"));
        let ready = r.step("nodesReady@rollback").unwrap();
        assert_eq!(ready.gate.as_ref().unwrap().nodes.len(), 5);
        assert!(r.precedes("restoreApiModel", "nodesReady@rollback"));
        for after in ["resumeAutoscaler", "deleteServiceAccountTokens", "rolloutWorkloads"] {
            assert!(r.precedes("nodesReady@rollback", after), "{after} waits for every node");
            assert!(r.precedes(after, "kubeSystemReady@rollback"), "{after} before the last gate");
        }
        assert!(r.precedes("deleteServiceAccountTokens", "rolloutWorkloads"));
        assert_eq!(r.successors("kubeSystemReady@rollback"), Vec::<&str>::new(), "the last step");
        // Nothing paused, no key change: neither step.
        let r = build_with(&t, &profile(3), &applied(&names(&t), true, false), &|_| true, false);
        assert!(r.step("resumeAutoscaler").is_none() && r.step("deleteServiceAccountTokens").is_none() && r.step("rolloutWorkloads").is_none());
        assert!(r.precedes("nodesReady@rollback", "kubeSystemReady@rollback"));
    }

    #[test]
    fn only_the_nodes_the_apply_backed_up_are_restored() {
        let t = topo(false);
        let g = applied(&names(&t), false, false);
        // The apply stopped after distributing to the first master and the first agent.
        let done = |id: &str| id == format!("distributeCerts@{M0}") || id == format!("distributeCerts@{A0}");
        let r = build_with(&t, &profile(3), &g, &done, false);
        assert_eq!(ids(&r, Operation::RestoreCerts), vec![format!("restoreCerts@{A0}"), format!("restoreCerts@{M0}")]);
        assert_eq!(ids(&r, Operation::VerifyBackup).len(), 2);
        // The etcd gate still checks every member, from the restored master.
        assert_eq!(r.step("etcdHealthy@rollback").unwrap().gate.as_ref().unwrap().nodes.len(), 3);
        // An apply that reached no node: the API model and the gates only.
        let r = build_with(&t, &profile(3), &g, &|_| false, false);
        let mut all: Vec<&str> = r.steps().map(|s| s.id.as_str()).collect();
        all.sort();
        assert_eq!(all, vec!["kubeSystemReady@rollback", "nodesReady@rollback", "restoreApiModel"]);
    }

    #[test]
    fn the_same_inputs_give_the_same_ids_so_a_second_run_can_resume() {
        let t = topo(true);
        let g = applied(&names(&t), true, true);
        let a = build_with(&t, &profile(2), &g, &|_| true, true).to_saved();
        let b = build_with(&t, &profile(2), &g, &|_| true, true).to_saved();
        assert_eq!(a, b);
    }
}
