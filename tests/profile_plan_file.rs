//! The saved-plan file: it round-trips through disk, a change of a single byte in any field
//! is detected on read, it is written 0600 without leaving temporary files, and it never
//! carries a secret.

mod profile_support;

use certrotate::diag::{InputError, SourceFile};
use certrotate::plan::file::*;
use profile_support::sample_plan;
use std::os::unix::fs::PermissionsExt;

fn render(err: &InputError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, err)
        .unwrap();
    out
}

#[test]
fn a_written_plan_reads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("change-42.plan.yaml");
    let plan = sample_plan();
    plan.write_atomic(&path).unwrap();
    let read = PlanFile::read(&path).unwrap_or_else(|e| panic!("{}", render(&e)));
    assert_eq!(read, plan);
    assert_eq!(read.summary.replace, 2);
    assert_eq!(read.summary.noop, 1);
    assert_eq!(read.summary.gates, 1);
    assert_eq!(read.summary.warnings, 1);
    assert!(read.summary.has_changes());
}

#[test]
fn the_plan_file_is_private_and_no_temporary_file_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.yaml");
    sample_plan().write_atomic(&path).unwrap();
    // Overwrite: the rename replaces the old plan in one step.
    sample_plan().write_atomic(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "plan mode is {mode:o}");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("plan.yaml")]);
}

#[test]
fn unknown_values_are_written_explicitly() {
    let text = sample_plan().to_yaml().unwrap();
    assert!(text.contains("known: false"), "{text}");
}

/// Changes one character in the value of the first `needle` and checks the plan is
/// refused as modified.
fn assert_tamper_detected(needle: &str, from: char, to: char) -> String {
    let text = sample_plan().to_yaml().unwrap();
    let start = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not in the plan:\n{text}"));
    // Flip inside the value, after `key: `, so the plan stays well formed.
    let value_start = needle.find(": ").map_or(0, |i| i + 2);
    let offset = start + value_start + needle[value_start..].find(from).expect("the character to flip is in the value");
    let mut bytes = text.into_bytes();
    bytes[offset] = to as u8;
    let tampered = String::from_utf8(bytes).unwrap();
    let err = PlanFile::from_source(&SourceFile::from_text("change-42.plan.yaml", tampered))
        .expect_err("a modified plan must be refused");
    let out = render(&err);
    assert!(out.contains("was modified after it was written"), "{out}");
    assert!(out.contains("do not apply it"), "{out}");
    out
}

#[test]
fn a_byte_flipped_in_any_field_is_detected() {
    assert_tamper_detected("dnsPrefix: kube-ash", 'a', 'b');
    assert_tamper_detected("message: the cluster CA is replaced", 'r', 'R');
    assert_tamper_detected("keyBits: 2048", '4', '5');
    assert_tamper_detected("parallelism: 3", '3', '4');
    assert_tamper_detected("timeout: 15m", '5', '6');
    assert_tamper_detected("k8s-master-31415926-2", '2', '3');
    let out = assert_tamper_detected("apiserverFqdn: kube-ash", 'k', 'q');
    // Digests change with every change to the plan types; mask the hex but keep its length
    // so miette's underline still lines up.
    let masked = regex::Regex::new("sha256:[0-9a-f]+")
        .unwrap()
        .replace_all(&out, |c: &regex::Captures| format!("sha256:{}", "x".repeat(c[0].len() - 7)));
    insta::assert_snapshot!(masked);
}

#[test]
fn a_flip_that_breaks_a_value_is_refused_as_malformed() {
    let text = sample_plan().to_yaml().unwrap().replacen("action: replace", "action: Replace", 1);
    let err = PlanFile::from_source(&SourceFile::from_text("p.yaml", text)).unwrap_err();
    assert!(err.message.contains("malformed") && err.message.contains("Replace"), "{}", err.message);
}

#[test]
fn a_field_added_anywhere_is_refused() {
    let text = sample_plan().to_yaml().unwrap();
    for (anchor, added) in [
        ("kind: missing\n", "        note: added\n"),
        ("kind: apiModel\n", "    note: added\n"),
        ("formatVersion: 2\n", "extra: added\n"),
    ] {
        let at = text.find(anchor).unwrap_or_else(|| panic!("`{anchor}` not in the plan")) + anchor.len();
        let tampered = format!("{}{added}{}", &text[..at], &text[at..]);
        let err = PlanFile::from_source(&SourceFile::from_text("p.yaml", tampered)).expect_err(anchor);
        assert!(err.message.contains("unknown field"), "{anchor}: {}", err.message);
    }
}

#[test]
fn a_tampered_file_on_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.yaml");
    sample_plan().write_atomic(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace("parallelism: 3", "parallelism: 30");
    std::fs::write(&path, text).unwrap();
    let err = PlanFile::read(&path).unwrap_err();
    assert!(render(&err).contains("was modified after it was written"));
    assert_eq!(err.file, path);
}

#[test]
fn a_changed_digest_is_detected_too() {
    let plan = sample_plan();
    let digest = plan.digest.clone().unwrap();
    let forged = format!("sha256:{}", "0".repeat(64));
    let text = plan.to_yaml().unwrap().replace(digest.as_str(), &forged);
    let err = PlanFile::from_source(&SourceFile::from_text("p.yaml", text)).unwrap_err();
    assert!(err.message.contains("was modified after it was written"), "{}", err.message);
}

#[test]
fn an_unsealed_plan_is_not_written_and_an_unsealed_file_not_read() {
    let mut plan = sample_plan();
    plan.findings.clear();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.yaml");
    assert!(matches!(plan.write_atomic(&path), Err(PlanWriteError::NotSealed)));
    assert!(!path.exists());

    plan.digest = None;
    let text = plan.to_yaml().unwrap();
    let err = PlanFile::from_source(&SourceFile::from_text("p.yaml", text)).unwrap_err();
    assert!(err.message.contains("no digest"), "{}", err.message);
}

#[test]
fn another_format_version_is_refused_with_a_pointed_message() {
    // Format 1 is what certrotate wrote before steps carried typed phases and parameters.
    let text = sample_plan().to_yaml().unwrap().replace("formatVersion: 2", "formatVersion: 1");
    let err = PlanFile::from_source(&SourceFile::from_text("old.plan.yaml", text)).unwrap_err();
    let out = render(&err);
    assert!(out.contains("[old.plan.yaml:3:"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn a_plan_that_is_not_yaml_or_not_a_plan_is_refused() {
    let err = PlanFile::from_source(&SourceFile::from_text("x.yaml", "formatVersion: [1\n")).unwrap_err();
    assert!(err.message.contains("not valid YAML"), "{}", err.message);
    let err = PlanFile::from_source(&SourceFile::from_text("x.yaml", "name: rotate-all\n")).unwrap_err();
    assert!(err.message.contains("not a certrotate plan"), "{}", err.message);
    let err = PlanFile::read(std::path::Path::new("plans/no-such.plan.yaml")).unwrap_err();
    assert!(err.message.contains("no-such.plan.yaml"), "{}", err.message);
}

#[test]
fn a_sealed_plan_with_a_broken_graph_is_refused() {
    let mut plan = sample_plan();
    plan.graph.edges.push(GraphEdge { from: "gate/etcdHealthy".into(), to: "issue/pki".into() });
    plan.seal();
    let err = PlanFile::from_source(&SourceFile::from_text("p.yaml", plan.to_yaml().unwrap())).unwrap_err();
    assert!(err.message.contains("cycle"), "{}", err.message);
}

#[test]
fn a_sealed_plan_whose_summary_miscounts_is_refused() {
    let mut plan = sample_plan();
    plan.summary.replace += 1;
    plan.seal();
    let err = PlanFile::from_source(&SourceFile::from_text("p.yaml", plan.to_yaml().unwrap())).unwrap_err();
    assert!(err.message.contains("summary"), "{}", err.message);
}

#[test]
fn the_sample_plan_holds_no_secret() {
    assert!(!contains_secret(&sample_plan().to_yaml().unwrap()));
}

#[test]
fn a_planted_private_key_is_found_and_never_written() {
    let key_pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END RSA PRIVATE KEY-----\n";
    let mut plan = sample_plan();
    plan.findings[0].message = format!("unexpected key material: {key_pem}");
    plan.seal();
    let text = plan.to_yaml().unwrap();
    assert!(contains_secret(&text));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.yaml");
    match plan.write_atomic(&path) {
        Err(PlanWriteError::SecretDetected(what)) => assert!(what.contains("private key"), "{what}"),
        other => panic!("a plan with a private key was not refused: {other:?}"),
    }
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a temporary file was left behind");
}

#[test]
fn a_planted_client_secret_is_found() {
    let mut plan = sample_plan();
    // Step parameters are typed and hold no free-form keys; text fields still reach the file.
    plan.graph.steps[0].description = "clientSecret=Zx8~q-w3rT9yU.iO1pA".into();
    plan.seal();
    assert!(contains_secret(&plan.to_yaml().unwrap()));
}

/// A profile that requires a named approver: `apply PLAN` without `--approved-by` is refused
/// before it reads the API model or contacts the cluster; with it, apply goes on (here to the
/// API model, which does not exist).
#[test]
fn a_plan_whose_profile_requires_approval_is_not_applied_without_an_approver() {
    let mut plan = sample_plan();
    plan.profile.approval.required = true;
    plan.profile_digest = plan.profile.digest();
    plan.seal();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("change-42.plan.yaml");
    plan.write_atomic(&path).unwrap();
    let apply = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_certrotate"))
            .args(["apply", path.to_str().unwrap(), "--api-model", "missing/apimodel.json"])
            .args(extra)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let refused = apply(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("requires a named approver") && stderr.contains("--approved-by NAME"), "{stderr}");
    assert!(!stderr.contains("API model"), "refused before the API model is read: {stderr}");
    let named = apply(&["--approved-by", "Jane Doe"]);
    let stderr = String::from_utf8_lossy(&named.stderr);
    assert_eq!(named.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("requires a named approver") && stderr.contains("cannot read the API model"), "{stderr}");
}
