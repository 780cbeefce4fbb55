//! Benchmark (issue 4): wall time and peak memory of `certrotate plan` on lab clusters of
//! 3+2, 3+20 and 3+50 nodes (certificates expiring in 20 days, profile renew-expiring), SSH
//! logins per node counted at each node's sshd, and where the machine's CPU went during the
//! plan. Prints figures and the ratio plan(3+50) / plan(3+2); it asserts only that each plan
//! found changes (targets are judged from the figures).
//!
//! The lab runs every node on this one machine, so a plan of 3+50 also pays, on the same
//! cores, for the work that would run on 53 separate nodes. The CPU columns say whose work
//! it was (cgroup v1 cpuacct): `client` is certrotate and every ssh process it starts (the
//! operator's machine), `nodes` is everything the nodes' sshd run for the plan (sshd
//! sessions, sudo, the refresh script), `lab` is the rest of the machine in the same window
//! (etcd, the apiserver and kubelet stand-ins, the kernel), and `busy` the share of all cores
//! in use. Kubelets beat every 10 s here, as Kubernetes' do (the tests' labs use 2 s).
//!
//! Run as root after building certrotate in the same profile:
//!   cargo build --workspace && cargo bench -p certrotate-lab --bench plan_scale --profile dev
//! `PLAN_SCALE_SHAPES=3x2,3x50`, `PLAN_SCALE_ROUNDS=3`, `PLAN_SCALE_PARALLELISM=10` and
//! `PLAN_SCALE_HEARTBEAT=10s` change what is measured. `PLAN_SCALE_COMPARE=PATH` also runs
//! another certrotate binary (e.g. one built before a change), alternating with this one
//! round by round on the same lab, and prints both rows and their ratio.

#[path = "support/mod.rs"]
mod support;

use lab::spec::{Expiry, LabSpec};
use lab::{Lab, UpOptions};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{cores, machine_busy, median, pids_with_cmdline, run_measured, sibling_binary, CpuGroup};

/// One plan run's figures.
struct Round {
    wall: Duration,
    max_rss_kib: i64,
    client_cpu: Option<Duration>,
    nodes_cpu: Option<Duration>,
    busy: Duration,
    logins_per_node: (usize, usize),
    jumpbox_logins: usize,
}

struct Setup<'a> {
    lab: &'a Lab,
    nodes: &'a [String],
    args: Vec<String>,
    nodes_group: Option<&'a CpuGroup>,
    lab_dir: String,
}

fn plan_once(certrotate: &PathBuf, setup: &Setup, round: usize) -> Round {
    // sshd listeners restarted since the last round would count as lab: put them in again.
    if let Some(group) = setup.nodes_group {
        let listeners = pids_with_cmdline(&setup.lab_dir, "sshd");
        assert!(listeners.len() >= setup.nodes.len(), "found {} sshd under {} for {} nodes", listeners.len(), setup.lab_dir, setup.nodes.len());
        for pid in listeners {
            group.add(pid);
        }
    }
    let before: Vec<usize> = setup.nodes.iter().map(|n| setup.lab.ssh_logins(n).unwrap_or(0)).collect();
    // A group per round: one left busy by a lingering ssh must not blank the next rounds.
    let client = CpuGroup::new(&format!("client{round}"));
    let nodes_before = setup.nodes_group.and_then(|g| g.usage());
    let busy_before = machine_busy();
    let mut cmd = Command::new(certrotate);
    cmd.args(&setup.args).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(g) = &client {
        g.enter_on_spawn(&mut cmd);
    }
    let m = run_measured(&mut cmd);
    // The machine and the nodes are read over the plan's own wall time, like the wall figure.
    let busy = machine_busy().saturating_sub(busy_before);
    let nodes_cpu = match (nodes_before, setup.nodes_group.and_then(|g| g.usage())) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    // ssh ControlMasters close after certrotate exits; their CPU is certrotate's too. One
    // still running after 5 s is a leak worth knowing about.
    let client_cpu = client.as_ref().and_then(|g| {
        let empty = g.wait_empty(Duration::from_secs(5));
        if !empty {
            eprintln!("warning: processes certrotate started were still running 5 s after it exited");
        }
        g.usage()
    });
    assert_eq!(m.code, 2, "plan should find changes on an expiring cluster");
    let mut per_node = (usize::MAX, 0usize);
    let mut jumpbox_logins = 0;
    for (i, (n, b)) in setup.nodes.iter().zip(before).enumerate() {
        let delta = setup.lab.ssh_logins(n).unwrap_or(0) - b;
        if i == 0 {
            jumpbox_logins = delta;
        } else {
            per_node = (per_node.0.min(delta), per_node.1.max(delta));
        }
    }
    Round { wall: m.wall, max_rss_kib: m.max_rss_kib, client_cpu, nodes_cpu, busy, logins_per_node: per_node, jumpbox_logins }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("n/a".into(), |d| format!("{} ms", d.as_millis()))
}

/// One printed row: medians over the rounds, CPU per node.
fn row(label: &str, shape: &str, up: Duration, rounds: &[Round], node_count: usize) -> Duration {
    let wall = median(rounds.iter().map(|r| r.wall).collect());
    let opt_median = |f: &dyn Fn(&Round) -> Option<Duration>| -> Option<Duration> {
        let v: Option<Vec<Duration>> = rounds.iter().map(f).collect();
        v.map(median)
    };
    let client = opt_median(&|r| r.client_cpu);
    let nodes = opt_median(&|r| r.nodes_cpu);
    let busy = median(rounds.iter().map(|r| r.busy).collect());
    let lab = match (client, nodes) {
        (Some(c), Some(n)) => Some(busy.saturating_sub(c + n)),
        _ => None,
    };
    let per_node = |d: Option<Duration>| d.map_or("n/a".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0 / node_count as f64));
    let peak = rounds.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
    let logins = (rounds.iter().map(|r| r.logins_per_node.0).min().unwrap_or(0), rounds.iter().map(|r| r.logins_per_node.1).max().unwrap_or(0));
    let jumpbox = rounds.iter().map(|r| r.jumpbox_logins).max().unwrap_or(0);
    println!(
        "{:<7} {:<9} {:>7.1} s {:>8.2} s {:>7.1} MiB {:>9} {:>9} {:>9} {:>5.0}% {:>6}/{:>4} {:>6} {:>8}",
        shape,
        label,
        up.as_secs_f64(),
        wall.as_secs_f64(),
        peak as f64 / 1024.0,
        ms(client),
        ms(nodes),
        ms(lab),
        busy.as_secs_f64() * 100.0 / (wall.as_secs_f64() * cores() as f64),
        per_node(client),
        per_node(nodes),
        if logins.0 == logins.1 { logins.0.to_string() } else { format!("{}..{}", logins.0, logins.1) },
        jumpbox
    );
    wall
}

fn main() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab needs root");
    let certrotate = sibling_binary("certrotate");
    let compare: Option<PathBuf> = std::env::var_os("PLAN_SCALE_COMPARE").map(PathBuf::from);
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
    let parallelism: Option<String> = std::env::var("PLAN_SCALE_PARALLELISM").ok();
    let heartbeat = std::env::var("PLAN_SCALE_HEARTBEAT")
        .ok()
        .map(|h| humantime::parse_duration(&h).expect("PLAN_SCALE_HEARTBEAT like 10s"))
        .unwrap_or(Duration::from_secs(10));
    let nodes_group = CpuGroup::new("nodes");
    if nodes_group.is_none() {
        println!("(no writable cgroup v1 cpuacct here: CPU columns are n/a)");
    }

    println!(
        "certrotate plan on lab clusters (renew-expiring, certificates expiring in 20 days), {rounds} rounds each, --parallelism {}, kubelet heartbeat {}, {} cores",
        parallelism.as_deref().unwrap_or("10 (default)"),
        humantime::format_duration(heartbeat),
        cores()
    );
    println!(
        "{:<7} {:<9} {:>9} {:>10} {:>11} {:>9} {:>9} {:>9} {:>6} {:>11} {:>6} {:>8}",
        "shape", "binary", "lab up", "plan", "peak RSS", "client", "nodes", "lab", "busy", "ms/node c/n", "logins", "jumpbox"
    );
    let mut walls = Vec::new();
    for (masters, agents) in shapes {
        let dir = tempfile::tempdir().expect("temp dir");
        let up_start = Instant::now();
        let lab = Lab::up(
            dir.path(),
            // plan restarts nothing: no need to wait out an apiserver start-up at lab up.
            LabSpec { masters, agents, expiry: Expiry::In(20 * 86_400), heartbeat, ..LabSpec::default() }.fast_restarts(),
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
        let mut args: Vec<String> = ["plan", "--api-model", &env["LAB_API_MODEL"], "--ssh-host", &env["LAB_SSH_HOST"]]
            .iter()
            .chain(&["--linux-ssh-private-key", &env["LAB_SSH_KEY"], "--known-hosts", &env["LAB_KNOWN_HOSTS"]])
            .chain(&["--profile", "renew-expiring", "--detailed-exitcode"])
            .map(|s| s.to_string())
            .collect();
        if let Some(p) = &parallelism {
            args.extend(["--parallelism".to_string(), p.clone()]);
        }
        let setup = Setup {
            lab: &lab,
            nodes: &nodes,
            args,
            nodes_group: nodes_group.as_ref(),
            lab_dir: format!("{}/nodes/", dir.path().canonicalize().unwrap_or_else(|_| dir.path().to_path_buf()).display()),
        };
        // Let the lab settle after start-up (registrations, first heartbeats) before measuring.
        std::thread::sleep(Duration::from_secs(3));
        let mut this = Vec::new();
        let mut other = Vec::new();
        for _ in 0..rounds {
            if let Some(path) = &compare {
                other.push(plan_once(path, &setup, 2 * this.len() + 1));
            }
            this.push(plan_once(&certrotate, &setup, 2 * this.len()));
        }
        let shape = format!("{masters}+{agents}");
        let wall = row("this", &shape, up_time, &this, nodes.len());
        if !other.is_empty() {
            let other_wall = row("compare", &shape, up_time, &other, nodes.len());
            println!("{:<7} this / compare = {:.2}", "", wall.as_secs_f64() / other_wall.as_secs_f64());
        }
        walls.push(((masters, agents), wall));
        lab.down().expect("lab down");
    }
    if let (Some(first), Some(last)) = (walls.first(), walls.last()) {
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
