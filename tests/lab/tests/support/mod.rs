//! Helpers shared by the lab tests that run the certrotate binary: bringing a lab up, the
//! flags that point certrotate at it, running certrotate and commands on its nodes.
#![allow(dead_code)]

use lab::spec::{Expiry, LabSpec};
use lab::{Lab, UpOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The certrotate binary built beside this test binary (`cargo build --workspace`).
pub fn certrotate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("certrotate");
    assert!(bin.is_file(), "build certrotate first: cargo build --workspace (looked for {})", bin.display());
    bin
}

/// Exit code, stdout and stderr of a run, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("exit {:?}\n{}\n{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// stderr with miette's box drawing and line breaks folded away, to search for sentences.
pub fn flat_stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).replace('│', " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A lab as `spec` says, torn down with the test process if the test dies. Needs root.
/// Restarts are made as short as the lab allows (no apiserver start-up or shutdown delay):
/// these tests need speed; only a downtime proof runs with the realistic defaults.
pub fn up(dir: &Path, spec: LabSpec) -> Lab {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab tests need root");
    Lab::up(
        dir,
        spec.fast_restarts(),
        UpOptions {
            lab_binary: Some(env!("CARGO_BIN_EXE_lab").into()),
            owner_pid: Some(std::process::id()),
            timeout: Some(Duration::from_secs(120)),
        },
    )
    .expect("lab up")
}

/// The default lab (3 masters, 2 agents) with certificates that expire as `expiry` says.
pub fn up_expiring(dir: &Path, expiry: Expiry) -> Lab {
    up(dir, LabSpec { expiry, ..LabSpec::default() })
}

fn flags(lab: &Lab, pairs: &[(&str, &str)]) -> Vec<String> {
    let env = lab.env();
    pairs.iter().flat_map(|(flag, var)| [flag.to_string(), env[*var].clone()]).collect()
}

/// The API model and what reaching the nodes over SSH through the jumpbox needs.
pub fn ssh_flags(lab: &Lab) -> Vec<String> {
    flags(
        lab,
        &[
            ("--api-model", "LAB_API_MODEL"),
            ("--ssh-host", "LAB_SSH_HOST"),
            ("--linux-ssh-private-key", "LAB_SSH_KEY"),
            ("--known-hosts", "LAB_KNOWN_HOSTS"),
        ],
    )
}

/// `ssh_flags` and the address the apiserver is reached at from here.
pub fn api_flags(lab: &Lab) -> Vec<String> {
    let mut f = ssh_flags(lab);
    f.extend(flags(lab, &[("--apiserver", "LAB_APISERVER")]));
    f
}

/// The flags every cluster command needs, plus the Azure ones apply needs for VM reboots. No
/// `--tenant-id`, as in the product document's command line: the tenant comes from ARM's
/// challenge.
pub fn cluster_flags(lab: &Lab) -> Vec<String> {
    let mut f = api_flags(lab);
    f.extend(flags(
        lab,
        &[
            ("--resource-group", "LAB_RESOURCE_GROUP"),
            ("--subscription-id", "LAB_SUBSCRIPTION_ID"),
            ("--ca-bundle", "LAB_ARM_CA_BUNDLE"),
        ],
    ));
    f
}

/// Runs certrotate with `args` then `flags`, without colour.
pub fn run(args: &[&str], flags: &[String]) -> Output {
    Command::new(certrotate_bin()).args(args).args(flags).env("NO_COLOR", "1").output().unwrap()
}

/// Runs `command` on a lab node as azureuser, through the jumpbox; fails the test unless it
/// exits 0. Returns its stdout.
pub fn ssh(lab: &Lab, node: &str, command: &str) -> String {
    let env = lab.env();
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&env["LAB_SSH_CONFIG"])
        .arg("-J")
        .arg(format!("azureuser@{}", env["LAB_SSH_HOST"]))
        .arg(format!("azureuser@{node}"))
        .arg(command)
        .output()
        .unwrap();
    assert!(out.status.success(), "{command} on {node}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The directory of the API model (kubeconfig/, _rotate_certs_output/ and backups beside it).
pub fn model_dir(lab: &Lab) -> PathBuf {
    PathBuf::from(&lab.env()["LAB_API_MODEL"]).parent().unwrap().to_path_buf()
}

/// The admin kubeconfig beside the API model.
pub fn admin_kubeconfig(lab: &Lab) -> PathBuf {
    model_dir(lab).join("kubeconfig").join(format!("kubeconfig.{}.json", lab.env()["LAB_LOCATION"]))
}

/// Every node the API model counts, masters first: `k8s-master-<suffix>-<i>`, then
/// `k8s-agentpool1-<suffix>-<i>`.
pub fn nodes(lab: &Lab) -> Vec<String> {
    let env = lab.env();
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&env["LAB_API_MODEL"]).unwrap()).unwrap();
    let count = |v: &serde_json::Value| v["count"].as_u64().unwrap();
    let s = &env["LAB_NAME_SUFFIX"];
    (0..count(&doc["properties"]["masterProfile"]))
        .map(|i| format!("k8s-master-{s}-{i}"))
        .chain((0..count(&doc["properties"]["agentPoolProfiles"][0])).map(|i| format!("k8s-agentpool1-{s}-{i}")))
        .collect()
}

/// `plan` with `profile` finds nothing to do (exit 0, "No changes").
pub fn assert_plan_has_no_changes(lab: &Lab, dir: &Path, profile: &str) {
    let out = run(&["plan", "--profile", profile, "--detailed-exitcode", "--out", dir.join("after.plan.yaml").to_str().unwrap()], &cluster_flags(lab));
    assert_eq!(out.status.code(), Some(0), "after apply, plan must find nothing to do: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("No changes"), "{}", text(&out));
}

/// The shipped renew-expiring profile with gates that give up after 15 s (checking every
/// second), written into `dir`, so a gate that cannot pass fails quickly.
pub fn renew_expiring_with_fast_gates(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plans/renew-expiring.yaml")).unwrap();
    let (head, _) = shipped.split_once("\ngates:").unwrap();
    let profile = dir.join("renew-fast.yaml");
    std::fs::write(&profile, format!("{head}\ngates:\n  timeout: 15s\n  interval: 1s\n")).unwrap();
    profile
}

/// Processes whose command line mentions `path` (ssh ControlMasters name their control
/// socket and ssh_config, both under certrotate's temporary directory).
pub fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if line.contains(&needle) {
            found.push(format!("{}: {}", entry.file_name().to_string_lossy(), line.trim()));
        }
    }
    found
}

/// certrotate's temporary SSH directories left in `tmp`.
pub fn ssh_dirs_left(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("certrotate-ssh-"))
        .collect()
}

/// Sends `signal` to the process group `pid` leads, as a terminal sends Ctrl-C to its
/// foreground group: the child must be spawned with `process_group(0)`.
pub fn send_signal_to_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) only delivers a signal to our own child's group.
    assert_eq!(unsafe { libc::kill(-(pid as i32), signal) }, 0, "kill(-{pid}, {signal})");
}

/// [`processes_mentioning`] once they had up to 5 s to exit: a ControlMaster told to exit
/// answers first and exits just after.
pub fn processes_left_mentioning(path: &Path) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_mentioning(path);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `root` (not the directories), with its type, at any depth.
pub fn files_under(root: &Path) -> Vec<(PathBuf, std::fs::FileType)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => pending.push(e.path()),
                Ok(t) => found.push((e.path(), t)),
                Err(_) => {}
            }
        }
    }
    found
}

/// Starts certrotate with `args` then `flags` in a process group of its own (so a signal can
/// reach the group as a terminal's Ctrl-C does), its temporary directory in `tmp`, stderr piped.
pub fn spawn_in_own_group(args: &[&str], flags: &[String], tmp: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new(certrotate_bin())
        .args(args)
        .args(flags)
        .env("NO_COLOR", "1")
        .env("TMPDIR", tmp)
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Checks /proxycerts in etcd as AKS Engine's generateproxycerts.sh leaves and reads them: each
/// value byte for byte one space then the PEM of the master's file (no trailing newline, as
/// `" $(cat file)"` stores it), and AKS Engine's reading step (`etcdctl get
/// --print-value-only`, then `sed -i '1s/\s//'`) on the master gives a PEM openssl parses and
/// that is the master's own file. The key is compared on the node; only digests travel.
pub fn assert_proxycerts_as_aks_engine_leaves_them(lab: &Lab, master: &str) {
    let etcdctl = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/certs/ca.crt --cert=/etc/kubernetes/certs/etcdclient.crt --key=/etc/kubernetes/certs/etcdclient.key";
    for (key, file) in [("/proxycerts/requestheader-client-ca-file", "proxy-ca.crt"), ("/proxycerts/proxy-client-cert-file", "proxy.crt")] {
        let pem = ssh(lab, master, &format!("cat /etc/kubernetes/certs/{file}"));
        let stored = ssh(lab, master, &format!("sudo sh -c '{etcdctl} get {key} --print-value-only | head -c -1 | base64 -w0'"));
        let stored = String::from_utf8(base64_decode(stored.trim())).unwrap();
        assert_eq!(stored, format!(" {}", pem.trim_end_matches('\n')), "{key} on {master} is not in AKS Engine's form");
        let read = ssh(
            lab,
            master,
            &format!("t=$(mktemp) && sudo sh -c '{etcdctl} get {key} --print-value-only' > $t && sed -i '1s/\\s//' $t && openssl x509 -in $t -noout -fingerprint -sha256; rm -f $t"),
        );
        let want = ssh(lab, master, &format!("openssl x509 -in /etc/kubernetes/certs/{file} -noout -fingerprint -sha256"));
        assert_eq!(read, want, "{key} read back as AKS Engine reads it is not {file} on {master}");
    }
    let key = "/proxycerts/proxy-client-key-file";
    let check = ssh(
        lab,
        master,
        &format!(
            "sudo sh -c 't=$(mktemp); {etcdctl} get {key} --print-value-only | head -c -1 > $t.v; {{ printf \" \"; printf %s \"$(cat /etc/kubernetes/certs/proxy.key)\"; }} | cmp -s - $t.v && echo FORM-OK; \
             {etcdctl} get {key} --print-value-only > $t; sed -i \"1s/\\s//\" $t; a=$(openssl pkey -in $t -pubout | sha256sum); b=$(openssl pkey -in /etc/kubernetes/certs/proxy.key -pubout | sha256sum); \
             [ -n \"$a\" ] && [ \"$a\" = \"$b\" ] && echo READ-OK; rm -f $t $t.v'"
        ),
    );
    assert_eq!(check.split_whitespace().collect::<Vec<_>>(), ["FORM-OK", "READ-OK"], "{key} on {master}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
