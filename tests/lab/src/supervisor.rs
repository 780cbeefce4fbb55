//! The lab supervisor (`lab supervise --dir DIR`): a detached process that brings the nodes
//! up (bridge, namespaces, veths, sshd, etcd), keeps their services running, answers the
//! control socket (status, faults, the nodes' systemctl and reboot), and on `down` removes
//! every process, namespace, veth and the bridge it made.

use crate::control::{PhaseTiming, Fault, LabStatus, NodeStatus, Power, Request, Response, SystemctlAction, Unit};
use crate::error::LabError;
use crate::nodefiles::{self, CERT_DIR, ETCD_UID};
use crate::nsexec::{self, Enter, NodeMount, NodeNamespaces};
use crate::service::{Launcher, Running, Service};
use crate::spec::{Expiry, Layout, NodeInfo, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Notify;

/// What `down` needs to find after a supervisor crash: holder pids with their netns inodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderRecord {
    pub node: String,
    pub pid: u32,
    pub net_inode: u64,
}

pub fn holders_file(dir: &Path) -> PathBuf {
    dir.join("holders.json")
}
pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join("supervisor.pid")
}

struct NodeRuntime {
    info: NodeInfo,
    ns: NodeNamespaces,
    net_inode: u64,
    holder: Mutex<Option<std::process::Child>>,
    units: BTreeMap<Unit, Service>,
    power: Mutex<Power>,
    network_up: AtomicBool,
    reboot_delay_ms: AtomicU64,
    /// How long `systemctl restart` keeps a unit down (0: restart at once).
    restart_delay_ms: AtomicU64,
    /// Serialises power operations (reboot, stop, start) on one node.
    power_lock: tokio::sync::Mutex<()>,
}

impl NodeRuntime {
    fn units_for_role(&self) -> Vec<Unit> {
        match self.info.role {
            Role::Master => vec![Unit::Sshd, Unit::Etcd, Unit::Kubelet, Unit::Apiserver],
            Role::Agent => vec![Unit::Sshd, Unit::Kubelet],
        }
    }

    /// Start order matters on masters: etcd before the apiserver, the kubelet last.
    async fn start_all(&self) -> Result<(), LabError> {
        for unit in self.units_for_role() {
            self.units[&unit].start().await?;
        }
        *self.power.lock().unwrap_or_else(|p| p.into_inner()) = Power::Running;
        Ok(())
    }

    /// Everything down, sessions included (the holder keeps the namespaces).
    async fn stop_all(&self, now: Power) -> Result<(), LabError> {
        *self.power.lock().unwrap_or_else(|p| p.into_inner()) = now;
        for unit in self.units_for_role().into_iter().rev() {
            self.units[&unit].stop().await?;
        }
        let stragglers: Vec<u32> = nsexec::pids_in_netns(self.net_inode)
            .into_iter()
            .filter(|pid| *pid != self.ns.holder_pid)
            .collect();
        nsexec::signal_all(&stragglers, libc::SIGKILL);
        Ok(())
    }
}

/// The load balancers' host: a namespace of its own (held like a node's) on the lab bridge
/// with both frontend addresses, and HAProxy in it.
struct LbRuntime {
    net_inode: u64,
    holder: Mutex<Option<std::process::Child>>,
    haproxy: Service,
}

/// The name the load balancers' holder is recorded under in holders.json.
pub const LB_HOLDER: &str = "load-balancers";

pub struct Supervisor {
    layout: Layout,
    nodes: Vec<Arc<NodeRuntime>>,
    lb: Option<LbRuntime>,
    phase: Mutex<String>,
    timings: Mutex<Vec<PhaseTiming>>,
    shutdown: Notify,
    started: Instant,
    /// The ARM stand-in (lab::arm), once started.
    arm: Mutex<Option<crate::arm::ArmServer>>,
}

fn log(message: impl std::fmt::Display) {
    eprintln!("lab supervisor [{}]: {message}", humantime::format_rfc3339_seconds(std::time::SystemTime::now()));
}

fn node_mounts(layout: &Layout, node: &NodeInfo, lab_binary: &Path) -> Vec<NodeMount> {
    let base = layout.node_dir(node);
    let fs = layout.node_fs(node);
    let mut mounts = vec![
        NodeMount::Overlay { target: "/etc".into(), upper: fs.join("etc"), work: base.join("work/etc") },
        NodeMount::Overlay { target: "/var".into(), upper: fs.join("var"), work: base.join("work/var") },
        NodeMount::Bind { source: fs.join("home"), target: "/home".into() },
        NodeMount::Tmpfs { target: "/run".into() },
        // sshd's privilege separation directory.
        NodeMount::MakeDir { path: "/run/sshd".into() },
        // The supervisor's socket and the lab binary at fixed paths any node user can reach
        // (the lab dir itself may be private, e.g. a 0700 temp dir).
        NodeMount::MakeDir { path: nodefiles::NODE_CTL_DIR.into() },
        NodeMount::Bind { source: layout.ctl_dir(), target: nodefiles::NODE_CTL_DIR.into() },
        NodeMount::MakeFile { path: nodefiles::NODE_LAB_BINARY.into() },
        NodeMount::Bind { source: lab_binary.to_path_buf(), target: nodefiles::NODE_LAB_BINARY.into() },
    ];
    for (source, target) in nodefiles::shim_mounts(layout, node) {
        mounts.push(NodeMount::Bind { source, target });
    }
    mounts
}

fn append_log(path: &Path) -> Result<std::fs::File, LabError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(LabError::io(format!("opening {}", path.display())))
}

fn sshd_launcher(layout: &Layout, node: Arc<NodeRuntimeSeed>) -> Launcher {
    let config = nodefiles::sshd_config_path(layout, &node.info);
    let log_file = nodefiles::sshd_log(layout, &node.info);
    Arc::new(move || {
        let mut command = std::process::Command::new("/usr/sbin/sshd");
        command.arg("-D").arg("-f").arg(&config).arg("-E").arg(&log_file);
        command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(append_log(&log_file)?);
        node.ns.enter(&mut command, Enter::ALL);
        tokio::process::Command::from(command).spawn().map(Running::Process).map_err(LabError::io("starting sshd"))
    })
}

/// etcd as AKS Engine's unit runs it: as the etcd user, arguments from /etc/default/etcd.
fn etcd_launcher(layout: &Layout, node: Arc<NodeRuntimeSeed>) -> Launcher {
    let log_file = nodefiles::log_dir(layout, &node.info).join("etcd.log");
    Arc::new(move || {
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", "set -a; . /etc/default/etcd; exec /usr/bin/etcd $DAEMON_ARGS"]);
        command.stdin(std::process::Stdio::null()).stdout(append_log(&log_file)?).stderr(append_log(&log_file)?);
        node.ns.enter(&mut command, Enter { net: true, mount_and_uts: true, user: Some((ETCD_UID, ETCD_UID)) });
        tokio::process::Command::from(command).spawn().map(Running::Process).map_err(LabError::io("starting etcd"))
    })
}

/// The apiserver stand-in's configuration on a master, with the paths the node sees (it runs
/// inside the node), flags as AKS Engine sets them (etcd on 127.0.0.1).
fn apiserver_config(node: &NodeInfo, spec: &crate::spec::LabSpec) -> crate::kube::ApiserverConfig {
    let heartbeat = spec.heartbeat;
    let defaults = crate::kube::controller::ControllerConfig::default();
    let cert = |name: &str| PathBuf::from(format!("{CERT_DIR}/{name}"));
    crate::kube::ApiserverConfig {
        bind_address: std::net::SocketAddr::from((node.ip, 443)),
        node_name: node.name.clone(),
        tls_cert_file: cert("apiserver.crt"),
        tls_private_key_file: cert("apiserver.key"),
        client_ca_file: cert("ca.crt"),
        etcd_servers: vec!["https://127.0.0.1:2379".into()],
        etcd_cafile: cert("ca.crt"),
        etcd_certfile: cert("etcdclient.crt"),
        etcd_keyfile: cert("etcdclient.key"),
        service_account_key_file: None,
        advertise_address: None,
        controllers: crate::kube::controller::ControllerConfig {
            node_monitor_grace_period: defaults.node_monitor_grace_period.max(heartbeat * 4),
            ..defaults
        },
        startup_delay: spec.apiserver_startup,
        shutdown_delay_duration: spec.apiserver_shutdown_delay,
    }
}

/// The apiserver stand-in as a process inside the master (`lab apiserver --config FILE`),
/// reading its certificates from the node's disk at every start.
fn apiserver_launcher(layout: &Layout, node: Arc<NodeRuntimeSeed>, lab_binary: PathBuf) -> Result<Launcher, LabError> {
    let config_path = layout.node_dir(&node.info).join("apiserver.json");
    let text = serde_json::to_string_pretty(&apiserver_config(&node.info, &layout.spec)).expect("config serialises");
    crate::fsutil::write_file(&config_path, text.as_bytes(), 0o644, 0, 0)?;
    let log_file = nodefiles::log_dir(layout, &node.info).join("apiserver.log");
    Ok(Arc::new(move || {
        let mut command = std::process::Command::new(&lab_binary);
        command.arg("apiserver").arg("--config").arg(&config_path);
        command.stdin(std::process::Stdio::null()).stdout(append_log(&log_file)?).stderr(append_log(&log_file)?);
        node.ns.enter(&mut command, Enter::ALL);
        tokio::process::Command::from(command).spawn().map(Running::Process).map_err(LabError::io("starting the apiserver stand-in"))
    }))
}

/// The kubelet stand-in as a task on a thread inside the node's network namespace (53
/// kubelets as processes would cost too much memory), reading the node's files through
/// their host paths (the node's upper layers).
fn kubelet_launcher(layout: &Layout, node: Arc<NodeRuntimeSeed>) -> Launcher {
    let mut labels = BTreeMap::new();
    if node.info.role == Role::Agent {
        labels.insert("agentpool".to_string(), crate::spec::AGENT_POOL.to_string());
    }
    let config = crate::kube::KubeletConfig {
        node_name: node.info.name.clone(),
        role: match node.info.role {
            Role::Master => crate::kube::NodeRole::Master,
            Role::Agent => crate::kube::NodeRole::Agent,
        },
        root: layout.node_fs(&node.info),
        kubeconfig: PathBuf::from("/var/lib/kubelet/kubeconfig"),
        server: None,
        tls_server_name: None,
        node_ip: node.info.ip.into(),
        local_apiserver: None,
        labels,
        heartbeat_interval: layout.spec.heartbeat,
    };
    Arc::new(move || {
        let config = config.clone();
        let name = config.node_name.clone();
        node.ns.spawn_net_task(format!("kubelet-{}", node.info.index), move |stop| async move {
            if let Err(e) = crate::kube::kubelet::run(config, async {
                let _ = stop.await;
            })
            .await
            {
                eprintln!("lab: {name}/kubelet: {e}");
            }
        })
    })
}

/// HAProxy in the load balancers' namespace, in the foreground (`-db`), logging to
/// DIR/lb/haproxy.log; re-reads DIR/lb/haproxy.cfg at every start.
fn haproxy_launcher(layout: &Layout, holder_pid: u32) -> Result<Launcher, LabError> {
    let config = crate::lb::config_path(layout);
    crate::fsutil::write_file(&config, crate::lb::haproxy_config(layout).as_bytes(), 0o644, 0, 0)?;
    let log_file = crate::lb::log_path(layout);
    let ns = Arc::new(NodeNamespaces::open(holder_pid)?);
    Ok(Arc::new(move || {
        let mut command = std::process::Command::new(crate::lb::HAPROXY);
        command.arg("-db").arg("-f").arg(&config);
        command.stdin(std::process::Stdio::null()).stdout(append_log(&log_file)?).stderr(append_log(&log_file)?);
        ns.enter(&mut command, Enter::NET);
        tokio::process::Command::from(command).spawn().map(Running::Process).map_err(LabError::io("starting haproxy"))
    }))
}

/// The load balancers' namespace on the bridge: the public frontend and, with more than one
/// master, the internal one, on one veth.
fn configure_lb_network(layout: &Layout, holder_pid: u32, ns: &NodeNamespaces) -> Result<(), LabError> {
    crate::net::ip_batch(&format!(
        "link add name {veth} type veth peer name eth0 netns {holder_pid}\nlink set {veth} master {br}\nlink set {veth} up\n",
        veth = layout.lb_veth(),
        br = layout.bridge
    ))?;
    let mut script = String::from("link set lo up\n");
    for lb in crate::lb::balancers(layout) {
        script.push_str(&format!("addr add {}/24 dev eth0\n", lb.frontend.ip()));
    }
    script.push_str(&format!("link set eth0 up\nroute add default via {}\n", layout.host_ip()));
    ns.run("ip", &["-batch", "-"], Some(&script), Enter::NET).map(|_| ())
}

/// What AKS Engine's masters do for the internal load balancer, whose rule targets port 4443
/// ("Azure does not support two LoadBalancers(LB) sharing the same nic and backend port"):
/// `iptables -t nat -A PREROUTING -p tcp --dport 4443 -j REDIRECT --to-port 443`
/// (parts/k8s/cloud-init/masternodecustomdata.yml, for more than one master).
fn redirect_ilb_port(ns: &NodeNamespaces) -> Result<(), LabError> {
    ns.run(
        "iptables",
        &["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "4443", "-j", "REDIRECT", "--to-port", "443"],
        None,
        Enter::NET,
    )
    .map(|_| ())
}

/// The part of a node that exists before its services: what launchers need.
struct NodeRuntimeSeed {
    info: NodeInfo,
    ns: NodeNamespaces,
}

impl Supervisor {
    /// Bring the lab up. Returns once services are started (health is reported by status).
    async fn bring_up(layout: Layout, lab_binary: PathBuf) -> Result<Arc<Supervisor>, LabError> {
        let started = Instant::now();
        let mut timings = Vec::new();
        let mut mark = |phase: &str, since: &mut Instant, net_inodes: &[u64]| {
            let (rss_kib, _) = nsexec::lab_rss_kib(net_inodes);
            timings.push(PhaseTiming { phase: phase.to_string(), millis: since.elapsed().as_millis() as u64, rss_kib });
            *since = Instant::now();
        };
        let mut since = Instant::now();
        crate::net::create_bridge(&layout)?;
        mark("bridge", &mut since, &[]);

        let mut holders = Vec::new();
        let mut records = Vec::new();
        for node in &layout.nodes {
            let mut command = nsexec::holder_command(&node.name, &node_mounts(&layout, node, &lab_binary))?;
            let child = command.spawn().map_err(LabError::io(format!("starting the holder of {}", node.name)))?;
            let ns = NodeNamespaces::open(child.id())?;
            let net_inode = ns.net_inode()?;
            records.push(HolderRecord { node: node.name.clone(), pid: child.id(), net_inode });
            holders.push((node.clone(), child, ns, net_inode));
        }
        let lb_holder = {
            let mut command = nsexec::holder_command(LB_HOLDER, &[])?;
            let child = command.spawn().map_err(LabError::io("starting the holder of the load balancers"))?;
            let ns = NodeNamespaces::open(child.id())?;
            let net_inode = ns.net_inode()?;
            records.push(HolderRecord { node: LB_HOLDER.into(), pid: child.id(), net_inode });
            (child, ns, net_inode)
        };
        let records_json = serde_json::to_string_pretty(&records).expect("records serialise");
        crate::fsutil::write_file(&holders_file(&layout.dir), records_json.as_bytes(), 0o644, 0, 0)?;
        let inodes: Vec<u64> = records.iter().map(|r| r.net_inode).collect();
        mark("namespaces", &mut since, &inodes);

        let plugs: Vec<(&NodeInfo, u32)> = holders.iter().map(|(n, c, _, _)| (n, c.id())).collect();
        crate::net::plug_nodes(&layout, &plugs)?;
        std::thread::scope(|scope| {
            let handles: Vec<_> = holders
                .chunks(holders.len().div_ceil(4).max(1))
                .map(|chunk| {
                    let layout = &layout;
                    scope.spawn(move || {
                        chunk.iter().try_for_each(|(node, _, ns, _)| crate::net::configure_node(layout, node, ns))
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(LabError::Spec("network setup panicked".into()))))
        })?;
        configure_lb_network(&layout, lb_holder.0.id(), &lb_holder.1)?;
        if layout.has_ilb() {
            for (node, _, ns, _) in holders.iter().filter(|(n, ..)| n.role == Role::Master) {
                redirect_ilb_port(ns).map_err(|e| LabError::Spec(format!("{}: redirecting 4443 to 443 with iptables: {e}", node.name)))?;
            }
        }
        mark("network", &mut since, &inodes);

        let mut nodes = Vec::new();
        for (info, child, ns, net_inode) in holders {
            let seed = Arc::new(NodeRuntimeSeed { info: info.clone(), ns: NodeNamespaces::open(child.id())? });
            let mut units = BTreeMap::new();
            let label = |unit: &str| format!("{}/{unit}", info.name);
            units.insert(Unit::Sshd, Service::spawn(label("sshd"), Some(sshd_launcher(&layout, seed.clone()))));
            units.insert(Unit::Kubelet, Service::spawn(label("kubelet"), Some(kubelet_launcher(&layout, seed.clone()))));
            if info.role == Role::Master {
                units.insert(Unit::Etcd, Service::spawn(label("etcd"), Some(etcd_launcher(&layout, seed.clone()))));
                let apiserver = apiserver_launcher(&layout, seed.clone(), lab_binary.clone())?;
                // A static pod's terminationGracePeriodSeconds is 30 s by default; the lab's
                // stand-in needs its shutdown delay and grace, and no more.
                let grace = layout.spec.apiserver_shutdown_delay + crate::kube::apiserver::SHUTDOWN_GRACE + Duration::from_secs(2);
                units.insert(Unit::Apiserver, Service::spawn_with_grace(label("apiserver"), Some(apiserver), grace));
            }
            nodes.push(Arc::new(NodeRuntime {
                info,
                ns,
                net_inode,
                holder: Mutex::new(Some(child)),
                units,
                power: Mutex::new(Power::Stopped),
                network_up: AtomicBool::new(true),
                reboot_delay_ms: AtomicU64::new(layout.spec.reboot_delay.as_millis() as u64),
                restart_delay_ms: AtomicU64::new(0),
                power_lock: tokio::sync::Mutex::new(()),
            }));
        }
        let starts = nodes.iter().map(|n| {
            let n = n.clone();
            async move { n.start_all().await }
        });
        for result in futures_join_all(starts).await {
            result?;
        }
        // The load balancers after the masters' apiservers, so their first probes find them.
        crate::fsutil::make_dir(&layout.lb_dir(), 0o755, 0, 0)?;
        let haproxy = Service::spawn("load-balancers/haproxy".into(), Some(haproxy_launcher(&layout, lb_holder.0.id())?));
        haproxy.start().await?;
        let (lb_child, lb_ns, lb_inode) = lb_holder;
        drop(lb_ns);
        let lb = LbRuntime { net_inode: lb_inode, holder: Mutex::new(Some(lb_child)), haproxy };
        mark("services", &mut since, &inodes);
        let supervisor = Arc::new(Supervisor {
            layout,
            nodes,
            lb: Some(lb),
            phase: Mutex::new("running".into()),
            timings: Mutex::new(timings),
            shutdown: Notify::new(),
            started,
            arm: Mutex::new(None),
        });
        Ok(supervisor)
    }

    fn node(&self, name: &str) -> Result<&Arc<NodeRuntime>, LabError> {
        self.layout.node(name)?;
        Ok(self.nodes.iter().find(|n| n.info.name == name).expect("layout and runtime agree"))
    }

    /// Power state of a node, `None` when there is no such node.
    pub fn power_of(&self, name: &str) -> Option<Power> {
        self.nodes.iter().find(|n| n.info.name == name).map(|n| *n.power.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reboot a node: everything down for its reboot delay, then back up from disk.
    pub async fn reboot(self: &Arc<Self>, name: &str) -> Result<(), LabError> {
        let node = self.node(name)?.clone();
        let _guard = node.power_lock.lock().await;
        log(format!("rebooting {name}"));
        node.stop_all(Power::Rebooting).await?;
        tokio::time::sleep(Duration::from_millis(node.reboot_delay_ms.load(Ordering::Relaxed))).await;
        node.start_all().await?;
        log(format!("{name} is back"));
        Ok(())
    }

    async fn power(&self, name: &str, on: bool) -> Result<(), LabError> {
        let node = self.node(name)?.clone();
        let _guard = node.power_lock.lock().await;
        if on {
            node.start_all().await
        } else {
            node.stop_all(Power::Stopped).await
        }
    }

    /// Run a command inside a node's mount namespace (blocking; off the runtime's threads).
    async fn in_node(&self, name: &str, program: &'static str, args: Vec<String>) -> Result<String, LabError> {
        let node = self.node(name)?.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            node.ns.run(program, &args, None, Enter::ALL)
        })
        .await
        .map_err(|e| LabError::Refused(format!("node command panicked: {e}")))?
    }

    async fn fault(self: &Arc<Self>, fault: Fault) -> Result<String, LabError> {
        match fault {
            Fault::StopNode { node } => self.power(&node, false).await.map(|_| format!("{node} stopped")),
            Fault::StartNode { node } => self.power(&node, true).await.map(|_| format!("{node} started")),
            Fault::RebootNode { node } => {
                self.node(&node)?;
                let me = self.clone();
                let name = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.reboot(&name).await {
                        log(format!("reboot of {name} failed: {e}"));
                    }
                });
                Ok(format!("{node} rebooting"))
            }
            Fault::CutNetwork { node } => {
                let rt = self.node(&node)?;
                crate::net::set_node_link(&rt.info, false)?;
                rt.network_up.store(false, Ordering::Relaxed);
                Ok(format!("{node} is cut off the network"))
            }
            Fault::RestoreNetwork { node } => {
                let rt = self.node(&node)?;
                crate::net::set_node_link(&rt.info, true)?;
                rt.network_up.store(true, Ordering::Relaxed);
                Ok(format!("{node} is back on the network"))
            }
            Fault::RebootDelay { node, millis } => {
                for rt in &self.nodes {
                    if node.as_deref().is_none_or(|n| n == rt.info.name) {
                        rt.reboot_delay_ms.store(millis, Ordering::Relaxed);
                    }
                }
                if let Some(name) = &node {
                    self.node(name)?;
                }
                Ok(format!("reboots now take {millis} ms"))
            }
            Fault::RestartDelay { node, millis } => {
                if let Some(name) = &node {
                    self.node(name)?;
                }
                for rt in &self.nodes {
                    if node.as_deref().is_none_or(|n| n == rt.info.name) {
                        rt.restart_delay_ms.store(millis, Ordering::Relaxed);
                    }
                }
                Ok(format!("service restarts now take {millis} ms"))
            }
            Fault::StopEtcd { node } => {
                let unit = self.unit(&node, Unit::Etcd)?;
                unit.stop().await.map(|_| format!("etcd stopped on {node}"))
            }
            Fault::StartEtcd { node } => {
                let unit = self.unit(&node, Unit::Etcd)?;
                unit.start().await.map(|_| format!("etcd started on {node}"))
            }
            Fault::ReplaceHostKey { node } => {
                let rt = self.node(&node)?.clone();
                let key = nodefiles::host_key_path(&self.layout, &rt.info);
                let name = rt.info.name.clone();
                tokio::task::spawn_blocking(move || nodefiles::ssh_keygen(&key, &name, true))
                    .await
                    .map_err(|e| LabError::Refused(e.to_string()))??;
                rt.units[&Unit::Sshd].restart().await?;
                Ok(format!("{node} has a new SSH host key; known_hosts is now stale for it"))
            }
            Fault::ReadOnlyKubernetes { node } => {
                self.in_node(&node, "mount", vec!["--bind".into(), "/etc/kubernetes".into(), "/etc/kubernetes".into()]).await?;
                self.in_node(&node, "mount", vec!["-o".into(), "remount,bind,ro".into(), "/etc/kubernetes".into()]).await?;
                Ok(format!("/etc/kubernetes is read-only on {node}"))
            }
            Fault::WritableKubernetes { node } => {
                self.in_node(&node, "umount", vec!["/etc/kubernetes".into()]).await?;
                Ok(format!("/etc/kubernetes is writable on {node}"))
            }
            Fault::ArmError { rule } => {
                let guard = self.arm.lock().unwrap_or_else(|p| p.into_inner());
                let arm = guard.as_ref().ok_or_else(|| LabError::Refused("the ARM stand-in is not running".into()))?;
                let described = format!("ARM answers {} {} {} on {}", rule.status, rule.method.as_deref().unwrap_or("to every method"),
                    rule.times.map(|n| format!("{n} times")).unwrap_or_else(|| "always".into()), rule.path);
                arm.faults().add(rule);
                Ok(described)
            }
            Fault::ClearArmErrors => {
                let guard = self.arm.lock().unwrap_or_else(|p| p.into_inner());
                let arm = guard.as_ref().ok_or_else(|| LabError::Refused("the ARM stand-in is not running".into()))?;
                arm.faults().clear();
                Ok("ARM errors cleared".into())
            }
        }
    }

    fn unit(&self, node: &str, unit: Unit) -> Result<Service, LabError> {
        let rt = self.node(node)?;
        rt.units
            .get(&unit)
            .cloned()
            .ok_or_else(|| LabError::Refused(format!("{node} runs no {unit:?} (it is not a master)")))
    }

    async fn systemctl(self: &Arc<Self>, node: &str, action: SystemctlAction, unit_name: &str) -> Result<Response, LabError> {
        let unit = Unit::parse_systemd(unit_name)
            .ok_or_else(|| LabError::Refused(format!("Unit {unit_name} could not be found.")))?;
        let service = self.unit(node, unit)?;
        log(format!("{node}: systemctl {action:?} {unit_name}"));
        let also = |s: &Self| if unit == Unit::Kubelet { s.unit(node, Unit::Apiserver).ok() } else { None };
        match action {
            SystemctlAction::Start => {
                service.start().await?;
                if let Some(a) = also(self) { a.start().await?; }
            }
            SystemctlAction::Stop => {
                service.stop().await?;
            }
            SystemctlAction::Restart => {
                let delay = self.node(node)?.restart_delay_ms.load(Ordering::Relaxed);
                if delay > 0 {
                    // Down for the delay, then up, with systemctl waiting throughout: a real
                    // etcd rejoins, and a kubelet's static pods come back, seconds later.
                    if let Some(a) = also(self) { a.stop().await?; }
                    service.stop().await?;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    service.start().await?;
                    if let Some(a) = also(self) { a.start().await?; }
                } else {
                    // Static pods come back with the kubelet: restart the apiserver stand-in too.
                    if let Some(a) = also(self) { a.restart().await?; }
                    service.restart().await?;
                }
            }
            SystemctlAction::IsActive => {
                let active = service.status().active;
                let mut response = Response::ok(if active { "active" } else { "inactive" });
                response.ok = active;
                return Ok(response);
            }
        }
        if unit == Unit::Etcd && matches!(action, SystemctlAction::Start | SystemctlAction::Restart) {
            self.wait_etcd_notify(node).await?;
        }
        Ok(Response::ok(""))
    }

    /// AKS Engine's etcd.service is `Type=notify` (parts/k8s/cloud-init/artifacts/etcd.service):
    /// `systemctl start|restart etcd` returns only once etcd has told systemd it is ready to
    /// serve clients, which etcd does after it has joined its cluster; systemd gives up after
    /// TimeoutStartSec, 90 s by default. The lab waits for the member's health the same way.
    async fn wait_etcd_notify(&self, node: &str) -> Result<(), LabError> {
        let info = self.node(node)?.info.clone();
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if etcd_healthy(&self.layout, &info).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LabError::Refused("Job for etcd.service failed because a timeout was exceeded.".into()))
    }

    async fn status(&self) -> LabStatus {
        let expired = self.layout.spec.expiry == Expiry::Expired;
        let checks = self.nodes.iter().map(|rt| {
            let rt = rt.clone();
            let layout = self.layout.clone();
            async move {
                let power = *rt.power.lock().unwrap_or_else(|p| p.into_inner());
                let ssh = ssh_answers(rt.info.ip).await;
                let etcd = if rt.info.role == Role::Master { Some(etcd_healthy(&layout, &rt.info).await) } else { None };
                let apiserver_ready =
                    if rt.info.role == Role::Master && !expired { Some(apiserver_ready(&layout, &rt.info).await) } else { None };
                NodeStatus {
                    name: rt.info.name.clone(),
                    ip: rt.info.ip.to_string(),
                    role: rt.info.role,
                    power,
                    network_up: rt.network_up.load(Ordering::Relaxed),
                    units: rt.units.iter().map(|(u, s)| (*u, s.status())).collect(),
                    ssh_reachable: ssh,
                    etcd_healthy: etcd,
                    apiserver_ready,
                }
            }
        });
        let nodes = futures_join_all(checks).await;
        let mut problems = Vec::new();
        for node in &nodes {
            if node.power != Power::Running {
                problems.push(format!("{} is {:?}", node.name, node.power));
                continue;
            }
            if !node.ssh_reachable {
                problems.push(format!("{}: sshd does not answer on {}:22", node.name, node.ip));
            }
            if node.etcd_healthy == Some(false) && !expired {
                problems.push(format!("{}: etcd is not healthy", node.name));
            }
            if node.apiserver_ready == Some(false) {
                problems.push(format!("{}: the apiserver's /readyz is not ok", node.name));
            }
        }
        if self.arm.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            problems.push("the ARM stand-in is not serving".into());
        }
        let kube_ready = if expired { None } else { kube_ready_nodes(&self.layout).await };
        if !expired {
            let running: Vec<&str> = nodes.iter().filter(|n| n.power == Power::Running).map(|n| n.name.as_str()).collect();
            match &kube_ready {
                None => problems.push("the apiserver does not list nodes (kubectl get nodes failed)".into()),
                Some(ready) => {
                    let missing: Vec<&str> = running.iter().copied().filter(|n| !ready.iter().any(|r| r == n)).collect();
                    if !missing.is_empty() {
                        problems.push(format!("not Ready in Kubernetes: {}", missing.join(", ")));
                    }
                }
            }
        }
        let load_balancers = match crate::lb::backend_states(&self.layout).await {
            Ok(states) => states,
            Err(e) => {
                problems.push(format!("the load balancers do not answer: {e}"));
                Vec::new()
            }
        };
        let phase = self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (rss_kib, process_count) = self.memory();
        LabStatus {
            healthy: phase == "running" && problems.is_empty(),
            phase,
            problems,
            nodes,
            timings: self.timings.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            rss_kib,
            process_count,
            arm_endpoint: self.arm.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|a| a.endpoint()),
            kube_ready_nodes: kube_ready,
            load_balancers,
        }
    }

    fn memory(&self) -> (u64, usize) {
        let inodes: Vec<u64> = self.nodes.iter().map(|n| n.net_inode).chain(self.lb.as_ref().map(|l| l.net_inode)).collect();
        nsexec::lab_rss_kib(&inodes)
    }

    /// Stop every service, kill every node process, remove veths (with the namespaces) and
    /// the bridge.
    async fn tear_down(&self) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = "stopping".into();
        let arm = self.arm.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(arm) = arm {
            arm.shutdown().await;
        }
        let kills = self.nodes.iter().flat_map(|rt| rt.units.values().cloned()).map(|unit| async move {
            let _ = unit.kill().await;
        });
        futures_join_all(kills).await;
        if let Some(lb) = &self.lb {
            let _ = lb.haproxy.kill().await;
            nsexec::signal_all(&nsexec::pids_in_netns(lb.net_inode), libc::SIGKILL);
            if let Some(mut holder) = lb.holder.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = holder.kill();
                let _ = holder.wait();
            }
        }
        for rt in &self.nodes {
            let pids = nsexec::pids_in_netns(rt.net_inode);
            nsexec::signal_all(&pids, libc::SIGKILL);
            if let Some(mut holder) = rt.holder.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = holder.kill();
                let _ = holder.wait();
            }
        }
        wait_until_gone(self.nodes.iter().map(|n| n.net_inode).chain(self.lb.as_ref().map(|l| l.net_inode)).collect()).await;
        // The namespaces outlive their processes while this process holds their fds, and the
        // kernel frees them asynchronously: remove the veths explicitly.
        let script: String = self
            .nodes
            .iter()
            .filter(|rt| crate::net::link_exists(&rt.info.veth))
            .map(|rt| format!("link del {}\n", rt.info.veth))
            .chain(crate::net::link_exists(&self.layout.lb_veth()).then(|| format!("link del {}\n", self.layout.lb_veth())))
            .collect();
        if !script.is_empty() {
            if let Err(e) = crate::net::ip_batch(&script) {
                log(format!("removing veths failed: {e}"));
            }
        }
        if let Err(e) = crate::net::delete_bridge(&self.layout) {
            log(format!("removing the bridge failed: {e}"));
        }
        let _ = std::fs::remove_file(holders_file(&self.layout.dir));
        log(format!("down after {:?}", self.started.elapsed()));
    }

    async fn handle(self: &Arc<Self>, request: Request) -> Response {
        let result = match request {
            Request::Status => Ok(Response { status: Some(self.status().await), ..Response::ok("") }),
            Request::Down => {
                self.shutdown.notify_one();
                Ok(Response::ok("stopping"))
            }
            Request::Systemctl { node, action, unit } => self.systemctl(&node, action, &unit).await,
            Request::Reboot { node } => self
                .fault(Fault::RebootNode { node })
                .await
                .map(Response::ok),
            Request::Fault(fault) => self.fault(fault).await.map(Response::ok),
            Request::ArmCalls => match self.arm.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                Some(arm) => Ok(Response { arm_calls: Some(arm.calls().snapshot()), ..Response::ok("") }),
                None => Err(LabError::Refused("the ARM stand-in is not running".into())),
            },
        };
        result.unwrap_or_else(|e| {
            let message = match e {
                LabError::Refused(why) => why,
                other => other.to_string(),
            };
            Response::refused(message)
        })
    }
}

/// Wait (up to 10 s) until no process is left in any of the given network namespaces.
async fn wait_until_gone(net_inodes: Vec<u64>) {
    for _ in 0..100 {
        let left: usize = net_inodes.iter().map(|i| nsexec::pids_in_netns(*i).len()).sum();
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log("some node processes did not exit within 10 s");
}

/// Join futures concurrently on the current task (tokio::task::JoinSet needs 'static).
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = futures.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(index, future)| match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => {
                outputs[*index] = Some(output);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future completed")).collect()
}

/// sshd answers with its banner on port 22.
async fn ssh_answers(ip: std::net::Ipv4Addr) -> bool {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((ip, 22)).await.ok()?;
        let mut banner = [0u8; 4];
        stream.read_exact(&mut banner).await.ok()?;
        Some(&banner == b"SSH-")
    };
    matches!(tokio::time::timeout(Duration::from_millis(800), attempt).await, Ok(Some(true)))
}

/// `etcdctl endpoint health` against the member, with the cluster's etcd client cert.
pub async fn etcd_healthy(layout: &Layout, node: &NodeInfo) -> bool {
    let cert = |name: &str| layout.host_path(node, &format!("{CERT_DIR}/{name}"));
    let output = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{}:2379", node.ip))
        .arg(format!("--cacert={}", cert("ca.crt").display()))
        .arg(format!("--cert={}", cert("etcdclient.crt").display()))
        .arg(format!("--key={}", cert("etcdclient.key").display()))
        .args(["--dial-timeout=1s", "--command-timeout=2s", "endpoint", "health"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    matches!(output, Ok(status) if status.success())
}

/// The master's apiserver answers `/readyz` with 200 at its own address (as certrotate's gate
/// asks it), with the master's client certificate.
pub async fn apiserver_ready(layout: &Layout, node: &NodeInfo) -> bool {
    let read = |name: &str| std::fs::read(layout.host_path(node, &format!("{CERT_DIR}/{name}")));
    let (Ok(ca), Ok(cert), Ok(key)) = (read("ca.crt"), read("client.crt"), read("client.key")) else { return false };
    let identity = [cert, key].concat();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(match reqwest::Certificate::from_pem(&ca) {
            Ok(c) => c,
            Err(_) => return false,
        })
        .identity(match reqwest::Identity::from_pem(&identity) {
            Ok(i) => i,
            Err(_) => return false,
        })
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build();
    let Ok(client) = client else { return false };
    matches!(client.get(format!("https://{}:443/readyz", node.ip)).send().await, Ok(r) if r.status() == 200)
}

/// Names of the nodes the apiserver reports Ready, asked with the real kubectl and the admin
/// kubeconfig (as an operator would); `None` when the apiserver does not answer.
async fn kube_ready_nodes(layout: &Layout) -> Option<Vec<String>> {
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(crate::outputs::kubeconfig_path(layout))
            .args(["get", "nodes", "-o", "json", "--request-timeout=4s"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !output.status.success() {
        return None;
    }
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    Some(
        list["items"]
            .as_array()?
            .iter()
            .filter(|node| {
                node["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .filter_map(|node| node["metadata"]["name"].as_str().map(String::from))
            .collect(),
    )
}

/// Store the front-proxy PKI in etcd as AKS Engine's masters do (/proxycerts/*): each value
/// `" $(cat file)"`, one space then the PEM (generateproxycerts.sh).
async fn put_proxy_certs(layout: &Layout) -> Result<(), LabError> {
    let master = layout.first_master();
    let certs = layout.host_path(master, CERT_DIR);
    for (key, file) in [
        ("/proxycerts/requestheader-client-ca-file", "proxy-ca.crt"),
        ("/proxycerts/proxy-client-cert-file", "proxy.crt"),
        ("/proxycerts/proxy-client-key-file", "proxy.key"),
    ] {
        let pem = std::fs::read_to_string(certs.join(file)).map_err(LabError::io(format!("reading {file}")))?;
        let value = certrotate::pki::proxycerts::etcd_value(&pem);
        let output = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://{}:2379", master.ip))
            .arg(format!("--cacert={}", certs.join("ca.crt").display()))
            .arg(format!("--cert={}", certs.join("etcdclient.crt").display()))
            .arg(format!("--key={}", certs.join("etcdclient.key").display()))
            .args(["put", key, "--"])
            .arg(&value)
            .output()
            .await
            .map_err(LabError::io("running etcdctl put"))?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: format!("etcdctl put {key}"),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Unprivileged node users may ask, not act (as systemd answers `Access denied`).
fn allowed_for(uid: u32, request: &Request) -> bool {
    uid == 0 || matches!(request, Request::Status | Request::Systemctl { action: SystemctlAction::IsActive, .. })
}

async fn serve_connection(supervisor: Arc<Supervisor>, stream: tokio::net::UnixStream) {
    let peer_uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) if allowed_for(peer_uid, &request) => supervisor.handle(request).await,
            Ok(_) => Response::refused("Access denied (run it as root: sudo)"),
            Err(e) => Response::refused(format!("unreadable request: {e}")),
        };
        let mut text = serde_json::to_string(&response).expect("responses serialise");
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            break;
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Entry point of `lab supervise`. `owner_pid`: tear down when that process is gone (tests).
pub async fn run(dir: &Path, owner_pid: Option<u32>) -> Result<(), LabError> {
    let layout = Layout::load(dir)?;
    crate::fsutil::write_file(&pid_file(dir), std::process::id().to_string().as_bytes(), 0o644, 0, 0)?;
    let lab_binary = std::env::current_exe().map_err(LabError::io("finding the lab binary"))?;
    crate::fsutil::make_dir(&layout.ctl_dir(), 0o755, 0, 0)?;
    let socket = layout.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(LabError::io(format!("binding {}", socket.display())))?;
    // Node users connect too (`systemctl is-active` needs no root); requests are checked
    // against the caller's uid in `allowed_for`.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .map_err(LabError::io(format!("chmod {}", socket.display())))?;
    log(format!("bringing up {} nodes in {}", layout.nodes.len(), dir.display()));
    let supervisor = match Supervisor::bring_up(layout.clone(), lab_binary).await {
        Ok(s) => s,
        Err(e) => {
            log(format!("bring-up failed: {e}; cleaning up"));
            crate::cleanup::cleanup_offline(&layout);
            let _ = std::fs::remove_file(&socket);
            let _ = std::fs::remove_file(pid_file(dir));
            return Err(e);
        }
    };
    log("services started");
    let identity = crate::outputs::load_identity(&layout)?;
    let control = Arc::new(crate::armhost::SupervisorVms(Arc::downgrade(&supervisor)));
    match crate::arm::ArmServer::start(crate::armhost::config(&layout, &identity), control).await {
        Ok(server) => {
            log(format!("ARM stand-in serving {}", server.endpoint()));
            *supervisor.arm.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        }
        Err(e) => log(format!("the ARM stand-in could not start: {e}")),
    }
    if layout.spec.expiry != Expiry::Expired {
        let layout = layout.clone();
        let me = supervisor.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..600 {
                let healthy = futures_join_all(layout.masters().map(|m| etcd_healthy(&layout, m))).await;
                if healthy.iter().all(|h| *h) {
                    match put_proxy_certs(&layout).await {
                        Ok(()) => {
                            let (rss_kib, _) = me.memory();
                            me.timings.lock().unwrap_or_else(|p| p.into_inner()).push(PhaseTiming {
                                phase: "etcd-healthy".into(),
                                millis: start.elapsed().as_millis() as u64,
                                rss_kib,
                            });
                            log("etcd healthy; /proxycerts stored");
                        }
                        Err(e) => log(format!("storing /proxycerts failed: {e}")),
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            log("etcd did not become healthy within 120 s");
        });
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(LabError::io("installing the SIGTERM handler"))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(LabError::io("installing the SIGINT handler"))?;
    let owner_gone = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(pid) = owner_pid {
                if !process_alive(pid) {
                    return;
                }
            }
        }
    };
    tokio::pin!(owner_gone);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_connection(supervisor.clone(), stream));
                }
            }
            _ = supervisor.shutdown.notified() => { log("down requested"); break; }
            _ = terminate.recv() => { log("SIGTERM"); break; }
            _ = interrupt.recv() => { log("SIGINT"); break; }
            _ = &mut owner_gone => { log("owner process gone"); break; }
        }
    }
    supervisor.tear_down().await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(pid_file(dir));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> NodeInfo {
        NodeInfo { name: "k8s-master-1-0".into(), role: Role::Master, index: 0, ip: [10, 200, 0, 5].into(), veth: "v0".into() }
    }

    /// Nodes go NotReady after four missed heartbeats, as with Kubernetes' 10 s and 40 s, and
    /// never sooner than the tests' short default grace.
    #[test]
    fn node_grace_follows_the_heartbeat() {
        let spec = |heartbeat| crate::spec::LabSpec { heartbeat, ..Default::default() };
        let short = apiserver_config(&master(), &spec(Duration::from_secs(2))).controllers.node_monitor_grace_period;
        assert_eq!(short, crate::kube::controller::ControllerConfig::default().node_monitor_grace_period);
        let kubernetes = apiserver_config(&master(), &spec(Duration::from_secs(10))).controllers.node_monitor_grace_period;
        assert_eq!(kubernetes, Duration::from_secs(40));
    }
}
