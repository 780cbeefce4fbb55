//! Each node's own files, written before the node starts: its `/etc`, `/var` and `/home`
//! layers (certificates with AKS Engine's owners and modes, kubeconfigs, etcd settings,
//! users, sudoers, hosts), its sshd configuration and persistent host key, and the lab's SSH
//! client key and known_hosts on the operator side.

use crate::error::LabError;
use crate::fsutil::{make_dir, write_file};
use crate::pki::ClusterPki;
use crate::spec::{Layout, NodeInfo, Role, ADMIN_USER};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Numeric ids inside every node (the node's own /etc/passwd and /etc/group).
pub const ADMIN_UID: u32 = 1000;
pub const ETCD_UID: u32 = 998;
pub const SSHD_UID: u32 = 105;
pub const SHADOW_GID: u32 = 42;
pub const NOGROUP_GID: u32 = 65534;

pub const CERT_DIR: &str = "/etc/kubernetes/certs";
/// Inside a node: where the supervisor's socket directory and the lab binary are mounted.
pub const NODE_CTL_DIR: &str = "/run/lab";
pub const NODE_LAB_BINARY: &str = "/run/lab-bin";

/// The node-side path of the lab's supervisor shims (bind-mounted over systemctl/reboot).
pub fn shim_path(layout: &Layout, node: &NodeInfo) -> PathBuf {
    layout.node_dir(node).join("shims").join("systemctl")
}
pub fn sshd_config_path(layout: &Layout, node: &NodeInfo) -> PathBuf {
    layout.node_dir(node).join("sshd_config")
}
pub fn host_key_path(layout: &Layout, node: &NodeInfo) -> PathBuf {
    layout.node_dir(node).join("ssh").join("ssh_host_ed25519_key")
}
pub fn log_dir(layout: &Layout, node: &NodeInfo) -> PathBuf {
    layout.node_dir(node).join("log")
}
pub fn sshd_log(layout: &Layout, node: &NodeInfo) -> PathBuf {
    log_dir(layout, node).join("sshd.log")
}

fn run(command: &mut Command) -> Result<(), LabError> {
    let rendered = format!("{command:?}");
    let output = command.output().map_err(LabError::io(format!("running {rendered}")))?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: rendered,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Make an ed25519 key pair at `path` (private 0600) unless one is already there.
pub fn ssh_keygen(path: &Path, comment: &str, replace: bool) -> Result<(), LabError> {
    if path.exists() && !replace {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path))
}

fn read_trimmed(path: &Path) -> Result<String, LabError> {
    Ok(std::fs::read_to_string(path).map_err(LabError::io(format!("reading {}", path.display())))?.trim().to_string())
}

/// The operator's SSH key (0600 in a 0700 dir). Returns the public key line.
pub fn write_operator_key(layout: &Layout) -> Result<String, LabError> {
    make_dir(&layout.dir.join("ssh"), 0o700, 0, 0)?;
    ssh_keygen(&layout.ssh_key(), &format!("lab-{}", layout.id), false)?;
    read_trimmed(&layout.ssh_key().with_extension("pub"))
}

pub fn ssh_config_path(layout: &Layout) -> PathBuf {
    layout.dir.join("ssh").join("config")
}

/// An ssh_config for `ssh -F`: unlike `-o` options, it also applies to the `-J` jump hop.
pub fn write_ssh_config(layout: &Layout) -> Result<(), LabError> {
    let text = format!(
        "# lab {id}: ssh -F {config} -J {jump} <node name>\nHost *\n  User {ADMIN_USER}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n",
        id = layout.id,
        config = ssh_config_path(layout).display(),
        jump = layout.first_master().ip,
        key = layout.ssh_key().display(),
        known = layout.known_hosts().display(),
    );
    write_file(&ssh_config_path(layout), text.as_bytes(), 0o644, 0, 0)
}

/// known_hosts with every node's host key under its name and its address.
pub fn write_known_hosts(layout: &Layout) -> Result<(), LabError> {
    let mut text = String::new();
    for node in &layout.nodes {
        let public = read_trimmed(&host_key_path(layout, node).with_extension("pub"))?;
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
        text.push_str(&format!("{},{} {kind} {key}\n", node.name, node.ip));
    }
    write_file(&layout.known_hosts(), text.as_bytes(), 0o644, 0, 0)
}

fn etcd_daemon_args(layout: &Layout, node: &NodeInfo) -> String {
    let cluster: Vec<String> = layout.masters().map(|m| format!("{}=https://{}:2380", m.name, m.ip)).collect();
    let ip = node.ip;
    let i = node.index;
    [
        format!("--name {}", node.name),
        "--peer-client-cert-auth".into(),
        format!("--peer-trusted-ca-file={CERT_DIR}/ca.crt"),
        format!("--peer-cert-file={CERT_DIR}/etcdpeer{i}.crt"),
        format!("--peer-key-file={CERT_DIR}/etcdpeer{i}.key"),
        format!("--initial-advertise-peer-urls https://{ip}:2380"),
        format!("--listen-peer-urls https://{ip}:2380"),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={CERT_DIR}/ca.crt"),
        format!("--cert-file={CERT_DIR}/etcdserver.crt"),
        format!("--key-file={CERT_DIR}/etcdserver.key"),
        format!("--advertise-client-urls https://{ip}:2379"),
        format!("--listen-client-urls https://{ip}:2379,https://127.0.0.1:2379"),
        "--initial-cluster-token k8s-etcd-cluster".into(),
        format!("--initial-cluster {}", cluster.join(",")),
        "--data-dir /var/lib/etcddisk".into(),
        "--initial-cluster-state new".into(),
        format!("--listen-metrics-urls http://{ip}:2480"),
        "--quota-backend-bytes=8589934592".into(),
    ]
    .join(" ")
}

fn hosts_file(layout: &Layout, node: &NodeInfo) -> String {
    let mut text = format!("127.0.0.1 localhost\n127.0.1.1 {}\n", node.name);
    for other in &layout.nodes {
        text.push_str(&format!("{} {}\n", other.ip, other.name));
    }
    text.push_str("::1 localhost ip6-localhost ip6-loopback\n");
    text
}

fn passwd() -> String {
    format!(
        "root:x:0:0:root:/root:/bin/bash\n\
         daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
         sshd:x:{SSHD_UID}:{NOGROUP_GID}::/run/sshd:/usr/sbin/nologin\n\
         etcd:x:{ETCD_UID}:{ETCD_UID}:etcd:/var/lib/etcddisk:/usr/sbin/nologin\n\
         {ADMIN_USER}:x:{ADMIN_UID}:{ADMIN_UID}::/home/{ADMIN_USER}:/bin/bash\n"
    )
}

fn group() -> String {
    format!(
        "root:x:0:\ndaemon:x:1:\nadm:x:4:{ADMIN_USER}\nsudo:x:27:{ADMIN_USER}\nshadow:x:{SHADOW_GID}:\n\
         etcd:x:{ETCD_UID}:\n{ADMIN_USER}:x:{ADMIN_UID}:\nnogroup:x:{NOGROUP_GID}:\n"
    )
}

fn shadow() -> String {
    // `*`: no password login, but not locked (sshd refuses key logins to `!` accounts).
    ["root", "daemon", "nobody", "sshd", "etcd", ADMIN_USER]
        .iter()
        .map(|user| format!("{user}:*:19000:0:99999:7:::\n"))
        .collect()
}

fn sudoers() -> String {
    format!(
        "Defaults env_reset\n\
         Defaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
         root ALL=(ALL:ALL) ALL\n\
         {ADMIN_USER} ALL=(ALL) NOPASSWD:ALL\n"
    )
}

fn environment(node: &NodeInfo) -> String {
    let mut text = String::from("PATH=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n");
    if node.role == Role::Master {
        text.push_str(&format!(
            "ETCDCTL_ENDPOINTS=https://127.0.0.1:2379\n\
             ETCDCTL_CA_FILE={CERT_DIR}/ca.crt\nETCDCTL_KEY_FILE={CERT_DIR}/etcdclient.key\nETCDCTL_CERT_FILE={CERT_DIR}/etcdclient.crt\n\
             ETCDCTL_CACERT={CERT_DIR}/ca.crt\nETCDCTL_KEY={CERT_DIR}/etcdclient.key\nETCDCTL_CERT={CERT_DIR}/etcdclient.crt\n"
        ));
    }
    text
}

/// The kubelet's kubeconfig: paths on the node, as AKS Engine writes it.
fn kubelet_kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: localcluster\n  cluster:\n    certificate-authority: {CERT_DIR}/ca.crt\n    server: {server}\n\
         users:\n- name: client\n  user:\n    client-certificate: {CERT_DIR}/client.crt\n    client-key: {CERT_DIR}/client.key\n\
         contexts:\n- context:\n    cluster: localcluster\n    user: client\n  name: localclustercontext\ncurrent-context: localclustercontext\n"
    )
}

fn sshd_config(layout: &Layout, node: &NodeInfo) -> String {
    format!(
        "Port 22\nListenAddress 0.0.0.0\nHostKey {}\nPidFile none\nUsePAM no\nPermitRootLogin no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         AuthorizedKeysFile .ssh/authorized_keys\nAllowUsers {ADMIN_USER}\nStrictModes yes\nUseDNS no\n\
         LogLevel VERBOSE\nAllowTcpForwarding yes\nMaxStartups 200:30:400\nMaxSessions 64\nPrintMotd no\n\
         PrintLastLog no\nSubsystem sftp internal-sftp\n",
        host_key_path(layout, node).display()
    )
}

/// The shim that stands in for systemctl and reboot inside the node. `reboot` reaches it
/// through the distribution's reboot -> systemctl symlink, so it dispatches on `$0`.
fn shim_script(node: &NodeInfo) -> String {
    format!(
        "#!/bin/sh\n# lab shim: systemctl and reboot act on the lab supervisor\n\
         case \"$(basename \"$0\")\" in\n  reboot|shutdown|poweroff) exec {bin} node-ctl --socket {sock} --node '{node}' reboot ;;\n\
         esac\nexec {bin} node-ctl --socket {sock} --node '{node}' systemctl \"$@\"\n",
        bin = NODE_LAB_BINARY,
        sock = format!("{NODE_CTL_DIR}/supervisor.sock"),
        node = node.name
    )
}

/// Where the shim lands in the node's view, as (source, target) bind mounts: over the host's
/// systemctl when there is one (Debian's reboot is a symlink to it), else the node gets its
/// own /usr/local/bin holding `systemctl` and `reboot` (first on PATH and in sudo's
/// secure_path); a reboot binary that is not systemctl's is covered too.
/// `LAB_SHIMS_IN_USR_LOCAL=1` forces the second form (to test it on hosts with systemd).
pub fn shim_mounts(layout: &Layout, node: &NodeInfo) -> Vec<(PathBuf, PathBuf)> {
    let shim = shim_path(layout, node);
    let systemctl = Path::new("/usr/bin/systemctl");
    let forced = std::env::var_os("LAB_SHIMS_IN_USR_LOCAL").is_some_and(|v| v == "1");
    let mut mounts = Vec::new();
    if systemctl.exists() && !forced {
        mounts.push((shim.clone(), systemctl.to_path_buf()));
    } else {
        mounts.push((shim.parent().expect("shim has a dir").to_path_buf(), PathBuf::from("/usr/local/bin")));
    }
    let systemctl_real = systemctl.canonicalize().ok();
    for reboot in ["/usr/sbin/reboot", "/sbin/reboot"] {
        let path = Path::new(reboot);
        let real = path.canonicalize().ok();
        if real.is_some() && (real != systemctl_real || forced) && !mounts.iter().any(|(_, t)| Some(t) == real.as_ref()) {
            mounts.push((shim.clone(), real.expect("checked")));
        }
    }
    mounts
}

fn cert_pair(dir: &Path, name: &str, pair: &certrotate::pki::KeyCertPair, key_owner: u32) -> Result<(), LabError> {
    write_file(&dir.join(format!("{name}.crt")), pair.cert_pem.as_bytes(), 0o644, 0, 0)?;
    write_file(&dir.join(format!("{name}.key")), pair.key_pem.as_bytes(), 0o600, key_owner, key_owner)
}

/// Write everything one node needs.
pub fn write_node(
    layout: &Layout,
    node: &NodeInfo,
    node_index: usize,
    pki: &ClusterPki,
    authorized_key: &str,
    admin_kubeconfig: &str,
) -> Result<(), LabError> {
    let base = layout.node_dir(node);
    make_dir(&base, 0o755, 0, 0)?;
    let fs = layout.node_fs(node);
    for (dir, mode) in [("etc", 0o755), ("var", 0o755), ("home", 0o755)] {
        make_dir(&fs.join(dir), mode, 0, 0)?;
    }
    for work in ["etc", "var"] {
        make_dir(&base.join("work").join(work), 0o700, 0, 0)?;
    }
    make_dir(&log_dir(layout, node), 0o755, 0, 0)?;
    make_dir(&base.join("ssh"), 0o700, 0, 0)?;
    make_dir(&base.join("shims"), 0o755, 0, 0)?;
    let etc = fs.join("etc");
    write_file(&etc.join("hostname"), format!("{}\n", node.name).as_bytes(), 0o644, 0, 0)?;
    write_file(&etc.join("hosts"), hosts_file(layout, node).as_bytes(), 0o644, 0, 0)?;
    write_file(&etc.join("passwd"), passwd().as_bytes(), 0o644, 0, 0)?;
    write_file(&etc.join("group"), group().as_bytes(), 0o644, 0, 0)?;
    write_file(&etc.join("shadow"), shadow().as_bytes(), 0o640, 0, SHADOW_GID)?;
    write_file(&etc.join("sudoers"), sudoers().as_bytes(), 0o440, 0, 0)?;
    write_file(&etc.join("environment"), environment(node).as_bytes(), 0o644, 0, 0)?;

    let certs = layout.host_path(node, CERT_DIR);
    make_dir(&layout.host_path(node, "/etc/kubernetes"), 0o755, 0, 0)?;
    make_dir(&certs, 0o755, 0, 0)?;
    write_file(&certs.join("ca.crt"), pki.ca.cert_pem.as_bytes(), 0o644, 0, 0)?;
    cert_pair(&certs, "client", &pki.client, 0)?;
    cert_pair(&certs, "kubeletserver", &pki.kubelet_servers[node_index], 0)?;
    // Masters' kubelets talk to their own apiserver; agents' through the internal load
    // balancer (kubernetesAPIServerIP, parts/k8s/cloud-init/nodecustomdata.yml).
    let server = match node.role {
        Role::Master => format!("https://{}:443", node.ip),
        Role::Agent => format!("https://{}:443", layout.kubernetes_api_server_ip()),
    };
    if node.role == Role::Master {
        write_file(&certs.join("ca.key"), pki.ca.key_pem.as_bytes(), 0o600, 0, 0)?;
        cert_pair(&certs, "apiserver", &pki.apiserver, 0)?;
        cert_pair(&certs, "etcdserver", &pki.etcd_server, ETCD_UID)?;
        cert_pair(&certs, "etcdclient", &pki.etcd_client, 0)?;
        cert_pair(&certs, &format!("etcdpeer{}", node.index), &pki.etcd_peers[node.index], ETCD_UID)?;
        write_file(&certs.join("proxy-ca.crt"), pki.proxy_ca.cert_pem.as_bytes(), 0o644, 0, 0)?;
        cert_pair(&certs, "proxy", &pki.proxy, 0)?;
        make_dir(&layout.host_path(node, "/etc/default"), 0o755, 0, 0)?;
        write_file(
            &layout.host_path(node, "/etc/default/etcd"),
            format!("DAEMON_ARGS=\"{}\"\n", etcd_daemon_args(layout, node)).as_bytes(),
            0o644,
            0,
            0,
        )?;
        make_dir(&layout.host_path(node, "/var/lib/etcddisk"), 0o700, ETCD_UID, ETCD_UID)?;
    }
    let kubelet = layout.host_path(node, "/var/lib/kubelet");
    make_dir(&kubelet, 0o755, 0, 0)?;
    write_file(&kubelet.join("kubeconfig"), kubelet_kubeconfig(&server).as_bytes(), 0o644, 0, 0)?;
    make_dir(&kubelet.join("pki"), 0o755, 0, 0)?;
    let current = format!("{}{}", pki.client.cert_pem, pki.client.key_pem);
    write_file(&kubelet.join("pki").join("kubelet-client-current.pem"), current.as_bytes(), 0o600, 0, 0)?;
    make_dir(&layout.host_path(node, "/var/log/azure"), 0o755, 0, 0)?;

    let home = layout.host_path(node, &format!("/home/{ADMIN_USER}"));
    make_dir(&home, 0o755, ADMIN_UID, ADMIN_UID)?;
    make_dir(&home.join(".ssh"), 0o700, ADMIN_UID, ADMIN_UID)?;
    write_file(&home.join(".ssh/authorized_keys"), format!("{authorized_key}\n").as_bytes(), 0o600, ADMIN_UID, ADMIN_UID)?;
    if node.role == Role::Master {
        make_dir(&home.join(".kube"), 0o700, ADMIN_UID, ADMIN_UID)?;
        write_file(&home.join(".kube/config"), admin_kubeconfig.as_bytes(), 0o600, ADMIN_UID, ADMIN_UID)?;
    }

    ssh_keygen(&host_key_path(layout, node), &node.name, false)?;
    write_file(&sshd_config_path(layout, node), sshd_config(layout, node).as_bytes(), 0o644, 0, 0)?;
    write_file(&shim_path(layout, node), shim_script(node).as_bytes(), 0o755, 0, 0)?;
    let reboot_link = shim_path(layout, node).with_file_name("reboot");
    if std::fs::symlink_metadata(&reboot_link).is_err() {
        std::os::unix::fs::symlink("systemctl", &reboot_link).map_err(LabError::io(format!("linking {}", reboot_link.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LabSpec;

    #[test]
    fn etcd_args_name_the_node_and_its_own_peer_cert() {
        let layout = Layout::derive(Path::new("/tmp/x"), LabSpec::default(), |_| false).unwrap();
        let node = &layout.nodes[1];
        let args = etcd_daemon_args(&layout, node);
        assert!(args.contains(&format!("--name {}", node.name)));
        assert!(args.contains("--peer-cert-file=/etc/kubernetes/certs/etcdpeer1.crt"));
        assert!(args.contains(&format!("https://{}:2379,https://127.0.0.1:2379", node.ip)));
        assert_eq!(args.matches("=https://").count(), 3, "initial cluster lists every master");
    }

    #[test]
    fn hosts_lists_every_node() {
        let layout = Layout::derive(Path::new("/tmp/x"), LabSpec::default(), |_| false).unwrap();
        let hosts = hosts_file(&layout, &layout.nodes[0]);
        for node in &layout.nodes {
            assert!(hosts.contains(&format!("{} {}", node.ip, node.name)));
        }
    }
}
