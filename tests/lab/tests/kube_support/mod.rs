//! Shared fixtures for the kube stand-in tests: a throw-away PKI issued by certrotate's own
//! `pki::issue` (so shaped like AKS Engine's, PKCS#1 keys included),
//! a real etcd with client-certificate auth on free local ports, an apiserver stand-in, node
//! roots for kubelet stand-ins, kubeconfigs, and the real kubectl. Everything is torn down
//! by Drop guards: processes killed and reaped, temp dirs removed.
#![allow(dead_code)]

use lab::kube::apiserver::{self, ApiserverConfig};
use lab::kube::controller::ControllerConfig;
use lab::kube::kubelet::{self, KubeletConfig, NodeRole};
use certrotate::pki::{issue, CertTemplate, ExtendedUsage, KeyCertPair, KeySpec};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A certificate authority that can issue leaves, through certrotate's own issuer, so the
/// material is shaped as AKS Engine's is (RSA keys as PKCS#1 PEM).
pub struct TestCa {
    pub cert_pem: String,
    pair: KeyCertPair,
}

fn template(common_name: &str, organization: Option<&str>, ips: &[IpAddr], usages: Vec<ExtendedUsage>, is_ca: bool) -> CertTemplate {
    let now = time::OffsetDateTime::now_utc();
    CertTemplate {
        common_name: common_name.to_owned(),
        organization: organization.map(str::to_owned),
        dns_sans: if is_ca { Vec::new() } else { vec!["localhost".to_owned()] },
        ip_sans: ips.to_vec(),
        is_ca,
        extended_usages: usages,
        key: KeySpec::Rsa2048,
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(365),
    }
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        let pair = issue::issue_ca(&template(common_name, None, &[], Vec::new(), true)).expect("CA issued");
        Self { cert_pem: pair.cert_pem.clone(), pair }
    }

    /// Issues a leaf: (cert PEM, key PEM).
    pub fn issue(&self, common_name: &str, organization: Option<&str>, ips: &[IpAddr], server: bool, client: bool) -> (String, String) {
        let mut usages = Vec::new();
        if server {
            usages.push(ExtendedUsage::ServerAuth);
        }
        if client {
            usages.push(ExtendedUsage::ClientAuth);
        }
        let leaf = issue::issue_leaf(&template(common_name, organization, ips, usages, false), &self.pair).expect("leaf issued");
        (leaf.cert_pem.clone(), leaf.key_pem.clone())
    }
}

/// Writes a file, creating parent directories; keys get mode 0600.
pub fn write(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, contents).expect("write");
    if path.extension().is_some_and(|e| e == "key") {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

/// The files an AKS Engine master holds under /etc/kubernetes/certs, in `dir`.
pub struct ClusterPki {
    pub ca: TestCa,
    pub dir: PathBuf,
}

impl ClusterPki {
    pub fn new(dir: &Path) -> Self {
        let ca = TestCa::new("ca");
        let localhost = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        write(&dir.join("ca.crt"), &ca.cert_pem);
        let (c, k) = ca.issue("apiserver", None, &localhost, true, false);
        write(&dir.join("apiserver.crt"), &c);
        write(&dir.join("apiserver.key"), &k);
        let (c, k) = ca.issue("client", Some("system:masters"), &[], false, true);
        write(&dir.join("client.crt"), &c);
        write(&dir.join("client.key"), &k);
        let (c, k) = ca.issue("etcdserver", None, &localhost, true, true);
        write(&dir.join("etcdserver.crt"), &c);
        write(&dir.join("etcdserver.key"), &k);
        let (c, k) = ca.issue("etcdclient", None, &localhost, true, true);
        write(&dir.join("etcdclient.crt"), &c);
        write(&dir.join("etcdclient.key"), &k);
        Self { ca, dir: dir.to_owned() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Re-issues apiserver.crt/key with a new key pair (what a rotation does).
    pub fn rotate_apiserver(&self) {
        let (c, k) = self.ca.issue("apiserver", None, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], true, false);
        write(&self.path("apiserver.crt"), &c);
        write(&self.path("apiserver.key"), &k);
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A real etcd 3.4 with TLS and client-certificate auth; killed on drop.
pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    data: tempfile::TempDir,
    args: Vec<String>,
}

impl Etcd {
    pub fn start(pki: &ClusterPki) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let client_port = free_port();
        let peer_port = free_port();
        let endpoint = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args: Vec<String> = vec![
            "--name=test".into(),
            format!("--data-dir={}", data.path().join("etcd").display()),
            format!("--listen-client-urls={endpoint}"),
            format!("--advertise-client-urls={endpoint}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=test={peer}"),
            format!("--cert-file={}", pki.path("etcdserver.crt").display()),
            format!("--key-file={}", pki.path("etcdserver.key").display()),
            format!("--trusted-ca-file={}", pki.path("ca.crt").display()),
            "--client-cert-auth".into(),
            "--log-level=error".into(),
        ];
        let mut etcd = Self { child: None, endpoint, data, args };
        etcd.resume();
        etcd
    }

    /// Starts etcd again on the same ports and data (after `stop`).
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.data.path().join("etcd.log")).expect("log file");
        let child = Command::new("/usr/bin/etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (is /usr/bin/etcd installed?)");
        self.child = Some(child);
    }

    /// Kills etcd, keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Timings short enough for tests.
pub fn fast_controllers() -> ControllerConfig {
    ControllerConfig {
        resync_period: Duration::from_millis(250),
        node_monitor_grace_period: Duration::from_secs(4),
        leader_lease_duration: Duration::from_secs(2),
        ..ControllerConfig::default()
    }
}

pub fn apiserver_config(pki: &ClusterPki, etcd: &Etcd, bind: SocketAddr) -> ApiserverConfig {
    ApiserverConfig {
        bind_address: bind,
        node_name: "k8s-master-12345678-0".to_owned(),
        tls_cert_file: pki.path("apiserver.crt"),
        tls_private_key_file: pki.path("apiserver.key"),
        client_ca_file: pki.path("ca.crt"),
        etcd_servers: vec![etcd.endpoint.clone()],
        etcd_cafile: pki.path("ca.crt"),
        etcd_certfile: pki.path("etcdclient.crt"),
        etcd_keyfile: pki.path("etcdclient.key"),
        service_account_key_file: None,
        advertise_address: None,
        controllers: fast_controllers(),
        // Explicitly short: these tests need speed, not kube-apiserver's start-up time.
        startup_delay: std::time::Duration::ZERO,
        shutdown_delay_duration: std::time::Duration::ZERO,
    }
}

/// An apiserver stand-in serving on a free local port until dropped.
pub struct Apiserver {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), apiserver::ApiserverError>>>,
}

impl Apiserver {
    pub async fn start(config: ApiserverConfig) -> Self {
        let listener = tokio::net::TcpListener::bind(config.bind_address).await.expect("bind apiserver");
        let address = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(apiserver::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Self { address, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Asks the apiserver to stop (what SIGTERM does to `lab apiserver`) without waiting.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until a stopped apiserver has finished.
    pub async fn finished(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the apiserver and waits until it has released what it held.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Writes a kubeconfig with file references (as AKS Engine writes them on nodes).
pub fn kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: admin\ncurrent-context: lab\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// A node's filesystem root holding ca.crt, client.crt/key and /var/lib/kubelet/kubeconfig.
pub struct NodeRoot {
    pub root: tempfile::TempDir,
}

impl NodeRoot {
    pub fn new(pki: &ClusterPki, server: &str) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let certs = root.path().join("etc/kubernetes/certs");
        for name in ["ca.crt", "client.crt", "client.key"] {
            write(&certs.join(name), &std::fs::read_to_string(pki.path(name)).expect("pki file"));
        }
        let node_certs = Path::new("/etc/kubernetes/certs");
        write(
            &root.path().join("var/lib/kubelet/kubeconfig"),
            &kubeconfig(server, &node_certs.join("ca.crt"), &node_certs.join("client.crt"), &node_certs.join("client.key")),
        );
        Self { root }
    }

    pub fn path(&self, node_path: &str) -> PathBuf {
        kubelet::node_path(self.root.path(), Path::new(node_path))
    }
}

pub fn kubelet_config(name: &str, role: NodeRole, root: &NodeRoot, ip: IpAddr, apiserver: &Apiserver) -> KubeletConfig {
    KubeletConfig {
        node_name: name.to_owned(),
        role,
        root: root.root.path().to_owned(),
        kubeconfig: PathBuf::from("/var/lib/kubelet/kubeconfig"),
        server: None,
        tls_server_name: None,
        node_ip: ip,
        local_apiserver: Some(apiserver.url()),
        labels: Default::default(),
        heartbeat_interval: Duration::from_millis(300),
    }
}

/// A kubelet stand-in running until dropped.
pub struct Kubelet {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    pub fn start(config: KubeletConfig) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = kubelet::run(config, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Self { stop: Some(stop), task }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// Runs the real kubectl with a kubeconfig and a private cache dir.
pub struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub fn new(kubeconfig: PathBuf) -> Self {
        Self { kubeconfig, cache: tempfile::tempdir().expect("tempdir") }
    }

    pub async fn run(&self, args: &[&str]) -> KubectlOutput {
        let output = tokio::process::Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--request-timeout=10s")
            .args(args)
            .env("HOME", self.cache.path())
            .kill_on_drop(true)
            .output()
            .await
            .expect("kubectl runs (is /usr/bin/kubectl installed?)");
        KubectlOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs kubectl and fails the test, showing stderr, when it fails.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(out.success, "kubectl {} failed:\n{}\n{}", args.join(" "), out.stderr, out.stdout);
        out.stdout
    }

    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {} printed no JSON ({e}): {text}", args.join(" ")))
    }
}

/// Polls `check` until it returns Some or `timeout` passes; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A whole small cluster: PKI, etcd, one apiserver, an admin kubeconfig for kubectl.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub pki: ClusterPki,
    pub etcd: Etcd,
    pub apiserver: Option<Apiserver>,
    pub kubeconfig: PathBuf,
    pub kubectl: Kubectl,
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// As `start`, with the apiserver's config changed by `tweak` first.
    pub async fn start_with(tweak: impl FnOnce(&mut ApiserverConfig)) -> Self {
        lab::kube::credentials::install_default_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = ClusterPki::new(&dir.path().join("certs"));
        let etcd = Etcd::start(&pki);
        let mut config = apiserver_config(&pki, &etcd, "127.0.0.1:0".parse().unwrap());
        tweak(&mut config);
        let apiserver = Apiserver::start(config).await;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        write(&kubeconfig, &kubeconfig_text(&apiserver, &pki));
        let kubectl = Kubectl::new(kubeconfig.clone());
        let cluster = Self { dir, pki, etcd, apiserver: Some(apiserver), kubeconfig, kubectl };
        cluster.wait_ready().await;
        cluster
    }

    pub fn apiserver(&self) -> &Apiserver {
        self.apiserver.as_ref().expect("apiserver running")
    }

    /// Waits until /readyz passes (etcd reachable) and the seed objects exist.
    pub async fn wait_ready(&self) {
        let kubectl = &self.kubectl;
        let etcd = &self.etcd;
        eventually("apiserver ready with seeded objects", Duration::from_secs(30), || async {
            let out = kubectl.run(&["get", "serviceaccount", "kube-proxy", "-n", "kube-system", "-o", "name"]).await;
            if !out.success {
                if out.stderr.contains("refused") && etcd.log().contains("panic") {
                    panic!("etcd failed: {}", etcd.log());
                }
                return None;
            }
            Some(())
        })
        .await;
    }

    /// A kube-rs client with the admin credentials.
    pub async fn kube_client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    }

    pub fn node(&self, name: &str, role: NodeRole, ip: IpAddr) -> (NodeRoot, KubeletConfig) {
        let root = NodeRoot::new(&self.pki, &self.apiserver().url());
        let config = kubelet_config(name, role, &root, ip, self.apiserver());
        (root, config)
    }
}

pub fn kubeconfig_text(apiserver: &Apiserver, pki: &ClusterPki) -> String {
    kubeconfig(&apiserver.url(), &pki.path("ca.crt"), &pki.path("client.crt"), &pki.path("client.key"))
}

/// The Ready condition status of an object (node or pod) in kubectl's JSON.
pub fn ready_status(object: &serde_json::Value) -> String {
    object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_owned()
}
