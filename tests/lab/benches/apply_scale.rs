//! Benchmark (issue 5): wall time of `certrotate apply` on lab clusters of 3+2 and 3+20 nodes
//! (certificates expiring in 20 days), profiles renew-expiring and rotate-all, split into
//! waiting (gates, reboots) and certrotate's own work, and SSH logins per node counted at each
//! node's sshd during the apply. Target, judged from the figures and not asserted: own work
//! under 10% of the total. The bench asserts only that every apply exited 0.
//!
//! What counts as waiting: the wall-clock time during which only gates, service restarts and
//! VM reboots were in flight (apply's `waitingSecs`). Everything else is own work, shown two
//! ways: `own%` = (wall − waiting) / wall, which also charges certrotate with taking the lock,
//! the staleness re-read of every node before the walk, releasing the lock, closing sessions
//! and process start and exit (none of them steps); and `steps%` = apply's `ownWorkSecs` /
//! `totalSecs`, the share of its own steps only, a lower bound. Restarts and gates count as
//! waiting whole, including the SSH round trip that starts or probes them.
//!
//! Every run gets a fresh lab (runs stay independent): `certrotate plan --profile P --out FILE`,
//! then `certrotate apply FILE --json`, whose JSON lines give the summary (applyFinished) and
//! the own-work steps (stepFinished with `waiting: false`). Two notions of own work are shown:
//! apply's own wall-clock accounting, and the CPU time (user + sys, wait4 rusage) of the
//! certrotate process, which excludes the daemonized ssh ControlMaster processes.
//!
//! Run as root after building certrotate in the same profile:
//!   cargo build --workspace && cargo bench -p certrotate-lab --bench apply_scale --profile dev
//! `APPLY_SCALE_SHAPES=3x2,3x20`, `APPLY_SCALE_PROFILES=renew-expiring,rotate-all` and
//! `APPLY_SCALE_ROUNDS=1` (the defaults) change what is measured. `APPLY_SCALE_REBOOT_DELAY=90s`
//! makes every VM restart through the Azure stand-in take that long (the lab's default is a
//! few seconds; Azure takes minutes), to judge the own-work share under realistic waits;
//! `APPLY_SCALE_RESTART_DELAY=10s` makes every `systemctl restart` keep its unit down that long
//! (the lab restarts at once; a real etcd, kubelet or apiserver takes seconds to tens of
//! seconds). With either set, every shape and profile also runs on the instant lab and both
//! rows are printed side by side with their ratios, so delayed figures are never read alone.
//! `APPLY_SCALE_CERTROTATE=PATH` measures another certrotate binary (e.g. a copy built
//! before a change) against the same lab. The JSON lines and stderr of a failed apply are
//! kept under `$TMPDIR/apply_scale-<pid>/`.

#[path = "support/mod.rs"]
mod support;

use lab::spec::{Expiry, LabSpec};
use lab::{Lab, UpOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{sibling_binary, Measured};
use std::time::{Duration, Instant};

/// Runs a command with stdout and stderr into files; see [`support::run_measured`].
fn run_measured(cmd: &mut Command, stdout: &Path, stderr: &Path) -> Measured {
    let out = std::fs::File::create(stdout).expect("stdout file");
    let err = std::fs::File::create(stderr).expect("stderr file");
    support::run_measured(cmd.stdout(out).stderr(err))
}

/// What the JSON lines of one apply say.
#[derive(Default)]
struct Report {
    summary: Option<Value>,
    /// Own-work seconds (stepFinished, not waiting) per operation, and how many steps.
    own_by_operation: BTreeMap<String, (f64, usize)>,
    /// The same for waiting steps (gates, reboots).
    waiting_by_operation: BTreeMap<String, (f64, usize)>,
    failures: Vec<String>,
    warnings: Vec<String>,
}

fn read_report(stdout: &Path) -> Report {
    let text = std::fs::read_to_string(stdout).unwrap_or_default();
    let mut operation_of: BTreeMap<String, String> = BTreeMap::new();
    let mut r = Report::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        match v["event"].as_str() {
            Some("stepStarted") => {
                operation_of.insert(s("id"), s("operation"));
            }
            Some("stepFinished") => {
                let id = s("id");
                let op = operation_of.get(&id).cloned().unwrap_or_else(|| id.split('@').next().unwrap_or(&id).to_string());
                let by = if v["waiting"] == Value::Bool(true) { &mut r.waiting_by_operation } else { &mut r.own_by_operation };
                let e = by.entry(op).or_default();
                e.0 += v["elapsedSecs"].as_f64().unwrap_or(0.0);
                e.1 += 1;
            }
            Some("stepFailed") => r.failures.push(format!("{}: {} {:?}", s("id"), s("error"), v["observed"])),
            Some("warning") => r.warnings.push(s("message")),
            Some("applyFinished") => r.summary = Some(v["summary"].clone()),
            _ => {}
        }
    }
    r
}

fn range(lo: usize, hi: usize) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}..{hi}")
    }
}

struct Row {
    shape: (u8, u16),
    profile: String,
    delayed: bool,
    wall: Duration,
    own_pct: f64,
    ok: bool,
}

fn main() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab needs root");
    let certrotate = match std::env::var_os("APPLY_SCALE_CERTROTATE") {
        Some(p) => PathBuf::from(p),
        None => sibling_binary("certrotate"),
    };
    let lab_binary = sibling_binary("lab");
    let shapes: Vec<(u8, u16)> = std::env::var("APPLY_SCALE_SHAPES")
        .unwrap_or_else(|_| "3x2,3x20".into())
        .split(',')
        .map(|s| {
            let (m, a) = s.split_once('x').expect("shape MxA");
            (m.parse().expect("masters"), a.parse().expect("agents"))
        })
        .collect();
    let profiles: Vec<String> = std::env::var("APPLY_SCALE_PROFILES")
        .unwrap_or_else(|_| "renew-expiring,rotate-all".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let rounds: usize = std::env::var("APPLY_SCALE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    let reboot_delay: Option<Duration> = std::env::var("APPLY_SCALE_REBOOT_DELAY")
        .ok()
        .map(|d| humantime::parse_duration(&d).expect("APPLY_SCALE_REBOOT_DELAY is a duration such as 90s"));
    let restart_delay: Option<Duration> = std::env::var("APPLY_SCALE_RESTART_DELAY")
        .ok()
        .map(|d| humantime::parse_duration(&d).expect("APPLY_SCALE_RESTART_DELAY is a duration such as 10s"));
    // The instant lab always runs; the delayed one as well when a delay is set.
    let mut modes: Vec<bool> = vec![false];
    if reboot_delay.is_some() || restart_delay.is_some() {
        modes.push(true);
    }
    let keep = std::env::temp_dir().join(format!("apply_scale-{}", std::process::id()));

    println!("certrotate apply ({}) on lab clusters (certificates expiring in 20 days), a fresh lab per run, {rounds} round(s) each", certrotate.display());
    if modes.len() > 1 {
        let d = |d: Option<Duration>| d.map(|d| humantime::format_duration(d).to_string()).unwrap_or_else(|| "instant".into());
        println!(
            "lab \"delayed\": VM restarts {} (APPLY_SCALE_REBOOT_DELAY), service restarts {} (APPLY_SCALE_RESTART_DELAY), apiserver start-up 15 s; lab \"instant\": no start-up time",
            d(reboot_delay),
            d(restart_delay)
        );
    }
    println!("own% = (wall - waiting) / wall, everything not spent waiting on the cluster; steps% = own steps' wall-clock / apply's total");
    let header = format!(
        "{:<6} {:<15} {:<8} {:>7} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>11} {:>8}",
        "shape", "profile", "lab", "lab up", "wall", "CPU", "peak RSS", "total", "waiting", "own", "own%", "steps%", "API down", "logins/node", "jumpbox"
    );
    println!("{header}");
    let mut rows: Vec<Row> = Vec::new();
    let mut details: Vec<String> = Vec::new();
    for &(masters, agents) in &shapes {
        for profile in &profiles {
            for &delayed in &modes {
            for round in 0..rounds {
                let dir = tempfile::tempdir().expect("temp dir");
                let up_start = Instant::now();
                let lab = Lab::up(
                    dir.path(),
                    {
                        // "delayed" keeps kube-apiserver's real start-up (15 s to ready);
                        // "instant" makes it instant, as before the lab had one.
                        let spec = LabSpec { masters, agents, expiry: Expiry::In(20 * 86_400), ..LabSpec::default() };
                        if delayed { spec } else { spec.fast_restarts() }
                    },
                    UpOptions { lab_binary: Some(lab_binary.clone()), owner_pid: Some(std::process::id()), timeout: Some(Duration::from_secs(300)) },
                )
                .expect("lab up");
                let up_time = up_start.elapsed();
                if let Some(d) = reboot_delay.filter(|_| delayed) {
                    lab.fault(lab::control::Fault::RebootDelay { node: None, millis: d.as_millis() as u64 }).expect("set the reboot delay");
                }
                if let Some(d) = restart_delay.filter(|_| delayed) {
                    lab.fault(lab::control::Fault::RestartDelay { node: None, millis: d.as_millis() as u64 }).expect("set the restart delay");
                }
                let env = lab.env();
                let suffix = env["LAB_NAME_SUFFIX"].clone();
                let nodes: Vec<String> = (0..masters)
                    .map(|i| format!("k8s-master-{suffix}-{i}"))
                    .chain((0..agents).map(|i| format!("k8s-agentpool1-{suffix}-{i}")))
                    .collect();
                let cluster_flags = |c: &mut Command| {
                    c.args(["--api-model", &env["LAB_API_MODEL"], "--ssh-host", &env["LAB_SSH_HOST"]])
                        .args(["--linux-ssh-private-key", &env["LAB_SSH_KEY"], "--known-hosts", &env["LAB_KNOWN_HOSTS"]])
                        .env("NO_COLOR", "1");
                };

                let plan_file = dir.path().join(format!("{profile}.plan.yaml"));
                let mut plan = Command::new(&certrotate);
                plan.args(["plan", "--profile", profile, "--out", plan_file.to_str().unwrap()]);
                cluster_flags(&mut plan);
                let planned = plan.output().expect("run certrotate plan");
                assert!(
                    planned.status.success() && plan_file.is_file(),
                    "plan --profile {profile} on {masters}+{agents} failed ({:?}):\n{}\n{}",
                    planned.status.code(),
                    String::from_utf8_lossy(&planned.stdout),
                    String::from_utf8_lossy(&planned.stderr)
                );

                let mut apply = Command::new(&certrotate);
                apply.args(["apply", plan_file.to_str().unwrap(), "--json", "--apiserver", &env["LAB_APISERVER"]]);
                cluster_flags(&mut apply);
                if profile == "rotate-all" {
                    apply
                        .args(["--resource-group", &env["LAB_RESOURCE_GROUP"], "--subscription-id", &env["LAB_SUBSCRIPTION_ID"]])
                        .args(["--ca-bundle", &env["LAB_ARM_CA_BUNDLE"]]);
                }
                let stdout = dir.path().join("apply.jsonl");
                let stderr = dir.path().join("apply.stderr");
                let before: Vec<usize> = nodes.iter().map(|n| lab.ssh_logins(n).unwrap_or(0)).collect();
                let m = run_measured(&mut apply, &stdout, &stderr);
                let after: Vec<usize> = nodes.iter().map(|n| lab.ssh_logins(n).unwrap_or(0)).collect();
                let jumpbox = after[0].saturating_sub(before[0]);
                let (lo, hi) = after[1..]
                    .iter()
                    .zip(&before[1..])
                    .map(|(a, b)| a.saturating_sub(*b))
                    .fold((usize::MAX, 0), |(lo, hi), d| (lo.min(d), hi.max(d)));
                let report = read_report(&stdout);
                let shape = format!("{masters}+{agents}");
                let f = |k: &str| report.summary.as_ref().and_then(|s| s[k].as_f64()).unwrap_or(f64::NAN);
                let (total, waiting, own) = (f("totalSecs"), f("waitingSecs"), f("ownWorkSecs"));
                let wall = m.wall.as_secs_f64();
                let own_pct = 100.0 * (wall - waiting) / wall;
                let mode = if delayed { "delayed" } else { "instant" };
                println!(
                    "{:<6} {:<15} {:<8} {:>5.1} s {:>6.1} s {:>6.1} s {:>5.0} MiB {:>6.1} s {:>6.1} s {:>6.1} s {:>5.1}% {:>6.1}% {:>6.1} s {:>11} {:>8}{}",
                    shape,
                    profile,
                    mode,
                    up_time.as_secs_f64(),
                    m.wall.as_secs_f64(),
                    m.cpu.as_secs_f64(),
                    m.max_rss_kib as f64 / 1024.0,
                    total,
                    waiting,
                    own,
                    own_pct,
                    100.0 * own / total,
                    f("apiDowntimeSecs"),
                    range(lo, hi),
                    jumpbox,
                    if m.code == 0 { String::new() } else { format!("  FAILED (exit {})", m.code) }
                );

                let mut d = format!("{shape} {profile} {mode} (round {}):", round + 1);
                if let Some(s) = &report.summary {
                    let phases: Vec<String> = s["phases"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| format!("{} {:.1} s", p["phase"].as_str().unwrap_or("?"), p["secs"].as_f64().unwrap_or(0.0)))
                        .collect();
                    d.push_str(&format!(
                        "\n  phases: {}\n  CPU {:.1} s = {:.1}% of wall; own work outside steps (lock, staleness re-read, release, scheduling) {:.1} s; process start and exit {:.1} s; API probes {} ({} failed); steps {} done, {} skipped",
                        phases.join(", "),
                        m.cpu.as_secs_f64(),
                        100.0 * m.cpu.as_secs_f64() / m.wall.as_secs_f64(),
                        (total - waiting - own).max(0.0),
                        m.wall.as_secs_f64() - total,
                        s["apiProbes"],
                        s["apiProbeFailures"],
                        s["stepsDone"],
                        s["stepsSkipped"],
                    ));
                } else {
                    d.push_str("\n  no applyFinished summary");
                }
                // Sums of step times: steps run in parallel, so these exceed the wall-clock figures.
                let top = |by: &BTreeMap<String, (f64, usize)>, n: usize| {
                    let mut ops: Vec<(&String, &(f64, usize))> = by.iter().collect();
                    ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
                    let summed: f64 = ops.iter().map(|(_, (s, _))| s).sum();
                    let top: Vec<String> = ops.iter().take(n).map(|(op, (secs, k))| format!("{op} {secs:.1} s ({k} steps)")).collect();
                    format!("(sum of step times {summed:.1} s): {}", top.join(", "))
                };
                d.push_str(&format!("\n  own work by operation {}", top(&report.own_by_operation, 5)));
                d.push_str(&format!("\n  waiting by operation {}", top(&report.waiting_by_operation, 3)));
                for w in &report.warnings {
                    d.push_str(&format!("\n  warning: {w}"));
                }
                if m.code != 0 {
                    for fl in &report.failures {
                        d.push_str(&format!("\n  step failed: {fl}"));
                    }
                    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
                    d.push_str(&format!("\n  apply exited {}; stderr:\n{err}", m.code));
                    let kept = keep.join(format!("{masters}x{agents}-{profile}-{}", round + 1));
                    if std::fs::create_dir_all(&kept).is_ok() {
                        let _ = std::fs::copy(&stdout, kept.join("apply.jsonl"));
                        let _ = std::fs::copy(&stderr, kept.join("apply.stderr"));
                        let _ = std::fs::copy(&plan_file, kept.join("plan.yaml"));
                        d.push_str(&format!("  (JSON lines and stderr kept in {})", kept.display()));
                    }
                }
                details.push(d);
                rows.push(Row { shape: (masters, agents), profile: profile.clone(), delayed, wall: m.wall, own_pct, ok: m.code == 0 });
                lab.down().expect("lab down");
            }
            }
        }
    }

    println!();
    for d in &details {
        println!("{d}");
    }
    println!();
    if let (Some(&first), Some(&last)) = (shapes.first(), shapes.last()) {
        if first != last {
            for profile in &profiles {
                let median = |shape: (u8, u16)| {
                    let mut v: Vec<Duration> = rows.iter().filter(|r| r.shape == shape && &r.profile == profile && r.ok && !r.delayed).map(|r| r.wall).collect();
                    v.sort();
                    v.get(v.len() / 2).copied()
                };
                match (median(first), median(last)) {
                    (Some(a), Some(b)) => println!(
                        "ratio apply({}+{}) / apply({}+{}), {profile}: {:.2}",
                        last.0,
                        last.1,
                        first.0,
                        first.1,
                        b.as_secs_f64() / a.as_secs_f64()
                    ),
                    _ => println!("ratio apply({}+{}) / apply({}+{}), {profile}: n/a (a run failed)", last.0, last.1, first.0, first.1),
                }
            }
        }
    }
    if modes.len() > 1 {
        // Delayed figures next to the instant ones they came from.
        for &shape in &shapes {
            for profile in &profiles {
                let median = |delayed: bool, key: fn(&Row) -> f64| {
                    let mut v: Vec<f64> = rows.iter().filter(|r| r.shape == shape && &r.profile == profile && r.ok && r.delayed == delayed).map(key).collect();
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2).copied()
                };
                let wall = |r: &Row| r.wall.as_secs_f64();
                let own = |r: &Row| r.own_pct;
                match (median(false, wall), median(true, wall), median(false, own), median(true, own)) {
                    (Some(wi), Some(wd), Some(oi), Some(od)) => println!(
                        "{}+{} {profile}: wall instant {wi:.1} s, delayed {wd:.1} s (x{:.2}); own% instant {oi:.1}%, delayed {od:.1}% (x{:.2})",
                        shape.0,
                        shape.1,
                        wd / wi,
                        od / oi
                    ),
                    _ => println!("{}+{} {profile}: instant/delayed ratio n/a (a run failed)", shape.0, shape.1),
                }
            }
        }
    }
    let failed: Vec<String> = rows.iter().filter(|r| !r.ok).map(|r| format!("{}+{} {}", r.shape.0, r.shape.1, r.profile)).collect();
    assert!(failed.is_empty(), "apply failed on: {}", failed.join(", "));
}
