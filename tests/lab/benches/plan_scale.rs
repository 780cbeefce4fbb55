//! Benchmark (issue 4): wall time and peak memory of `certrotate plan` on lab clusters of
//! 3+2, 3+20 and 3+50 nodes (certificates expiring in 20 days, profile renew-expiring), and
//! SSH logins per node counted at each node's sshd. Prints figures and the ratio
//! plan(3+50) / plan(3+2); it asserts nothing (targets are judged from the figures).
//!
//! Run as root after building certrotate in the same profile:
//!   cargo build --workspace && cargo bench -p certrotate-lab --bench plan_scale --profile dev
//! `PLAN_SCALE_SHAPES=3x2,3x50` and `PLAN_SCALE_ROUNDS=3` change what is measured.

use lab::spec::{Expiry, LabSpec};
use lab::{Lab, UpOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target profile dir").join(name);
    assert!(bin.is_file(), "build {name} in this profile first (cargo build --workspace); looked for {}", bin.display());
    bin
}

/// Runs a command and returns (wall time, peak RSS in KiB, exit code), reading the child's own
/// rusage with wait4 so other processes do not count.
fn run_measured(cmd: &mut std::process::Command) -> (Duration, i64, i32) {
    let start = Instant::now();
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("spawn certrotate");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (start.elapsed(), usage.ru_maxrss, code)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab needs root");
    let certrotate = sibling_binary("certrotate");
    let lab_binary = sibling_binary("lab");
    let shapes: Vec<(u8, u16)> = std::env::var("PLAN_SCALE_SHAPES")
        .unwrap_or_else(|_| "3x2,3x20,3x50".into())
        .split(',')
        .map(|s| {
            let (m, a) = s.split_once('x').expect("shape MxA");
            (m.parse().expect("masters"), a.parse().expect("agents"))
        })
        .collect();
    let rounds: usize = std::env::var("PLAN_SCALE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);

    println!("certrotate plan on lab clusters (renew-expiring, certificates expiring in 20 days), {rounds} rounds each");
    println!("{:<7} {:>12} {:>12} {:>14} {:>22} {:>18}", "shape", "lab up", "plan median", "peak RSS", "logins/node (others)", "logins jumpbox");
    let mut medians = Vec::new();
    for (masters, agents) in shapes {
        let dir = tempfile::tempdir().expect("temp dir");
        let up_start = Instant::now();
        let lab = Lab::up(
            dir.path(),
            LabSpec { masters, agents, expiry: Expiry::In(20 * 86_400), ..LabSpec::default() },
            UpOptions { lab_binary: Some(lab_binary.clone()), owner_pid: Some(std::process::id()), timeout: Some(Duration::from_secs(300)) },
        )
        .expect("lab up");
        let up_time = up_start.elapsed();
        let env = lab.env();
        let suffix = env["LAB_NAME_SUFFIX"].clone();
        let nodes: Vec<String> = (0..masters)
            .map(|i| format!("k8s-master-{suffix}-{i}"))
            .chain((0..agents).map(|i| format!("k8s-agentpool1-{suffix}-{i}")))
            .collect();
        let mut times = Vec::new();
        let mut peak = 0;
        let mut per_node_logins = (usize::MAX, 0usize);
        let mut jumpbox_logins = 0;
        for _ in 0..rounds {
            let before: Vec<usize> = nodes.iter().map(|n| lab.ssh_logins(n).unwrap_or(0)).collect();
            let (t, rss, code) = run_measured(
                std::process::Command::new(&certrotate)
                    .args(["plan", "--api-model", &env["LAB_API_MODEL"], "--ssh-host", &env["LAB_SSH_HOST"]])
                    .args(["--linux-ssh-private-key", &env["LAB_SSH_KEY"], "--known-hosts", &env["LAB_KNOWN_HOSTS"]])
                    .args(["--profile", "renew-expiring", "--detailed-exitcode"]),
            );
            assert_eq!(code, 2, "plan should find changes on an expiring cluster");
            times.push(t);
            peak = peak.max(rss);
            for (i, (n, b)) in nodes.iter().zip(before).enumerate() {
                let delta = lab.ssh_logins(n).unwrap_or(0) - b;
                if i == 0 {
                    jumpbox_logins = jumpbox_logins.max(delta);
                } else {
                    per_node_logins = (per_node_logins.0.min(delta), per_node_logins.1.max(delta));
                }
            }
        }
        let m = median(times);
        medians.push(((masters, agents), m));
        println!(
            "{:<7} {:>10.1} s {:>10.2} s {:>10.1} MiB {:>22} {:>18}",
            format!("{masters}+{agents}"),
            up_time.as_secs_f64(),
            m.as_secs_f64(),
            peak as f64 / 1024.0,
            if per_node_logins.0 == per_node_logins.1 { per_node_logins.0.to_string() } else { format!("{}..{}", per_node_logins.0, per_node_logins.1) },
            jumpbox_logins
        );
        lab.down().expect("lab down");
    }
    if let (Some(first), Some(last)) = (medians.first(), medians.last()) {
        println!(
            "ratio plan({}+{}) / plan({}+{}) = {:.2} (target: at most 2)",
            last.0 .0,
            last.0 .1,
            first.0 .0,
            first.0 .1,
            last.1.as_secs_f64() / first.1.as_secs_f64()
        );
    }
}
