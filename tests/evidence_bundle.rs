//! The evidence bundle from what a run left (plain data, no cluster): its layout, a manifest
//! that `sha256sum -c` accepts, the summary an auditor reads first, a bundle refused when
//! anything in it would carry a secret, and both forms on disk (directory and .tar.gz, read
//! back with the real tar) written once and never over an earlier bundle.

mod profile_support;

use certrotate::apply::journal::{Approval, ApprovalHow, JournalEntry};
use certrotate::apply::store::RunState;
use certrotate::flow::evidence::{self, Gathered, NodeRecord, RunRecord, StatusAfter, UnreadNode, MANIFEST};
use certrotate::flow::expiry::ExpiryRow;
use profile_support::sample_plan;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn gathered() -> Gathered {
    let plan = sample_plan();
    let digest = plan.digest.as_ref().unwrap().to_string();
    let at = time::macros::datetime!(2026-12-07 02:10 UTC);
    let approval = Approval { approved_by: "Jane Doe".into(), how: ApprovalHow::SavedPlan, plan_digest: digest.clone(), at };
    let steps_done: Vec<JournalEntry> = plan.graph.steps.iter().map(|s| JournalEntry { step: s.id.clone(), at, secs: 1.5, note: None }).collect();
    let mut journal_text = format!("{}\n", serde_json::json!({ "approval": approval }));
    for e in &steps_done {
        journal_text.push_str(&serde_json::to_string(e).unwrap());
        journal_text.push('\n');
    }
    let row = |node: &str, expires: &str, days: i64| ExpiryRow {
        certificate: "apiserver".into(),
        location: format!("{node}:apiserver.crt"),
        expires: expires.into(),
        residual_days: days,
        issuer: "ca".into(),
        findings: vec![],
    };
    let before = vec![row("k8s-master-31415926-0", "2026-12-27", 20)];
    let after = vec![row("k8s-master-31415926-0", "2028-12-06", 729)];
    let node = |name: &str, log: Option<&str>| NodeRecord {
        node: name.into(),
        backup_present: true,
        backup_stamp: Some(digest.trim_start_matches("sha256:")[..16].to_string()),
        etcd_backup_present: name.ends_with("-0"),
        earlier_backups: vec![],
        log: log.map(str::to_string),
    };
    Gathered {
        run: RunRecord {
            plan_path: PathBuf::from("change-42.plan.yaml"),
            plan,
            run_dir: PathBuf::from("/nonexistent/_rotate_certs_output/0123456789abcdef"),
            journal_text,
            steps_done,
            approvals: vec![approval],
            state: RunState { backup_dir: Some(PathBuf::from("/srv/kube-ash/_rotate_certs_backup/20261207T020000Z")), ..RunState::default() },
            status_before: Some((certrotate::flow::expiry::render(&before), serde_json::to_string(&before).unwrap())),
            rollback_journal: None,
        },
        cluster: "kube-ash".into(),
        after: StatusAfter::Read { text: certrotate::flow::expiry::render(&after), rows: after },
        nodes: vec![node("k8s-master-31415926-0", Some("2026-12-07T02:11:00Z certrotate[0123456789abcdef] installCerts: ok: installed 12 files\n")), node("k8s-linuxpool-31415926-0", None)],
        unread_nodes: vec![UnreadNode { node: "k8s-linuxpool-31415926-1".into(), error: "connection timed out".into() }],
        not_read_kinds: vec![],
        taken_at: time::macros::datetime!(2026-12-07 03:00 UTC),
    }
}

fn file<'b>(bundle: &'b evidence::Bundle, path: &str) -> &'b str {
    let (_, bytes) = bundle.files.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("{path} is not in the bundle"));
    std::str::from_utf8(bytes).unwrap()
}

#[test]
fn the_bundle_holds_what_an_auditor_asks_for_with_a_manifest_of_it_all() {
    let g = gathered();
    let bundle = evidence::assemble(&g).unwrap();
    let short = &g.run.plan.digest.as_ref().unwrap().hex()[..16];
    assert_eq!(bundle.name, format!("certrotate-evidence-kube-ash-{short}"));
    let names: Vec<&str> = bundle.files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "plan/plan.yaml",
            "plan/review.md",
            "plan/review.html",
            "journal.jsonl",
            "approval.json",
            "status/before.txt",
            "status/before.json",
            "status/after.txt",
            "status/after.json",
            "nodes/k8s-master-31415926-0/rotate-certs.log",
            "nodes/k8s-linuxpool-31415926-0/rotate-certs.log",
            "nodes/NOT-READ.txt",
            "backups.json",
            "evidence.json",
            MANIFEST,
        ]
    );
    // The plan in the bundle is the plan that was approved: its digest still checks out.
    let plan = certrotate::plan::file::PlanFile::from_source(&certrotate::diag::SourceFile::from_text("plan.yaml", file(&bundle, "plan/plan.yaml"))).unwrap();
    assert_eq!(plan.digest, g.run.plan.digest);
    assert!(file(&bundle, "plan/review.md").contains("certrotate apply change-42.plan.yaml"));
    assert!(file(&bundle, "plan/review.html").starts_with("<!DOCTYPE html>"));
    let approvals: serde_json::Value = serde_json::from_str(file(&bundle, "approval.json")).unwrap();
    assert_eq!(approvals[0]["approvedBy"], "Jane Doe");
    assert!(file(&bundle, "status/before.txt").contains("20d") && file(&bundle, "status/after.txt").contains("1y"));
    assert!(file(&bundle, "nodes/k8s-master-31415926-0/rotate-certs.log").contains("installCerts: ok"));
    assert!(file(&bundle, "nodes/k8s-linuxpool-31415926-0/rotate-certs.log").contains("has no /var/log/azure/rotate-certs.log"));
    assert!(file(&bundle, "nodes/NOT-READ.txt").contains("k8s-linuxpool-31415926-1: connection timed out"));
    let backups: serde_json::Value = serde_json::from_str(file(&bundle, "backups.json")).unwrap();
    assert_eq!(backups["apiModelBackup"], "/srv/kube-ash/_rotate_certs_backup/20261207T020000Z");
    assert_eq!(backups["nodeBackupDir"], "/etc/kubernetes/certs.bak");
    assert_eq!(backups["nodes"][0]["etcdBackupPresent"], true);
    assert_eq!(backups["unreadNodes"][0]["node"], "k8s-linuxpool-31415926-1");
    let summary: serde_json::Value = serde_json::from_str(file(&bundle, "evidence.json")).unwrap();
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["stepsDone"], g.run.plan.graph.steps.len());
    assert_eq!(summary["approvals"][0]["how"], "savedPlan");
    assert_eq!(summary["statusAfterRead"], true);

    // Every other file is in the manifest with its SHA-256, and nothing else is.
    let manifest = file(&bundle, MANIFEST);
    let listed: Vec<(&str, &str)> = manifest.lines().map(|l| l.split_once("  ").unwrap()).collect();
    assert_eq!(listed.len(), bundle.files.len() - 1);
    for ((hash, path), (name, bytes)) in listed.iter().zip(&bundle.files) {
        assert_eq!(path, name);
        assert_eq!(*hash, hex::encode(Sha256::digest(bytes)), "{path}");
    }
}

#[test]
fn an_incomplete_apply_says_what_is_not_done() {
    let mut g = gathered();
    let last = g.run.steps_done.pop().unwrap();
    g.run.status_before = None;
    g.after = StatusAfter::NotRead("the jumpbox did not answer".into());
    let bundle = evidence::assemble(&g).unwrap();
    let summary: serde_json::Value = serde_json::from_str(file(&bundle, "evidence.json")).unwrap();
    assert_eq!(summary["complete"], false);
    assert_eq!(summary["stepsNotDone"][0], last.step.as_str());
    assert!(file(&bundle, "status/before.txt").starts_with("not kept"));
    assert!(file(&bundle, "status/after.txt").contains("not read: the jumpbox did not answer"));
    assert!(!bundle.files.iter().any(|(p, _)| p == "status/after.json"));
}

#[test]
fn a_secret_anywhere_stops_the_bundle_and_is_not_repeated() {
    let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx3dummy\n-----END RSA PRIVATE KEY-----\n";
    let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQ.c2ln";
    let cases: Vec<(&str, Box<dyn Fn(&mut Gathered)>)> = vec![
        ("nodes/k8s-master-31415926-0/rotate-certs.log", Box::new(move |g: &mut Gathered| g.nodes[0].log = Some(format!("oops\n{key}")))),
        ("journal.jsonl", Box::new(|g: &mut Gathered| g.run.journal_text.push_str("{\"step\":\"x\",\"note\":\"clientSecret: hunter22\"}\n"))),
        ("nodes/NOT-READ.txt", Box::new(move |g: &mut Gathered| g.unread_nodes[0].error = format!("401 with Bearer {token}"))),
        ("status/before.txt", Box::new(move |g: &mut Gathered| g.run.status_before.as_mut().unwrap().0.push_str(key))),
    ];
    for (path, spoil) in cases {
        let mut g = gathered();
        spoil(&mut g);
        let e = evidence::assemble(&g).expect_err(path);
        let message = e.to_string();
        assert!(message.contains(path) && message.contains("refusing to write"), "{path}: {message}");
        assert!(!message.contains("MIIEpAIBAAKCAQEAx3dummy") && !message.contains("hunter22") && !message.contains(token), "{message}");
    }
}

fn sha256sum_check(dir: &Path) {
    let out = Command::new("sha256sum").args(["--check", "--strict", MANIFEST]).current_dir(dir).output().expect("sha256sum runs");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn both_forms_on_disk_check_out_with_the_real_tools_and_are_never_overwritten() {
    let bundle = evidence::assemble(&gathered()).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let dir = tmp.path().join("evidence");
    evidence::write_dir(&bundle, &dir).unwrap();
    sha256sum_check(&dir);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("journal.jsonl")), 0o600);
    assert!(evidence::write_dir(&bundle, &dir).is_err(), "an existing bundle is never overwritten");

    let archive = tmp.path().join("evidence.tar.gz");
    evidence::write_tar_gz(&bundle, &archive).unwrap();
    assert_eq!(mode(&archive), 0o600);
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let out = Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&unpacked).output().expect("tar runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let top = unpacked.join(&bundle.name);
    sha256sum_check(&top);
    assert_eq!(std::fs::read(top.join("evidence.json")).unwrap(), std::fs::read(dir.join("evidence.json")).unwrap());
    assert!(evidence::write_tar_gz(&bundle, &archive).is_err(), "an existing archive is never overwritten");
    // Nothing half-written is left beside them.
    let left: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert!(left.iter().all(|n| !n.starts_with(".certrotate-evidence-")), "{left:?}");
}
