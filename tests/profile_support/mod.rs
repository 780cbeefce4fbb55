//! A realistic saved plan for the plan-file and schema tests: a three-master cluster under
//! the shipped rotate-ca profile, with observations, changes, findings and a small graph.
//! Its creation time is fixed so digests are the same on every run.

use certrotate::model::profile::{CertId, Duration, GateKind, Profile};
use certrotate::plan::file::*;
use certrotate::plan::step::{GateSpec, Operation, Phase, Probe, Scope, StepParams};
use std::collections::BTreeMap;

fn digest(label: &str) -> Sha256Digest {
    Sha256Digest::of_bytes(label.as_bytes())
}

pub fn sample_plan() -> PlanFile {
    let profile = Profile::load("rotate-ca").expect("the shipped rotate-ca profile loads");
    let cluster = ClusterIdentity {
        dns_prefix: "kube-ash".into(),
        location: "local".into(),
        name_suffix: "31415926".into(),
        apiserver_fqdn: "kube-ash.local.cloudapp.azurestack.external".into(),
        resource_group: Some("kube-ash-rg".into()),
        subscription_id: None,
        api_model: FileDigest { path: "_output/kube-ash/apimodel.json".into(), digest: digest("apimodel") },
    };
    let mut plan = PlanFile::new(cluster, profile);
    plan.created_at = time::macros::datetime!(2026-11-27 12:00:00 UTC);

    for i in 0..3 {
        let mut files = BTreeMap::new();
        files.insert("/etc/kubernetes/certs/ca.crt".into(), ObservedItem::Content { digest: digest("ca.crt") });
        files.insert(
            "/etc/kubernetes/certs/apiserver.key".into(),
            ObservedItem::PrivateKey { public_key_fingerprint: digest(&format!("apiserver.pub{i}")) },
        );
        files.insert("/var/lib/kubelet/pki/kubelet-client-current.pem".into(), ObservedItem::Missing {});
        plan.observed.nodes.push(ObservedNode { node: format!("k8s-master-31415926-{i}"), role: NodeRole::Master, files });
    }
    plan.observed
        .etcd
        .insert("/proxycerts/proxy-client-key-file".into(), ObservedItem::PrivateKey { public_key_fingerprint: digest("proxy.pub") });

    let mut before = BTreeMap::new();
    before.insert("subject".into(), AttrValue::from("CN=apiserver"));
    before.insert("notAfter".into(), AttrValue::from("2026-12-01T00:00:00Z"));
    before.insert("dnsSans".into(), AttrValue::List(vec!["kube-ash.local.cloudapp.azurestack.external".into(), "kubernetes".into()]));
    before.insert("keyBits".into(), AttrValue::Integer(2048));
    let mut after = before.clone();
    after.insert("notAfter".into(), AttrValue::Unknown);
    after.insert("serial".into(), AttrValue::Unknown);
    after.insert("isCa".into(), AttrValue::Flag(false));
    plan.changes.push(TargetChanges {
        target: ChangeTarget::Node { name: "k8s-master-31415926-0".into(), role: NodeRole::Master },
        certificates: vec![
            CertificateChange {
                certificate: CertId::Apiserver,
                location: "/etc/kubernetes/certs/apiserver.crt".into(),
                action: ChangeAction::Replace,
                reasons: vec![Reason { code: ReasonCode::SignerReplaced, message: "the cluster CA is replaced (policy always)".into() }],
                before,
                after,
            },
            CertificateChange {
                certificate: CertId::KubeletServer,
                location: "/etc/kubernetes/certs/kubeletserver.crt".into(),
                action: ChangeAction::Noop,
                reasons: vec![Reason { code: ReasonCode::OutOfScope, message: "kubeletserver is not in scope".into() }],
                before: BTreeMap::new(),
                after: BTreeMap::new(),
            },
        ],
    });
    plan.changes.push(TargetChanges {
        target: ChangeTarget::ApiModel {},
        certificates: vec![CertificateChange {
            certificate: CertId::EtcdPeer,
            location: "/properties/certificateProfile/etcdPeerCertificates/1".into(),
            action: ChangeAction::Replace,
            reasons: vec![Reason { code: ReasonCode::SignerReplaced, message: "the cluster CA is replaced".into() }],
            before: BTreeMap::new(),
            after: BTreeMap::new(),
        }],
    });
    plan.findings.push(Finding {
        severity: Severity::Warning,
        code: "drift-between-nodes".into(),
        node: Some("k8s-master-31415926-2".into()),
        path: Some("/etc/kubernetes/certs/apiserver.key".into()),
        message: "apiserver.key differs from the other masters".into(),
    });

    let step = |id: &str, operation: Operation, phase: Phase, target: Option<&str>| Step {
        id: id.into(),
        kind: operation.kind(),
        operation,
        phase,
        scope: if target.is_some() { Scope::Node } else { Scope::Local },
        target: target.map(String::from),
        description: format!("{operation} {}", target.unwrap_or("here")),
        params: StepParams::default(),
        requires: Vec::new(),
        gate: None,
    };
    let mut backup = step("backup/k8s-master-31415926-0", Operation::BackupNodeCerts, Phase::Prepare, Some("k8s-master-31415926-0"));
    backup.params.backup_to = Some("/etc/kubernetes/certs.bak".into());
    let timing = plan.profile.gates.timing(GateKind::EtcdHealthy);
    let mut gate = step("gate/etcdHealthy", Operation::Gate(GateKind::EtcdHealthy), Phase::Masters, None);
    gate.scope = Scope::Cluster;
    gate.gate = Some(GateSpec {
        probe: Probe::Api,
        nodes: Vec::new(),
        timeout: timing.timeout,
        interval: timing.interval,
        checks: "every etcd member answers healthy".into(),
        on_failure: "look at etcd's journal on the masters".into(),
        why_ssh: None,
    });
    let mut issue = step("issue/pki", Operation::IssuePki, Phase::Prepare, None);
    issue.params.certificates = vec!["apiserver".into()];
    let mut install = step("install/k8s-master-31415926-0", Operation::InstallCerts, Phase::Masters, Some("k8s-master-31415926-0"));
    install.params.certificates = vec!["apiserver".into()];
    plan.graph.steps = vec![issue, backup, install, gate];
    let edge = |a: &str, b: &str| GraphEdge { from: a.into(), to: b.into() };
    plan.graph.edges = vec![
        edge("issue/pki", "install/k8s-master-31415926-0"),
        edge("backup/k8s-master-31415926-0", "install/k8s-master-31415926-0"),
        edge("install/k8s-master-31415926-0", "gate/etcdHealthy"),
    ];
    plan.summary = Summary::tally(&plan.changes, &plan.graph, &plan.findings);
    plan.expected_api_downtime = ApiDowntime {
        kind: DowntimeKind::Outage,
        estimate: Some(Duration::minutes(15)),
        explanation: "the cluster CA changes, so every master restarts at the same time".into(),
    };
    plan.seal();
    plan
}
