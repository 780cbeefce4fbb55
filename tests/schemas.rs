//! The committed JSON Schemas in `schemas/` match the Rust types, and the shipped profiles
//! and a sample plan validate against them.
//!
//! After changing a profile or plan type: `UPDATE_SCHEMAS=1 cargo test --test schemas`.

mod profile_support;

use certrotate::model::profile::Profile;
use certrotate::plan::file::PlanFile;
use std::path::PathBuf;

fn schema_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas").join(file)
}

fn check_committed(file: &str, schema: schemars::Schema) {
    let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    let path = schema_path(file);
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        // Atomically: the validation tests read these files at the same time.
        let mut temp = tempfile::NamedTempFile::new_in(path.parent().unwrap()).unwrap();
        std::io::Write::write_all(&mut temp, generated.as_bytes()).unwrap();
        temp.persist(&path).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "schemas/{file} is out of date with the Rust types (first difference at line {}).\n\
             Regenerate it with: UPDATE_SCHEMAS=1 cargo test --test schemas\n\
             and commit the result.",
            first_difference + 1
        );
    }
}

#[test]
fn profile_schema_is_up_to_date() {
    check_committed("profile.schema.json", Profile::json_schema_document());
}

#[test]
fn fleet_schema_is_up_to_date() {
    check_committed("fleet.schema.json", certrotate::flow::fleet::FleetFile::json_schema_document());
}

#[test]
fn plan_schema_is_up_to_date() {
    check_committed("plan.schema.json", PlanFile::json_schema_document());
}

/// Validates each instance against a committed schema with the Python `jsonschema` package
/// (Draft 2020-12, formats checked) and returns the errors of each instance; `None` when
/// python3 or the package is not installed, so the caller can fall back to round trips.
fn validate_with_python(file: &str, instances: &[serde_json::Value]) -> Option<Vec<Vec<String>>> {
    const SCRIPT: &str = r#"
import json, sys
try:
    import jsonschema
except ImportError:
    sys.exit(3)
request = json.load(sys.stdin)
validator = jsonschema.Draft202012Validator(request["schema"], format_checker=jsonschema.FormatChecker())
jsonschema.Draft202012Validator.check_schema(request["schema"])
print(json.dumps([[f"{e.message} at /{'/'.join(map(str, e.absolute_path))}" for e in validator.iter_errors(i)] for i in request["instances"]]))
"#;
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema_path(file)).unwrap()).unwrap();
    let request = serde_json::json!({ "schema": schema, "instances": instances });
    let mut child = match std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(_) => {
            eprintln!("python3 not found: schema validation skipped, round trips only");
            return None;
        }
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.code() == Some(3) {
        eprintln!("python3 has no jsonschema package: schema validation skipped, round trips only");
        return None;
    }
    assert!(output.status.success(), "the validator failed: {}", String::from_utf8_lossy(&output.stderr));
    Some(serde_json::from_slice(&output.stdout).expect("the validator prints a JSON list"))
}

fn shipped_profiles_as_json() -> Vec<(String, serde_json::Value)> {
    Profile::shipped_names()
        .map(|name| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("plans/{name}.yaml"));
            // The file as written, not a round trip through the Rust types.
            let json: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            (name.to_string(), json)
        })
        .collect()
}

#[test]
fn shipped_profiles_as_json_read_back_as_the_same_profiles() {
    for (name, json) in shipped_profiles_as_json() {
        let from_json: Profile = serde_json::from_value(json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(from_json, Profile::load(&name).unwrap(), "{name}");
    }
}

#[test]
fn shipped_profiles_validate_against_the_schema() {
    let profiles = shipped_profiles_as_json();
    let instances: Vec<_> = profiles.iter().map(|(_, json)| json.clone()).collect();
    let Some(results) = validate_with_python("profile.schema.json", &instances) else { return };
    for ((name, _), problems) in profiles.iter().zip(results) {
        assert!(problems.is_empty(), "plans/{name}.yaml: {problems:#?}");
    }
}

#[test]
fn the_profile_schema_rejects_what_the_loader_rejects() {
    let bad = [
        "renewBeofre: 30d",
        "renewBefore: -3d",
        "key: {size: 1024}",
        "scope: [etcd-server]",
        "scope: []",
        "agents: {parallelism: 0}",
        "ca: {policy: sometimes}",
        "extraSans: {dns: [api_server.local]}",
        "extraSans: {ips: [10.0.0.300]}",
    ];
    let instances: Vec<serde_json::Value> =
        bad.iter().map(|line| serde_yaml::from_str(&format!("name: x\n{line}\n")).unwrap()).collect();
    for (line, instance) in bad.iter().zip(&instances) {
        let text = serde_yaml::to_string(instance).unwrap();
        assert!(
            Profile::from_source(&certrotate::diag::SourceFile::from_text("x.yaml", text)).is_err(),
            "the loader accepts `{line}`"
        );
    }
    let Some(results) = validate_with_python("profile.schema.json", &instances) else { return };
    for (line, problems) in bad.iter().zip(results) {
        assert!(!problems.is_empty(), "the schema accepts `{line}`");
    }
}

#[test]
fn a_sample_plan_validates_against_the_schema_and_round_trips_as_json() {
    let plan = profile_support::sample_plan();
    let as_json: serde_json::Value = serde_yaml::from_str(&plan.to_yaml().unwrap()).unwrap();
    let from_json: PlanFile = serde_json::from_value(as_json.clone()).unwrap();
    assert_eq!(from_json, plan);
    assert!(from_json.is_sealed());

    let mut unknown_action = as_json.clone();
    unknown_action["changes"][0]["certificates"][0]["action"] = "rebuild".into();
    let mut bad_digest = as_json.clone();
    bad_digest["digest"] = "md5:abc".into();
    let Some(results) = validate_with_python("plan.schema.json", &[as_json, unknown_action, bad_digest]) else { return };
    assert!(results[0].is_empty(), "{:#?}", results[0]);
    assert!(!results[1].is_empty(), "the schema accepts an unknown action");
    assert!(!results[2].is_empty(), "the schema accepts a malformed digest");
}
