//! `plan --certificate-profile FILE` (certificates the operator supplies): a file that cannot
//! be installed on this cluster is refused with a diagnostic naming the file and line, before
//! the cluster is contacted, and without printing key material. Run against the bundled
//! AKS Engine example; `--ssh-host` points at a closed port, so a file that passes the checks
//! ends in an SSH error instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/azurestack-3m2a/apimodel.json")
}

/// The example's own certificateProfile, as a JSON object to edit.
fn own_profile() -> serde_json::Map<String, serde_json::Value> {
    let model: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture_model()).unwrap()).unwrap();
    model["properties"]["certificateProfile"].as_object().unwrap().clone()
}

/// Writes `profile` as pretty JSON and runs plan with it; returns (exit code, stderr).
fn plan_with(dir: &Path, profile: &serde_json::Map<String, serde_json::Value>) -> (i32, String, PathBuf) {
    let file = dir.join("supplied.json");
    std::fs::write(&file, serde_json::to_string_pretty(profile).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certrotate"))
        .args(["plan", "--api-model"])
        .arg(fixture_model())
        .arg("--certificate-profile")
        .arg(&file)
        .args(["--ssh-host", "127.0.0.1:1", "--known-hosts", "/dev/null"])
        .arg("--linux-ssh-private-key")
        .arg(dir.join("no-such-key"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace('│', " ");
    let stderr = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(!stderr.contains("PRIVATE KEY") && !stderr.contains("BEGIN CERTIFICATE"), "key or PEM material printed:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr, file)
}

/// Line (1-based) of the first occurrence of `needle` in `file`.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().position(|l| l.contains(needle)).expect("needle in file") + 1
}

/// Plans with `profile`, expects the refusal (exit 1) and its diagnostic at the line of
/// `"field"` in the file; returns the flattened stderr.
fn refused_at(profile: &serde_json::Map<String, serde_json::Value>, field: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (code, err, file) = plan_with(dir.path(), profile);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{}:{}:", file.display(), line_of(&file, &format!("\"{field}\"")))), "not at {field}: {err}");
    err
}

#[test]
fn a_profile_without_the_ca_key_is_refused_at_its_line() {
    let mut p = own_profile();
    p.remove("caPrivateKey");
    let err = refused_at(&p, "caCertificate");
    assert!(err.contains("caPrivateKey is missing"), "{err}");
}

#[test]
fn certificates_in_the_wrong_fields_are_listed_with_what_is_wrong() {
    let mut p = own_profile();
    // The client pair where the apiserver pair belongs: it parses and matches its key, but
    // carries the wrong name and no SANs.
    let (cert, key) = (p["clientCertificate"].clone(), p["clientPrivateKey"].clone());
    p.insert("apiServerCertificate".into(), cert);
    p.insert("apiServerPrivateKey".into(), key);
    let err = refused_at(&p, "apiServerCertificate");
    assert!(err.contains("cannot be installed on this cluster"), "{err}");
    assert!(err.contains("apiServerCertificate (apiserver): subject CN is"), "{err}");
    assert!(err.contains("IP SAN"), "{err}");
}

#[test]
fn a_key_that_does_not_belong_to_its_certificate_is_refused() {
    let mut p = own_profile();
    let other_key = p["etcdClientPrivateKey"].clone();
    p.insert("etcdServerPrivateKey".into(), other_key);
    let err = refused_at(&p, "etcdServerPrivateKey");
    assert!(err.contains("etcdServerPrivateKey"), "{err}");
}

#[test]
fn a_profile_that_fits_the_cluster_passes_and_plan_goes_on_to_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err, _) = plan_with(dir.path(), &own_profile());
    assert_eq!(code, 1, "no cluster answers here: {err}");
    assert!(!err.contains("cannot be installed") && !err.contains("is missing"), "the file was refused:\n{err}");
}
