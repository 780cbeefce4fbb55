//! How long issuing a whole rotate-all PKI for a 3-master cluster takes, next to the same
//! number of `openssl genrsa` runs on the same machine in the same run.
//!
//! The PKI: cluster CA, apiserver, client, kubeconfig, etcdserver, etcdclient, 3 etcdpeer,
//! front-proxy CA, front-proxy client: 11 keys. Key generation dominates, and RSA key
//! generation time varies a lot from key to key (prime search), so every figure is the
//! median of several rounds, and the contenders take turns inside each round so that the
//! load of other processes on the machine spreads evenly over them.
//!
//! Run: `cargo bench --bench issue_pki`. Each key size runs at least 3 rounds and then
//! stops at its time budget (so the whole run stays near three minutes on an idle 2-core
//! machine); `ISSUE_PKI_ROUNDS_2048` / `ISSUE_PKI_ROUNDS_4096` fix the round counts.

use certrotate::pki::issue::{self, CertificateAuthority, GeneratedKey};
use certrotate::pki::{CertTemplate, ExtendedUsage, KeyCertPair, KeySpec};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const KEYS_IN_PKI: usize = 11;
const OPENSSL_PARALLEL_WORKERS: usize = 2;

/// One contender's samples: wall-clock time and CPU time (its own for us, the children's
/// for openssl). CPU time says what the work costs even when other builds share the cores.
#[derive(Default)]
struct Samples {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

impl Samples {
    fn record(&mut self, work: impl FnOnce()) {
        let cpu_before = cpu_times();
        let started = Instant::now();
        work();
        self.wall.push(started.elapsed());
        let cpu_after = cpu_times();
        self.cpu.push((cpu_after.own + cpu_after.children).saturating_sub(cpu_before.own + cpu_before.children));
    }

    fn medians(&mut self) -> (Duration, Duration) {
        (median(&mut self.wall), median(&mut self.cpu))
    }
}

fn main() {
    if Command::new("openssl").arg("version").stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
        eprintln!("issue_pki: `openssl` is not on PATH; the comparison needs it");
        std::process::exit(1);
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("issue_pki: {KEYS_IN_PKI} keys per PKI (3 masters, rotate all); {cores} cores; load average at start: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!("medians over rounds; wall = elapsed time, cpu = CPU seconds spent (ours: this process; openssl: its children)");
    let total = Instant::now();
    // (spec, bits, minimum rounds, maximum rounds, time budget for the size, env override)
    for (spec, bits, min_rounds, max_rounds, budget, env) in [
        (KeySpec::Rsa2048, 2048, 3, 9, Duration::from_secs(40), "ISSUE_PKI_ROUNDS_2048"),
        (KeySpec::Rsa4096, 4096, 3, 7, Duration::from_secs(110), "ISSUE_PKI_ROUNDS_4096"),
    ] {
        let fixed_rounds: Option<usize> = std::env::var(env).ok().and_then(|v| v.parse().ok()).filter(|r| *r > 0);
        let mut ours_parallel = Samples::default();
        let mut ours_sequential = Samples::default();
        let mut openssl_sequential = Samples::default();
        let mut openssl_parallel = Samples::default();
        let size_started = Instant::now();
        let mut rounds = 0;
        loop {
            let enough = match fixed_rounds {
                Some(fixed) => rounds >= fixed,
                None => rounds >= max_rounds || (rounds >= min_rounds && size_started.elapsed() >= budget),
            };
            if enough {
                break;
            }
            // Rotate who goes first: a burst of outside load then hits each contender alike.
            for turn in 0..4 {
                match (rounds + turn) % 4 {
                    0 => ours_parallel.record(|| issue_full_pki(spec)),
                    1 => ours_sequential.record(|| sequential_keys(spec)),
                    2 => openssl_sequential.record(|| openssl_genrsa(bits, 1)),
                    _ => openssl_parallel.record(|| openssl_genrsa(bits, OPENSSL_PARALLEL_WORKERS)),
                }
            }
            rounds += 1;
        }
        let (ours_par_wall, ours_par_cpu) = ours_parallel.medians();
        let (ours_seq_wall, ours_seq_cpu) = ours_sequential.medians();
        let (ssl_seq_wall, ssl_seq_cpu) = openssl_sequential.medians();
        let (ssl_par_wall, ssl_par_cpu) = openssl_parallel.medians();
        println!();
        println!("RSA {bits}, {rounds} rounds");
        println!("  {:<40} {:>9} {:>9}", "", "wall", "cpu");
        for (label, wall, cpu) in [
            ("ours: full PKI, keys on all cores", ours_par_wall, ours_par_cpu),
            ("ours: 11 keys one after another", ours_seq_wall, ours_seq_cpu),
            ("openssl genrsa x11, sequential", ssl_seq_wall, ssl_seq_cpu),
            ("openssl genrsa x11, 2 workers", ssl_par_wall, ssl_par_cpu),
        ] {
            println!("  {label:<40} {:>9} {:>9}", show(wall), show(cpu));
        }
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(f64::EPSILON);
        println!(
            "  ratios (ours / openssl; < 1 means faster): full PKI vs 2 workers {:.2} wall; full PKI vs sequential {:.2} wall;",
            ratio(ours_par_wall, ssl_par_wall),
            ratio(ours_par_wall, ssl_seq_wall)
        );
        println!(
            "  sequential vs sequential {:.2} wall, {:.2} cpu; spread of full-PKI wall times: {} .. {}",
            ratio(ours_seq_wall, ssl_seq_wall),
            ratio(ours_seq_cpu, ssl_seq_cpu),
            show(*ours_parallel.wall.first().unwrap_or(&Duration::ZERO)),
            show(*ours_parallel.wall.last().unwrap_or(&Duration::ZERO)),
        );
    }
    println!();
    println!("whole bench: {}", show(total.elapsed()));
}

struct CpuTimes {
    own: Duration,
    children: Duration,
}

/// utime+stime of this process (all threads) and of its waited-for children, from
/// /proc/self/stat (fields 14-17, in clock ticks of 1/100 s on Linux).
fn cpu_times() -> CpuTimes {
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; fields are counted after its ')'.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<u64> = after_name.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // after_name starts at field 3, so field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    let ticks = |t: u64| Duration::from_millis(t * 1000 / TICKS_PER_SECOND);
    CpuTimes { own: ticks(field(14) + field(15)), children: ticks(field(16) + field(17)) }
}

/// Sorts `samples` and returns the median.
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    match samples.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2,
    }
}

fn show(duration: Duration) -> String {
    format!("{:.3}s", duration.as_secs_f64())
}

fn template(cn: &str, organization: Option<&str>, usages: &[ExtendedUsage], key: KeySpec, is_ca: bool) -> CertTemplate {
    let now = time::OffsetDateTime::now_utc();
    let ips: Vec<IpAddr> = ["10.255.255.5", "127.0.0.1", "10.255.255.15", "10.255.255.6", "10.255.255.7", "10.0.0.1"]
        .iter()
        .map(|ip| ip.parse().expect("literal IP"))
        .collect();
    let serves = usages.contains(&ExtendedUsage::ServerAuth);
    CertTemplate {
        common_name: cn.into(),
        organization: organization.map(str::to_owned),
        dns_sans: if cn == "apiserver" {
            ["bench.local.cloudapp.azurestack.external", "localhost", "kubernetes", "kubernetes.default"]
                .map(String::from)
                .to_vec()
        } else {
            vec![]
        },
        ip_sans: if serves { ips } else { vec![] },
        is_ca,
        extended_usages: usages.to_vec(),
        key,
        not_before: now,
        not_after: now + time::Duration::days(if is_ca { 30 * 365 } else { 2 * 365 }),
    }
}

/// Issues the 11-key PKI: all keys generated in parallel, then the two CAs self-signed and
/// every leaf signed by its CA, everything PEM-encoded as it would be written.
fn issue_full_pki(key: KeySpec) {
    use ExtendedUsage::{ClientAuth, ServerAuth};
    let both = [ServerAuth, ClientAuth];
    let cluster_ca = template("ca", None, &[], key, true);
    let proxy_ca = template("proxyClientCA", None, &[], key, true);
    let cluster_leaves = vec![
        template("apiserver", None, &[ServerAuth], key, false),
        template("client", Some("system:masters"), &[ClientAuth], key, false),
        template("client", Some("system:masters"), &[ClientAuth], key, false),
        template("etcdserver", None, &both, key, false),
        template("etcdclient", None, &both, key, false),
        template("etcdpeer", None, &both, key, false),
        template("etcdpeer", None, &both, key, false),
        template("etcdpeer", None, &both, key, false),
    ];
    let proxy_client = template("aggregator", Some("system:masters"), &[ClientAuth], key, false);

    let mut keys: std::vec::IntoIter<GeneratedKey> =
        issue::generate_keys(&[key; KEYS_IN_PKI]).expect("key generation").into_iter();
    let mut take_key = || keys.next().expect("11 keys");
    let ca_pair: KeyCertPair = issue::issue_ca_with_key(&cluster_ca, &take_key()).expect("cluster CA");
    let proxy_pair = issue::issue_ca_with_key(&proxy_ca, &take_key()).expect("front-proxy CA");
    let cluster_authority = CertificateAuthority::load(&ca_pair).expect("load cluster CA");
    let proxy_authority = CertificateAuthority::load(&proxy_pair).expect("load front-proxy CA");
    let mut issued = vec![ca_pair, proxy_pair];
    for leaf in &cluster_leaves {
        issued.push(cluster_authority.issue_with_key(leaf, &take_key()).expect("leaf"));
    }
    issued.push(proxy_authority.issue_with_key(&proxy_client, &take_key()).expect("front-proxy client"));
    assert_eq!(issued.len(), KEYS_IN_PKI);
    std::hint::black_box(issued);
}

/// Our key generation with no parallelism, for a like-for-like look at the primitive.
fn sequential_keys(key: KeySpec) {
    for _ in 0..KEYS_IN_PKI {
        let generated = issue::generate_key(key).expect("key generation");
        std::hint::black_box(generated.to_pem().expect("PEM"));
    }
}

/// `KEYS_IN_PKI` runs of `openssl genrsa` shared by `workers` threads.
fn openssl_genrsa(bits: u32, workers: usize) {
    let next = AtomicUsize::new(0);
    let bits = bits.to_string();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < KEYS_IN_PKI {
                    let status = Command::new("openssl")
                        .args(["genrsa", "-out", "/dev/null", &bits])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("openssl runs");
                    assert!(status.success(), "openssl genrsa failed");
                }
            });
        }
    });
}
