//! The action graph on plain data: for every shipped profile and cluster shape the graph is
//! acyclic and every gate precedes what depends on it; the strategy follows the CA decision;
//! an expired cluster gets SSH-level preflight gates; agent parallelism holds when the graph
//! is walked as fast as it allows; and a saved graph comes back identical, while a saved
//! graph missing a gate edge is refused.

mod plan_fixture;

use certrotate::model::profile::GateKind;
use certrotate::model::topology::Role;
use certrotate::plan::file::{DowntimeKind, StepKind};
use certrotate::plan::step::Phase;
use certrotate::plan::graph::{self, ActionGraph, GraphError, MasterPlan, Operation, Probe};
use plan_fixture::{cluster, shipped, Age};
use std::collections::HashMap;

const PROFILES: [&str; 3] = ["rotate-all", "renew-expiring", "rotate-ca"];
const SHAPES: [(usize, usize); 3] = [(1, 0), (3, 2), (5, 50)];
const AGES: [Age; 3] = [Age::Healthy, Age::ExpiringInDays(20), Age::ExpiredDaysAgo(3)];

/// The phase rules apply used before steps carried their phase: guessed from the operation
/// name, the id's scope and whether the target is a master. The graph builder now writes the
/// phase into each step; this oracle checks it kept every step where apply showed it.
fn phase_by_old_rules(id: &str, op: &str, is_master_target: bool) -> Phase {
    fn of_operation(op: &str, is_master_target: bool) -> Phase {
        match op {
            "backupApiModel" | "issuePki" | "pauseAutoscaler" | "distributeCerts" | "backupNodeCerts" => Phase::Prepare,
            "putFrontProxyInEtcd" | "installFrontProxy" | "restartApiserver" => Phase::FrontProxy,
            "deleteServiceAccountTokens" | "rolloutWorkloads" | "kubeSystemReady" => Phase::Workloads,
            "updateApiModel" | "resumeAutoscaler" | "cleanup" => Phase::Finish,
            "etcdHealthy" | "apiserverServesNewCert" | "controlPlanePodsReady" => Phase::Masters,
            _ if is_master_target => Phase::Masters,
            _ => Phase::Agents,
        }
    }
    let scope = id.split_once('@').map(|(_, s)| s).unwrap_or("");
    if scope == "preflight" {
        Phase::Preflight
    } else if id.contains("front-proxy@") {
        Phase::FrontProxy
    } else if scope == "masters" {
        of_operation(op, true)
    } else if scope == "agents" {
        of_operation(op, false)
    } else {
        of_operation(op, is_master_target)
    }
}

fn ids_of(g: &ActionGraph, op: Operation) -> Vec<&str> {
    g.steps().filter(|s| s.operation == op).map(|s| s.id.as_str()).collect()
}

#[test]
fn every_profile_and_shape_gives_a_valid_graph_with_the_expected_strategy() {
    for (m, a) in SHAPES {
        for age in AGES {
            let c = cluster(m, a, age);
            for name in PROFILES {
                let p = shipped(name);
                let d = c.diff(&p);
                let g = graph::build(&d, &c.topo, &p);
                let label = format!("{name} on {m}+{a} {age:?}");
                g.validate().unwrap_or_else(|e| panic!("{label}: {e}"));
                let order = g.topological_order().unwrap();
                assert_eq!(order.len(), g.len(), "{label}");
                let position: HashMap<&str, usize> = order.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
                for step in g.steps() {
                    for pred in g.predecessors(&step.id) {
                        assert!(position[pred] < position[step.id.as_str()], "{label}: {pred} after {}", step.id);
                    }
                }
                for s in g.steps() {
                    let is_master = s.target.as_deref().and_then(|t| c.topo.node(t)).is_some_and(|n| n.role == Role::Master);
                    assert_eq!(s.phase, phase_by_old_rules(&s.id, s.operation.as_str(), is_master), "{label}: phase of {}", s.id);
                }
                let no_changes = name == "renew-expiring" && age == Age::Healthy;
                assert_eq!(g.is_empty(), no_changes, "{label}");
                if no_changes {
                    continue;
                }
                // Every gate carries the profile's timing.
                for s in g.steps().filter(|s| s.operation.is_gate()) {
                    let gate = s.gate.as_ref().unwrap();
                    let timing = p.gates.timing(s.gate_kind().unwrap());
                    assert_eq!((gate.timeout, gate.interval), (timing.timeout, timing.interval), "{label}: {}", s.id);
                    assert!(!gate.on_failure.is_empty() && !gate.checks.is_empty());
                }
                let expected_all_at_once = name != "renew-expiring" || matches!(age, Age::ExpiredDaysAgo(_));
                match (&g.masters, expected_all_at_once) {
                    (MasterPlan::AllAtOnce { .. }, true) => {
                        assert_eq!(ids_of(&g, Operation::RebootVm).len(), m, "{label}");
                        assert_eq!(g.downtime.kind, DowntimeKind::Outage, "{label}");
                    }
                    (MasterPlan::Rolling, false) => {
                        assert!(ids_of(&g, Operation::RebootVm).is_empty(), "{label}");
                        let expected = if m == 1 { DowntimeKind::Outage } else { DowntimeKind::None };
                        assert_eq!(g.downtime.kind, expected, "{label}: {}", g.downtime.explanation);
                    }
                    (other, _) => panic!("{label}: masters {other:?}"),
                }
                // Agents: one install per changed agent, each followed by its own Ready gate.
                let agent_installs = g.steps().filter(|s| s.operation == Operation::InstallCerts && s.target.as_deref().is_some_and(|t| t.contains("agentpool"))).count();
                assert_eq!(agent_installs, a, "{label}");
                // The API model is written, and the autoscaler resumes, once every gate about
                // the nodes passed (etcd, apiservers, control plane, every node Ready), without
                // waiting for the final kube-system gate, which an unrelated addon can hold up.
                let final_gate = format!("{}@final", GateKind::KubeSystemReady.as_str());
                for s in g.steps().filter(|s| s.operation.is_gate() && s.id != final_gate) {
                    if g.step("updateApiModel").is_some() {
                        assert!(g.precedes(&s.id, "updateApiModel"), "{label}: {} must precede updateApiModel", s.id);
                    }
                    if s.operation == Operation::Gate(GateKind::NodesReady) {
                        assert!(g.precedes(&s.id, "resumeAutoscaler"), "{label}: {} must precede resumeAutoscaler", s.id);
                    }
                }
                assert!(!g.precedes(&final_gate, "updateApiModel") && !g.precedes(&final_gate, "resumeAutoscaler"), "{label}");
                for step in ["updateApiModel", "resumeAutoscaler", final_gate.as_str()] {
                    if g.step(step).is_some() {
                        assert!(g.precedes(step, "cleanup"), "{label}: {step} before cleanup");
                    }
                }
                assert!(g.precedes("pauseAutoscaler", "resumeAutoscaler"));
                // Each node's backup and staging are one step, before anything is installed there.
                assert!(ids_of(&g, Operation::BackupNodeCerts).is_empty(), "{label}");
                for s in g.steps().filter(|s| s.operation == Operation::InstallCerts) {
                    let node = s.target.as_deref().unwrap();
                    assert!(g.precedes(&format!("distributeCerts@{node}"), &s.id), "{label}: {}", s.id);
                }
                // Service-account tokens are renewed only when the apiserver key changes (a new
                // CA); a reissue under the kept CA keeps the key, so tokens stay valid.
                if g.step("deleteServiceAccountTokens").is_some() {
                    assert!(g.precedes("deleteServiceAccountTokens", "rolloutWorkloads"), "{label}");
                }
                if matches!(g.masters, MasterPlan::Rolling) {
                    assert!(g.step("deleteServiceAccountTokens").is_none(), "{label}: a rolling renewal keeps the apiserver key");
                }
            }
        }
    }
}

#[test]
fn rolling_masters_wait_for_the_previous_master_gates() {
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    let p = shipped("renew-expiring");
    let g = graph::build(&c.diff(&p), &c.topo, &p);
    assert_eq!(g.masters, MasterPlan::Rolling);
    assert!(g.downtime.explanation.contains("one at a time"), "{}", g.downtime.explanation);
    for i in 1..3 {
        let prev = c.master(i - 1);
        let this = format!("installCerts@{}", c.master(i));
        for gate in [GateKind::EtcdHealthy, GateKind::ApiserverServesNewCert, GateKind::ControlPlanePodsReady] {
            let id = format!("{}@{prev}", gate.as_str());
            assert!(g.precedes(&id, &this), "{id} must precede {this}");
            assert!(g.step(&this).unwrap().requires.contains(&format!("{}@{prev}", GateKind::ControlPlanePodsReady.as_str())));
        }
        // ...and never the other way round.
        assert!(!g.precedes(&this, &format!("installCerts@{prev}")));
    }
    // Agents start only when every master is done.
    let last = format!("{}@{}", GateKind::ControlPlanePodsReady.as_str(), c.master(2));
    assert!(g.precedes(&last, &format!("installCerts@{}", c.agent(0))));
    // Front-proxy goes to etcd once and then to each master in turn.
    assert_eq!(ids_of(&g, Operation::PutFrontProxyInEtcd).len(), 1);
    assert!(g.precedes(&format!("restartApiserver@{}", c.master(0)), &format!("installFrontProxy@{}", c.master(1))));
    // client.crt is renewed on every node, so kubelet's rotated pem goes on each of them,
    // after the install and before that node's restart.
    assert_eq!(ids_of(&g, Operation::RemoveKubeletClientCurrent).len(), 5);
    for i in 0..3 {
        let m = c.master(i);
        assert!(g.precedes(&format!("installCerts@{m}"), &format!("removeKubeletClientCurrent@{m}")));
        assert!(g.precedes(&format!("removeKubeletClientCurrent@{m}"), &format!("restartControlPlane@{m}")));
    }
}

#[test]
fn a_new_ca_changes_masters_together_and_says_the_api_is_down() {
    let c = cluster(3, 2, Age::Healthy);
    let p = shipped("rotate-ca");
    let d = c.diff(&p);
    let g = graph::build(&d, &c.topo, &p);
    let MasterPlan::AllAtOnce { why } = &g.masters else { panic!("{:?}", g.masters) };
    assert!(why.contains("new cluster CA"));
    assert_eq!(g.downtime.kind, DowntimeKind::Outage);
    assert!(g.downtime.explanation.contains("API is down"));
    // Every master is installed before any reboots.
    for i in 0..3 {
        for j in 0..3 {
            assert!(g.precedes(&format!("installCerts@{}", c.master(i)), &format!("rebootVm@{}", c.master(j))));
        }
    }
    // kubelet-client-current.pem goes on every node that has it, before kubelet restarts.
    assert_eq!(ids_of(&g, Operation::RemoveKubeletClientCurrent).len(), 5);
    assert!(g.precedes(&format!("removeKubeletClientCurrent@{}", c.agent(0)), &format!("restartKubelet@{}", c.agent(0))));
    assert!(g.precedes(&format!("removeKubeletClientCurrent@{}", c.master(0)), &format!("rebootVm@{}", c.master(0))));
}

#[test]
fn an_expired_cluster_checks_over_ssh_before_rotation() {
    let c = cluster(3, 2, Age::ExpiredDaysAgo(3));
    let p = shipped("renew-expiring");
    let g = graph::build(&c.diff(&p), &c.topo, &p);
    assert!(matches!(&g.masters, MasterPlan::AllAtOnce { why } if why.contains("already expired")));
    for kind in [GateKind::EtcdHealthy, GateKind::NodesReady, GateKind::ControlPlanePodsReady] {
        let gate = g.step(&format!("{}@preflight", kind.as_str())).unwrap().gate.clone().unwrap();
        assert_eq!(gate.probe, Probe::Ssh, "{kind:?}");
        assert!(gate.why_ssh.as_deref().unwrap().contains("cannot answer before rotation"));
    }
    assert!(g.notes.iter().any(|n| n.code == "ssh-level-gates"));
    // The autoscaler can only be paused once the API is back.
    let last_master_gate = format!("{}@masters", GateKind::ControlPlanePodsReady.as_str());
    assert!(g.precedes(&last_master_gate, "pauseAutoscaler"));
    assert!(g.downtime.explanation.contains("already down"));

    let healthy = cluster(3, 2, Age::ExpiringInDays(20));
    let g = graph::build(&healthy.diff(&p), &healthy.topo, &p);
    let gate = g.step(&format!("{}@preflight", GateKind::NodesReady.as_str())).unwrap().gate.clone().unwrap();
    assert_eq!(gate.probe, Probe::Api);
    // On a healthy cluster the autoscaler is paused once the preflight passed, and before any
    // change: a failed preflight leaves the cluster as it was.
    assert!(g.precedes(&format!("{}@preflight", GateKind::NodesReady.as_str()), "pauseAutoscaler"));
    for m in 0..3 {
        assert!(g.precedes("pauseAutoscaler", &format!("installCerts@{}", healthy.master(m))));
    }
}

/// Walks the graph as fast as its edges allow (every step takes one tick, unlimited workers)
/// and returns the largest number of agents between install and their Ready gate at once.
fn max_agents_in_flight(g: &ActionGraph) -> usize {
    let mut finish: HashMap<String, usize> = HashMap::new();
    for step in g.topological_order().unwrap() {
        let start = g.predecessors(&step.id).iter().map(|p| finish[*p]).max().unwrap_or(0);
        finish.insert(step.id.clone(), start + 1);
    }
    let agents: Vec<String> = g
        .steps()
        .filter(|s| s.operation == Operation::InstallCerts && s.target.as_deref().is_some_and(|t| t.contains("agentpool")))
        .filter_map(|s| s.target.clone())
        .collect();
    let spans: Vec<(usize, usize)> = agents
        .iter()
        .map(|a| (finish[&format!("installCerts@{a}")] - 1, finish[&format!("{}@{a}", GateKind::NodesReady.as_str())]))
        .collect();
    let horizon = spans.iter().map(|s| s.1).max().unwrap_or(0);
    (0..horizon).map(|t| spans.iter().filter(|(s, e)| *s <= t && t < *e).count()).max().unwrap_or(0)
}

#[test]
fn agents_change_at_most_parallelism_at_a_time() {
    let c = cluster(3, 50, Age::ExpiringInDays(20));
    for (name, parallelism) in [("renew-expiring", 2), ("rotate-all", 3)] {
        let p = shipped(name);
        assert_eq!(p.agents.parallelism.get(), parallelism);
        let g = graph::build(&c.diff(&p), &c.topo, &p);
        assert_eq!(max_agents_in_flight(&g), parallelism as usize, "{name}");
    }
}

#[test]
fn saved_graph_round_trips_and_passes_the_plan_file_check() {
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    for name in PROFILES {
        let p = shipped(name);
        let g = graph::build(&c.diff(&p), &c.topo, &p);
        let saved = g.to_saved();
        saved.check().unwrap();
        assert_eq!(saved.steps.len(), g.len());
        assert_eq!(saved.steps.iter().filter(|n| n.kind == StepKind::Gate).count(), g.steps().filter(|s| s.gate.is_some()).count());
        assert!(saved.steps.iter().filter(|n| n.kind == StepKind::Gate).all(|n| n.gate.is_some()));
        let back = ActionGraph::from_saved(&saved).unwrap();
        back.validate().unwrap();
        assert_eq!(back.to_saved(), saved, "{name}");
        for step in g.steps() {
            assert_eq!(back.step(&step.id), Some(step));
        }
    }
}

#[test]
fn a_saved_graph_missing_a_gate_edge_or_with_a_cycle_is_refused() {
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    let p = shipped("renew-expiring");
    let g = graph::build(&c.diff(&p), &c.topo, &p);
    let mut saved = g.to_saved();
    let gate = format!("{}@{}", GateKind::ControlPlanePodsReady.as_str(), c.master(0));
    let install = format!("installCerts@{}", c.master(1));
    let before = saved.edges.len();
    saved.edges.retain(|e| !(e.from == gate && e.to == install));
    assert_eq!(saved.edges.len(), before - 1);
    let err = ActionGraph::from_saved(&saved).unwrap().validate().unwrap_err();
    assert_eq!(err, GraphError::GateNotBefore { gate: gate.clone(), step: install.clone() });

    let mut cyclic = g.to_saved();
    cyclic.edges.push(certrotate::plan::file::GraphEdge { from: "cleanup".into(), to: "backupApiModel".into() });
    assert!(matches!(ActionGraph::from_saved(&cyclic).unwrap().validate(), Err(GraphError::Cycle(_))));

    // A gate stripped of its settings, and an operation that does not exist.
    let mut inconsistent = g.to_saved();
    let gate_step = inconsistent.steps.iter_mut().find(|s| s.kind == StepKind::Gate).unwrap();
    gate_step.gate = None;
    assert!(matches!(ActionGraph::from_saved(&inconsistent), Err(GraphError::InconsistentStep(_))));
    let text = serde_yaml::to_string(&g.to_saved()).unwrap();
    assert!(text.contains("operation: issuePki"), "{text}");
    let unknown = text.replace("operation: issuePki", "operation: formatDisk");
    let err = serde_yaml::from_str::<certrotate::plan::file::ActionGraph>(&unknown).unwrap_err().to_string();
    assert!(err.contains("formatDisk"), "{err}");
}
