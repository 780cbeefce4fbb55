//! The bad-input corpus (tests/bad_input/): the real binary on every kind of input an
//! operator can get wrong (API models, profiles, certificate profiles, plan files, flags).
//! Each must give exactly one diagnostic that names the file, and the line where the input
//! has one, says what to do, exits 1, never panics, and leaves every file as it was.

mod profile_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad_input");
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/azurestack-3m2a");

/// A scratch directory holding the corpus, the bundled example cluster (`cluster/`) and a
/// saved plan of another cluster (`other.plan.yaml`).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(CORPUS).unwrap().flatten() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        std::fs::create_dir(dir.path().join("cluster")).unwrap();
        for name in ["apimodel.json", "azuredeploy.json"] {
            std::fs::copy(Path::new(FIXTURE).join(name), dir.path().join("cluster").join(name)).unwrap();
        }
        profile_support::sample_plan().write_atomic(&dir.path().join("other.plan.yaml")).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A copy of the example cluster's apimodel.json, edited, as `name/apimodel.json`.
    fn edited_model(&self, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(Path::new(FIXTURE).join("azuredeploy.json"), dir.join("azuredeploy.json")).unwrap();
        let mut model: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURE).join("apimodel.json")).unwrap()).unwrap();
        edit(&mut model);
        let path = dir.join("apimodel.json");
        std::fs::write(&path, serde_json::to_string_pretty(&model).unwrap()).unwrap();
        path
    }

    /// The other cluster's plan with one edit of its text, as `name`.
    fn edited_plan(&self, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
        let text = std::fs::read_to_string(self.path("other.plan.yaml")).unwrap();
        let path = self.path(name);
        std::fs::write(&path, edit(text)).unwrap();
        path
    }

    /// Every file below the scratch directory with its bytes and mode.
    fn snapshot(&self) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>) {
            use std::os::unix::fs::PermissionsExt;
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    out.insert(entry.path(), (Vec::new(), meta.permissions().mode()));
                    walk(&entry.path(), out);
                } else {
                    out.insert(entry.path(), (std::fs::read(entry.path()).unwrap(), meta.permissions().mode()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

/// Where a diagnostic must point: the file, and the line when the input has lines.
enum Points {
    At(PathBuf, usize),
    File(PathBuf),
    /// A flag problem: no file; clap's error, which points at --help.
    Flags,
}

/// Runs certrotate with `args` in the scratch directory and checks the refusal.
fn refused(scratch: &Scratch, case: &str, args: &[&str], points: Points, says: &str) {
    let before = scratch.snapshot();
    let out = Command::new(env!("CARGO_BIN_EXE_certrotate")).args(args).current_dir(scratch.dir.path()).env("NO_COLOR", "1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    // miette wraps long messages behind a margin of box-drawing characters.
    let flat: String = stderr.replace(['│', '×'], " ").split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(out.status.code(), Some(1), "{case}: exit code\n{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{case}: panicked\n{stderr}");
    assert_eq!(scratch.snapshot(), before, "{case}: files changed");
    assert!(flat.contains(says), "{case}: does not say {says:?}:\n{stderr}");
    match points {
        Points::At(file, line) => {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let at = regex::Regex::new(&format!(r"{}:(\d+):\d+\]", regex::escape(&name))).unwrap();
            let lines: Vec<usize> = at.captures_iter(&stderr).map(|c| c[1].parse().unwrap()).collect();
            assert_eq!(lines, vec![line], "{case}: must point once at {name} line {line}:\n{stderr}");
            assert_one_diagnostic_with_help(case, &stderr);
        }
        Points::File(file) => {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            assert!(flat.contains(&name), "{case}: does not name {name}:\n{stderr}");
            assert_one_diagnostic_with_help(case, &stderr);
        }
        Points::Flags => {
            assert!(stderr.starts_with("error: "), "{case}: {stderr}");
            assert!(stderr.contains("For more information, try '--help'."), "{case}: says where to find how to get it right:\n{stderr}");
        }
    }
}

fn assert_one_diagnostic_with_help(case: &str, stderr: &str) {
    let heads = stderr.lines().filter(|l| l.trim_start().starts_with('×')).count();
    assert_eq!(heads, 1, "{case}: one diagnostic, not {heads}:\n{stderr}");
    assert!(stderr.contains("help:"), "{case}: says what to do:\n{stderr}");
}

/// The line of the first occurrence of `needle` in a file.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle} not in {}", file.display())) + 1
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn broken_api_models() {
    let x = Scratch::new();
    let not_json = x.path("apimodel-not-json.json");
    refused(&x, "not JSON", &["validate", "--api-model", s(&not_json)], Points::At(not_json.clone(), 1), "is not valid JSON");
    let no_master = x.path("apimodel-no-master-profile.json");
    refused(&x, "no masterProfile", &["validate", "--api-model", s(&no_master)], Points::At(no_master.clone(), 7), "missing field `masterProfile`");
    let missing = x.path("nowhere/apimodel.json");
    refused(&x, "missing file", &["status", "--offline", "--api-model", s(&missing)], Points::File(missing.clone()), "nowhere/apimodel.json");

    let version = x.edited_model("version", |m| m["apiVersion"] = "2017-07-01".into());
    refused(&x, "wrong apiVersion", &["validate", "--api-model", s(&version)], Points::At(version.clone(), line_of(&version, "\"apiVersion\"")), "certrotate reads the vlabs API model");
    let garbage = x.edited_model("garbage", |m| m["properties"]["certificateProfile"]["apiServerCertificate"] = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".into());
    refused(&x, "garbage PEM", &["validate", "--api-model", s(&garbage)], Points::At(garbage.clone(), line_of(&garbage, "\"apiServerCertificate\"")), "apiServerCertificate");
    let key = |file: &str| std::fs::read_to_string(Path::new(CORPUS).join(file)).unwrap();
    let encrypted = x.edited_model("encrypted", |m| m["properties"]["certificateProfile"]["caPrivateKey"] = key("key-encrypted.pem").into());
    refused(&x, "encrypted key", &["validate", "--api-model", s(&encrypted)], Points::At(encrypted.clone(), line_of(&encrypted, "\"caPrivateKey\"")), "caPrivateKey does not parse: the private key is encrypted");
    let ec = x.edited_model("ec", |m| m["properties"]["certificateProfile"]["caPrivateKey"] = key("key-ec.pem").into());
    refused(&x, "EC key where RSA is expected", &["validate", "--api-model", s(&ec)], Points::At(ec.clone(), line_of(&ec, "\"caPrivateKey\"")), "caPrivateKey is an ECDSA P-256 key, but caCertificate holds an RSA public key");
}

#[test]
fn broken_profiles_and_certificate_profiles() {
    let x = Scratch::new();
    let model = x.path("cluster/apimodel.json");
    let not_yaml = x.path("profile-not-yaml.yaml");
    refused(&x, "profile not YAML", &["validate", "--api-model", s(&model), "--profile", s(&not_yaml)], Points::At(not_yaml.clone(), 3), "profile");
    let unknown = x.path("profile-unknown-field.yaml");
    refused(&x, "profile unknown field", &["validate", "--api-model", s(&model), "--profile", s(&unknown)], Points::At(unknown.clone(), 2), "unknown field `whatever`");
    refused(&x, "profile that does not exist", &["validate", "--api-model", s(&model), "--profile", "rotate-everything"], Points::File(PathBuf::from("rotate-everything")), "rotate-everything");
    let cp_json = x.path("certificate-profile-not-json.json");
    refused(&x, "certificate profile not JSON", &["validate", "--api-model", s(&model), "--certificate-profile", s(&cp_json)], Points::At(cp_json.clone(), 1), "is not valid JSON");
    let cp_pem = x.path("certificate-profile-garbage-pem.json");
    refused(&x, "certificate profile garbage PEM", &["validate", "--api-model", s(&model), "--certificate-profile", s(&cp_pem)], Points::At(cp_pem.clone(), 1), "caCertificate does not parse");
}

#[test]
fn broken_plan_files() {
    let x = Scratch::new();
    let truncated = x.path("plan-truncated.yaml");
    refused(&x, "truncated plan", &["show", s(&truncated)], Points::File(truncated.clone()), "is not valid YAML");
    let tampered = x.edited_plan("tampered.plan.yaml", |t| t.replacen("dnsPrefix: kube-ash", "dnsPrefix: kube-asx", 1));
    refused(&x, "tampered plan", &["show", s(&tampered)], Points::File(tampered.clone()), "was modified after it was written");
    let version = |to: u32| move |t: String| regex::Regex::new(r"(?m)^formatVersion: \d+$").unwrap().replace(&t, format!("formatVersion: {to}")).into_owned();
    let current = certrotate::plan::file::FORMAT_VERSION;
    let newer = x.edited_plan("newer.plan.yaml", version(current + 1));
    refused(&x, "newer format", &["show", s(&newer)], Points::At(newer.clone(), line_of(&newer, "formatVersion")), "formatVersion");
    let older = x.edited_plan("older.plan.yaml", version(current - 1));
    refused(&x, "older format", &["show", s(&older)], Points::At(older.clone(), line_of(&older, "formatVersion")), "formatVersion");
    // Another cluster's plan is refused before any node is contacted (no SSH flags given).
    let other = x.path("other.plan.yaml");
    let model = x.path("cluster/apimodel.json");
    refused(&x, "another cluster's plan", &["apply", s(&other), "--api-model", s(&model)], Points::File(model.clone()), "the plan is for cluster kube-ash");
}

#[test]
fn conflicting_and_missing_flags() {
    let x = Scratch::new();
    let plan = x.path("other.plan.yaml");
    refused(&x, "conflicting flags", &["show", s(&plan), "--json", "--format", "html"], Points::Flags, "cannot be used with");
    refused(&x, "missing --api-model", &["plan"], Points::Flags, "--api-model <FILE>");
    refused(&x, "--prometheus without --fleet", &["status", "--prometheus", "x.prom", "--api-model", "cluster/apimodel.json"], Points::Flags, "--fleet <FILE>");
    refused(&x, "unknown profile format", &["show", s(&plan), "--format", "pdf"], Points::Flags, "invalid value 'pdf'");
    let model = x.path("cluster/apimodel.json");
    refused(&x, "--ssh-host missing for status", &["status", "--api-model", s(&model)], Points::File(PathBuf::from("--ssh-host")), "needs --ssh-host");
}
