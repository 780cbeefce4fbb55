//! The API model: round trips keep every field and the key order, the bundled example gives
//! no finding, and every kind of bad input gets a diagnostic naming the file and line, exit
//! code 1, and leaves the file untouched. Diagnostics are snapshot-tested as the binary
//! prints them.

use certrotate::model::apimodel::{ApiModel, CertificateProfile};
use certrotate::model::topology::Topology;
use certrotate::pki::catalogue::catalogue;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/azurestack-3m2a")
}

fn fixture_text() -> String {
    std::fs::read_to_string(fixture_dir().join("apimodel.json")).unwrap()
}

#[test]
fn unchanged_model_round_trips_byte_for_byte() {
    let m = ApiModel::load(&fixture_dir().join("apimodel.json")).unwrap();
    assert!(!m.is_modified(), "serialising the untouched model changed it");
    assert_eq!(m.to_json_string(), fixture_text());
}

#[test]
fn replacing_certificate_profile_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apimodel.json");
    std::fs::write(&path, fixture_text()).unwrap();
    let mut m = ApiModel::load(&path).unwrap();
    let mut cp = m.view.properties.certificate_profile.clone().unwrap();
    cp.set_pair("apiServerCertificate", "NEW CERT\n".into(), "NEW KEY\n".into());
    m.set_certificate_profile(&cp);
    m.save_atomic(&path).unwrap();

    let before: serde_json::Value = serde_json::from_str(&fixture_text()).unwrap();
    let after_text = std::fs::read_to_string(&path).unwrap();
    let after: serde_json::Value = serde_json::from_str(&after_text).unwrap();
    assert_eq!(after["properties"]["certificateProfile"]["apiServerCertificate"], "NEW CERT\n");
    // Everything but that pair is identical, including fields certrotate does not know.
    let mut expected = before.clone();
    expected["properties"]["certificateProfile"]["apiServerCertificate"] = "NEW CERT\n".into();
    expected["properties"]["certificateProfile"]["apiServerPrivateKey"] = "NEW KEY\n".into();
    assert_eq!(after, expected);
    // Key order survives: compare the sequence of keys at every level.
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                out.push(k.clone());
                keys(v, out);
            }
        }
    }
    let (mut kb, mut ka) = (vec![], vec![]);
    keys(&before, &mut kb);
    keys(&after, &mut ka);
    assert_eq!(kb, ka);
    // Only the two changed lines differ from the original text.
    let changed = fixture_text().lines().zip(after_text.lines()).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 2);
}

#[test]
fn bundled_example_validates_without_findings() {
    let m = ApiModel::load(&fixture_dir().join("apimodel.json")).unwrap();
    let topo = Topology::derive(&m, None).unwrap();
    assert_eq!(topo.name_suffix, "17329654");
    // aks-engine writes GetClusterID() as azuredeploy.json's nameSuffix.
    assert_eq!(topo.name_suffix, certrotate::model::cluster_id::cluster_id(m.dns_prefix()));
    let audit = certrotate::pki::audit::audit_certificate_profile(&m, &catalogue(&topo), time::OffsetDateTime::now_utc()).unwrap();
    assert_eq!(audit.findings, vec![], "a cluster definition issued to AKS Engine's recipe must give no finding");
    assert_eq!(audit.certificates.len(), 9);
}

/// Runs `certrotate validate` on a copy of the example with `mutate` applied, in a temp dir
/// so the path printed is stable; returns (exit code, stderr). Checks the file is unchanged.
fn validate_mutated(mutate: impl FnOnce(&Path)) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("apimodel.json"), fixture_text()).unwrap();
    std::fs::copy(fixture_dir().join("azuredeploy.json"), dir.path().join("azuredeploy.json")).unwrap();
    mutate(dir.path());
    let before = std::fs::read(dir.path().join("apimodel.json")).ok();
    let out = Command::new(env!("CARGO_BIN_EXE_certrotate"))
        .args(["validate", "--api-model", "apimodel.json"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("apimodel.json")).ok(), before, "validate changed the API model");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "a key reached the terminal:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn edit_json(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("apimodel.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, certrotate::model::apimodel::go_json_indent(&v)).unwrap();
}

fn cp_field<'a>(v: &'a mut serde_json::Value, field: &str) -> &'a mut serde_json::Value {
    &mut v["properties"]["certificateProfile"][field]
}

#[test]
fn missing_api_model() {
    let (code, err) = validate_mutated(|d| std::fs::remove_file(d.join("apimodel.json")).unwrap());
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn invalid_json() {
    let (code, err) = validate_mutated(|d| {
        let p = d.join("apimodel.json");
        let t = std::fs::read_to_string(&p).unwrap().replacen("\"location\": \"local\",", "\"location\": \"local\"", 1);
        std::fs::write(p, t).unwrap();
    });
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn two_masters() {
    let (code, err) = validate_mutated(|d| edit_json(d, |v| v["properties"]["masterProfile"]["count"] = 2.into()));
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn certificate_pem_that_does_not_parse() {
    let (code, err) = validate_mutated(|d| {
        edit_json(d, |v| *cp_field(v, "apiServerCertificate") = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".into())
    });
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn key_that_belongs_to_another_certificate() {
    let (code, err) = validate_mutated(|d| {
        edit_json(d, |v| {
            let other = cp_field(v, "clientPrivateKey").clone();
            *cp_field(v, "apiServerPrivateKey") = other;
        })
    });
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn certificate_signed_by_another_ca() {
    let foreign = certrotate_test_foreign_leaf();
    let (code, err) = validate_mutated(|d| {
        edit_json(d, |v| {
            *cp_field(v, "etcdClientCertificate") = foreign.cert_pem.clone().into();
            *cp_field(v, "etcdClientPrivateKey") = foreign.key_pem.clone().into();
        })
    });
    assert_eq!(code, 1);
    insta::assert_snapshot!(err);
}

#[test]
fn name_suffix_without_azuredeploy_is_computed_from_the_dns_prefix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("apimodel.json"), fixture_text()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certrotate"))
        .args(["validate", "--api-model", "apimodel.json"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // AKS Engine's GetClusterID("kubelab"), the value its azuredeploy.json carries.
    assert!(stdout.contains("name suffix 17329654 from dnsPrefix \"kubelab\""), "{stdout}");
}

#[test]
fn certificate_profile_file_loads_like_aks_engine_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let v: serde_json::Value = serde_json::from_str(&fixture_text()).unwrap();
    let p = dir.path().join("certs.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v["properties"]["certificateProfile"]).unwrap()).unwrap();
    let (cp, _) = CertificateProfile::load(&p).unwrap();
    assert_eq!(cp.etcd_peer_certificates.len(), 3);
    assert!(cp.pair("apiServerCertificate").0.unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
}

/// A leaf with the etcdclient shape from a CA that is not the cluster's.
fn certrotate_test_foreign_leaf() -> certrotate::pki::KeyCertPair {
    use certrotate::pki::{issue, CertTemplate, ExtendedUsage, KeySpec};
    let now = time::OffsetDateTime::now_utc();
    let t = |cn: &str, is_ca: bool| CertTemplate {
        common_name: cn.into(),
        organization: None,
        dns_sans: vec![],
        ip_sans: vec![],
        is_ca,
        extended_usages: if is_ca { vec![] } else { vec![ExtendedUsage::ServerAuth, ExtendedUsage::ClientAuth] },
        key: KeySpec::EcdsaP256,
        not_before: now,
        not_after: now + time::Duration::days(365),
    };
    let ca = issue::issue_ca(&t("ca", true)).unwrap();
    issue::issue_leaf(&t("etcdclient", false), &ca).unwrap()
}

/// aks-engine rotate-certs' short flags and its `--location` check: `-l` names another
/// location than the API model's, so `plan` stops before it reaches any node, pointing at the
/// API model's `location`; case and spaces do not count, as aks-engine normalises them.
#[test]
fn location_is_checked_against_the_api_model_as_aks_engine_checks_it() {
    let m = ApiModel::load(&fixture_dir().join("apimodel.json")).unwrap();
    certrotate::flow::discover::check_location(&m, "local").unwrap();
    certrotate::flow::discover::check_location(&m, " Lo cal").unwrap();
    let err = certrotate::flow::discover::check_location(&m, "westeurope").unwrap_err();
    assert!(err.message.contains("westeurope") && err.message.contains("`local`"), "{}", err.message);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("apimodel.json"), fixture_text()).unwrap();
    std::fs::copy(fixture_dir().join("azuredeploy.json"), dir.path().join("azuredeploy.json")).unwrap();
    let plan = |location: &str| {
        Command::new(env!("CARGO_BIN_EXE_certrotate"))
            .args(["plan", "-m", "apimodel.json", "-l", location, "-g", "kubelab-rg", "-s", "00000000-0000-0000-0000-000000000000"])
            // An address nothing listens on: the run must stop before it tries to connect.
            .args(["--ssh-host", "127.0.0.1:9", "--linux-ssh-private-key", "apimodel.json"])
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let wrong = plan("westeurope");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--location westeurope does not match the API model's location `local`"), "{stderr}");
    assert!(stderr.contains("apimodel.json:3:"), "points at the API model's location: {stderr}");
    // The right location in another case passes the check and goes on to the nodes (which
    // are not there): the error is then about reaching them, not about the location.
    let right = plan("LOCAL");
    let stderr = String::from_utf8_lossy(&right.stderr);
    assert!(!stderr.contains("does not match the API model's location"), "{stderr}");
}
