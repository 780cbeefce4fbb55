//! How long issuing a whole rotate-all PKI for a 3-master cluster takes, next to the same
//! number of `openssl genrsa` runs on the same machine in the same run.
//!
//! The PKI: cluster CA, apiserver, client, kubeconfig, etcdserver, etcdclient, 3 etcdpeer,
//! front-proxy CA, front-proxy client: 11 keys. Key generation dominates, and RSA key
//! generation time varies a lot from key to key (prime search), so every figure is the
//! median of several rounds, and the contenders take turns inside each round so that the
//! load of other processes on the machine spreads evenly over them.
//!
//! Run: `cargo bench --bench issue_pki`. Rounds per size come from
//! `ISSUE_PKI_ROUNDS_2048` / `ISSUE_PKI_ROUNDS_4096` (defaults below keep the run under
//! about three minutes on a 2-core machine).

use certrotate::pki::issue::{self, CertificateAuthority, GeneratedKey};
use certrotate::pki::{CertTemplate, ExtendedUsage, KeyCertPair, KeySpec};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const KEYS_IN_PKI: usize = 11;
const OPENSSL_PARALLEL_WORKERS: usize = 2;

fn main() {
    if Command::new("openssl").arg("version").stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
        eprintln!("issue_pki: `openssl` is not on PATH; the comparison needs it");
        std::process::exit(1);
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("issue_pki: {KEYS_IN_PKI} keys per PKI (3 masters, rotate all); {cores} cores; median of rounds");
    println!(
        "{:<9} {:>6} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "key", "rounds", "ours ||", "ours seq", "openssl seq", "openssl ||2", "||/seq", "||/||2"
    );
    let total = Instant::now();
    for (spec, bits, default_rounds, env) in
        [(KeySpec::Rsa2048, 2048, 9, "ISSUE_PKI_ROUNDS_2048"), (KeySpec::Rsa4096, 4096, 5, "ISSUE_PKI_ROUNDS_4096")]
    {
        let rounds = std::env::var(env).ok().and_then(|v| v.parse().ok()).filter(|r| *r > 0).unwrap_or(default_rounds);
        let mut ours_parallel = Vec::new();
        let mut ours_sequential = Vec::new();
        let mut openssl_sequential = Vec::new();
        let mut openssl_parallel = Vec::new();
        for round in 0..rounds {
            // Rotate who goes first: a burst of outside load then hits each contender alike.
            for turn in 0..4 {
                match (round + turn) % 4 {
                    0 => ours_parallel.push(time(|| issue_full_pki(spec))),
                    1 => ours_sequential.push(time(|| sequential_keys(spec))),
                    2 => openssl_sequential.push(time(|| openssl_genrsa(bits, 1))),
                    _ => openssl_parallel.push(time(|| openssl_genrsa(bits, OPENSSL_PARALLEL_WORKERS))),
                }
            }
        }
        let (ours_par, ours_seq, ssl_seq, ssl_par) = (
            median(&mut ours_parallel),
            median(&mut ours_sequential),
            median(&mut openssl_sequential),
            median(&mut openssl_parallel),
        );
        println!(
            "RSA {bits:<5} {rounds:>6} {:>12} {:>12} {:>12} {:>12} {:>10.2} {:>10.2}",
            show(ours_par),
            show(ours_seq),
            show(ssl_seq),
            show(ssl_par),
            ours_par.as_secs_f64() / ssl_seq.as_secs_f64(),
            ours_par.as_secs_f64() / ssl_par.as_secs_f64(),
        );
        println!(
            "          ours seq / openssl seq = {:.2}; spread of ours || over rounds: {} .. {}",
            ours_seq.as_secs_f64() / ssl_seq.as_secs_f64(),
            show(*ours_parallel.first().unwrap_or(&Duration::ZERO)),
            show(*ours_parallel.last().unwrap_or(&Duration::ZERO)),
        );
    }
    println!("columns: `ours ||` = full PKI (keys on all cores, then signing and PEM); `ours seq` = the");
    println!("11 keys one after another; `openssl seq` = 11 sequential `openssl genrsa -out /dev/null BITS`;");
    println!("`openssl ||2` = the same 11 runs on {OPENSSL_PARALLEL_WORKERS} workers. Ratios < 1 mean we are faster.");
    println!("whole bench: {}", show(total.elapsed()));
}

fn time(work: impl FnOnce()) -> Duration {
    let started = Instant::now();
    work();
    started.elapsed()
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
