//! SSH to the nodes through the jumpbox with the system's OpenSSH client (the `openssh`
//! crate): one ControlMaster connection per node, every command multiplexed over it, and
//! host keys always verified.
//!
//! All settings go into an ssh_config written for the run (in a 0700 directory), because
//! options given with `-o` do not reach the ssh that each node's jump hop runs,
//! while `-F` does. The first master is reached at `--ssh-host` itself; every other node by
//! name through it, as `aks-engine rotate-certs` does.

use crate::remote::script::sh_quote;
use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Alias of the jumpbox in the generated ssh_config.
const JUMPBOX_ALIAS: &str = "certrotate-jumpbox";

/// How node host keys are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Every key must already be in this known_hosts file (`--known-hosts`).
    Strict(PathBuf),
    /// Keys not seen before are recorded in this file (kept beside the API model); a key
    /// that differs from the recorded one stops everything.
    TrustOnFirstUse(PathBuf),
}

impl HostKeyPolicy {
    pub fn file(&self) -> &Path {
        match self {
            HostKeyPolicy::Strict(p) | HostKeyPolicy::TrustOnFirstUse(p) => p,
        }
    }
}

/// Where and how to reach the nodes.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub jumpbox_host: String,
    pub jumpbox_port: u16,
    pub user: String,
    pub private_key: PathBuf,
    pub host_keys: HostKeyPolicy,
    pub connect_timeout: Duration,
    /// The sessions carry no private keys (refresh: certificates, public keys, digests,
    /// kubeconfigs with their keys redacted), so classic curve25519 key exchange is preferred
    /// to OpenSSH's post-quantum hybrid. The hybrid's key generation costs about 0.1 s of
    /// client CPU per connection (OpenSSH 9.2, measured in the lab), half of what reading a
    /// node costs; what it adds is secrecy against a future quantum adversary, which that
    /// data does not need. Host keys are verified either way. Apply, which sends private
    /// keys, keeps OpenSSH's order.
    pub no_private_keys: bool,
}

impl SshSettings {
    /// Parses `--ssh-host` as HOST or HOST:PORT (IPv6 in brackets), `default_port` otherwise.
    pub fn parse_host(ssh_host: &str, default_port: u16) -> (String, u16) {
        if let Some(rest) = ssh_host.strip_prefix('[') {
            if let Some((h, p)) = rest.split_once("]:") {
                if let Ok(p) = p.parse() {
                    return (h.to_string(), p);
                }
            }
            return (rest.trim_end_matches(']').to_string(), default_port);
        }
        match ssh_host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => match p.parse() {
                Ok(p) => (h.to_string(), p),
                Err(_) => (ssh_host.to_string(), default_port),
            },
            _ => (ssh_host.to_string(), default_port),
        }
    }
}

/// Why a node could not be reached or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "node {node}: its SSH host key does not match the one recorded in {known_hosts}. \
         This is what a man-in-the-middle attack looks like. Nothing was changed. If the node \
         was rebuilt, verify its new key out of band and update that file"
    )]
    HostKeyChanged { node: String, known_hosts: String },
    #[error("node {node}: its SSH host key is not in {known_hosts} (--known-hosts requires every key to be known)")]
    HostKeyUnknown { node: String, known_hosts: String },
    #[error("node {node}: unreachable over SSH: {message}")]
    Unreachable { node: String, message: String },
    #[error("node {node}: `{what}` failed with exit code {code}: {stderr}")]
    CommandFailed { node: String, what: String, code: i32, stderr: String },
    #[error("local SSH set-up failed: {0}")]
    Local(String),
    /// A failure the caller's own connection handling already put into words (apply's
    /// sessions, which reconnect once and time out).
    #[error("{0}")]
    Reported(String),
}

/// The generated ssh_config and control sockets of one run; removed on drop. One
/// multiplexed connection to the jumpbox (ControlMaster in the generated config) carries both
/// the jumpbox's own commands and the hops to the nodes behind it, so every node, the jumpbox
/// included, sees one login per run.
pub struct SshFleet {
    settings: SshSettings,
    dir: tempfile::TempDir,
    tunnel: tokio::sync::OnceCell<Result<(), String>>,
    /// Should a signal end the process, Drop does not run: this closes the connections then.
    _on_exit: crate::interrupt::ExitCleanup,
}

impl std::fmt::Debug for SshFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshFleet").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        // Close the shared tunnel now rather than leaving it to ControlPersist.
        let _ = std::process::Command::new("ssh")
            .arg("-F")
            .arg(self.config_path())
            .args(["-O", "exit", JUMPBOX_ALIAS])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl SshFleet {
    pub fn new(settings: SshSettings) -> Result<Self, RemoteError> {
        use std::os::unix::fs::PermissionsExt;
        let local = |e: std::io::Error| RemoteError::Local(e.to_string());
        let dir = tempfile::Builder::new().prefix("certrotate-ssh-").tempdir().map_err(local)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).map_err(local)?;
        if let HostKeyPolicy::TrustOnFirstUse(p) = &settings.host_keys {
            if !p.exists() {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(local)?;
                f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(local)?;
                f.flush().map_err(local)?;
            }
        }
        let on_exit = {
            let dir = dir.path().to_path_buf();
            crate::interrupt::on_exit(move || close_control_sockets(&dir))
        };
        let fleet = Self { settings, dir, tunnel: tokio::sync::OnceCell::new(), _on_exit: on_exit };
        std::fs::write(fleet.config_path(), fleet.ssh_config()).map_err(local)?;
        Ok(fleet)
    }

    pub fn settings(&self) -> &SshSettings {
        &self.settings
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// The control socket of the shared jumpbox connection (one per run: the directory is).
    fn jumpbox_control_path(&self) -> PathBuf {
        self.dir.path().join("jumpbox")
    }

    fn ssh_config(&self) -> String {
        let s = &self.settings;
        let strict = match s.host_keys {
            HostKeyPolicy::Strict(_) => "yes",
            HostKeyPolicy::TrustOnFirstUse(_) => "accept-new",
        };
        // `^` puts the algorithms at the head of OpenSSH's list, so servers without them
        // still negotiate the default. Each node's hop is what ProxyJump would run, but in a
        // session of its own (setsid): started before the node's ControlMaster moves to the
        // background, it would otherwise stay in certrotate's process group, where a Ctrl-C
        // typed at the terminal kills it while a graceful stop still needs the connection.
        // (The lab's steps survived such a kill, the jumpbox master holding the hop's pipes,
        // but that rests on OpenSSH's multiplexing internals.)
        let kex = if s.no_private_keys { "  KexAlgorithms ^curve25519-sha256,curve25519-sha256@libssh.org\n" } else { "" };
        format!(
            "Host {JUMPBOX_ALIAS}\n  HostName {host}\n  Port {port}\n  HostKeyAlias {host}\n  \
             ControlMaster auto\n  ControlPath {ctl}\n\n\
             Host * !{JUMPBOX_ALIAS}\n  ProxyCommand setsid ssh -F {cfg} -W '[%h]:%p' {JUMPBOX_ALIAS}\n\n\
             Host *\n  User {user}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  IdentityAgent none\n  \
             UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking {strict}\n  \
             CheckHostIP no\n  HashKnownHosts no\n  BatchMode yes\n  ConnectTimeout {timeout}\n  \
             ServerAliveInterval 10\n  ServerAliveCountMax 3\n  LogLevel ERROR\n{kex}",
            host = s.jumpbox_host,
            port = s.jumpbox_port,
            user = s.user,
            key = s.private_key.display(),
            kh = s.host_keys.file().display(),
            timeout = s.connect_timeout.as_secs().max(1),
            ctl = self.jumpbox_control_path().display(),
            cfg = sh_quote(&self.config_path().display().to_string()),
        )
    }

    /// Opens the node's one connection. `via_jumpbox` is false for the node that *is* the
    /// jumpbox (the first master behind `--ssh-host`).
    pub async fn connect(&self, node: &str, via_jumpbox: bool) -> Result<NodeSession, RemoteError> {
        let mut b = SessionBuilder::default();
        b.config_file(self.config_path())
            .known_hosts_check(match self.settings.host_keys {
                HostKeyPolicy::Strict(_) => KnownHosts::Strict,
                HostKeyPolicy::TrustOnFirstUse(_) => KnownHosts::Add,
            })
            .user_known_hosts_file(self.settings.host_keys.file())
            .keyfile(&self.settings.private_key)
            .user(self.settings.user.clone())
            .connect_timeout(self.settings.connect_timeout)
            .control_directory(self.dir.path());
        if let Err(message) = self.tunnel().await {
            return Err(self.classify_text(node, message));
        }
        if !via_jumpbox {
            // The jumpbox's own commands ride the tunnel's connection rather than a second
            // login; when that connection has gone (the jumpbox rebooted during apply), the
            // jumpbox gets a connection of its own as the hops' ProxyCommand does.
            let shared = Session::resume_mux(self.jumpbox_control_path().into_boxed_path(), None);
            if shared.check().await.is_ok() {
                return Ok(NodeSession { node: node.to_string(), session: shared, shared: true });
            }
        }
        let destination = if via_jumpbox { node } else { JUMPBOX_ALIAS };
        let session = b.connect_mux(destination).await.map_err(|e| self.classify(node, &e))?;
        Ok(NodeSession { node: node.to_string(), session, shared: false })
    }

    /// Opens the shared connection to the jumpbox that every hop multiplexes over (ssh's
    /// jump hop cannot be a ControlMaster itself, only a client of one), once per run.
    async fn tunnel(&self) -> Result<(), String> {
        self.tunnel
            .get_or_init(|| async {
                let out = tokio::process::Command::new("ssh")
                    .arg("-F")
                    .arg(self.config_path())
                    .args(["-M", "-N", "-f", "-o", "ControlPersist=yes", JUMPBOX_ALIAS])
                    // Out of the terminal's process group: a Ctrl-C is certrotate's to handle
                    // (a graceful stop keeps using this connection), not this ssh's.
                    .process_group(0)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| format!("cannot run ssh: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!("jumpbox {}: {}", self.settings.jumpbox_host, String::from_utf8_lossy(&out.stderr).trim()))
                }
            })
            .await
            .clone()
    }

    fn classify(&self, node: &str, e: &openssh::Error) -> RemoteError {
        let mut message = e.to_string();
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        self.classify_text(node, message)
    }

    fn classify_text(&self, node: &str, message: String) -> RemoteError {
        let known_hosts = self.settings.host_keys.file().display().to_string();
        if message.contains("IDENTIFICATION HAS CHANGED") || message.contains("Host key for") && message.contains("has changed") {
            RemoteError::HostKeyChanged { node: node.to_string(), known_hosts }
        } else if message.contains("Host key verification failed") {
            match self.settings.host_keys {
                // accept-new only fails verification when a recorded key differs.
                HostKeyPolicy::TrustOnFirstUse(_) => RemoteError::HostKeyChanged { node: node.to_string(), known_hosts },
                HostKeyPolicy::Strict(_) => RemoteError::HostKeyUnknown { node: node.to_string(), known_hosts },
            }
        } else {
            RemoteError::Unreachable { node: node.to_string(), message }
        }
    }
}

/// Tells every ControlMaster with a socket under `dir` to exit, then removes `dir`: the
/// masters are daemons (ControlPersist) that would otherwise stay connected to the nodes.
pub fn close_control_sockets(dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let mut sockets = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_socket() => sockets.push(entry.path()),
                _ => {}
            }
        }
    }
    for socket in sockets {
        // The host name is not used: the socket says which connection.
        let _ = std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-O", "exit", "certrotate-closing"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// One node's multiplexed connection.
pub struct NodeSession {
    node: String,
    session: Session,
    /// The jumpbox's session on the shared tunnel: closing it must not stop the tunnel the
    /// other nodes' hops go through (dropping a resumed session leaves the master alone).
    shared: bool,
}

impl NodeSession {
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs a shell script as root (`sudo -n sh -s`), feeding it on stdin so no part of it
    /// shows in the node's process list; returns stdout.
    pub async fn run_script_as_root(&self, what: &str, script: &str) -> Result<String, RemoteError> {
        self.run_script(what, script, true).await
    }

    pub async fn run_script(&self, what: &str, script: &str, as_root: bool) -> Result<String, RemoteError> {
        if as_root {
            self.run_program(what, "sudo", &["-n", "sh", "-s"], script).await
        } else {
            self.run_program(what, "sh", &["-s"], script).await
        }
    }

    /// Runs `program args...` feeding `stdin` (a script, possibly carrying key material, which
    /// must not appear on a command line); returns stdout, or the exit code and stderr.
    pub async fn run_program(&self, what: &str, program: &str, args: &[&str], stdin: &str) -> Result<String, RemoteError> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.session.command(program);
        cmd.args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| self.unreachable(&e))?;
        if let Some(mut pipe) = child.stdin().take() {
            pipe.write_all(stdin.as_bytes()).await.map_err(|e| RemoteError::Unreachable {
                node: self.node.clone(),
                message: format!("sending the script: {e}"),
            })?;
            pipe.shutdown().await.ok();
        }
        let out = child.wait_with_output().await.map_err(|e| self.unreachable(&e))?;
        if !out.status.success() {
            return Err(RemoteError::CommandFailed {
                node: self.node.clone(),
                what: what.to_string(),
                code: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn unreachable(&self, e: &openssh::Error) -> RemoteError {
        RemoteError::Unreachable { node: self.node.clone(), message: e.to_string() }
    }

    pub async fn close(self) {
        if !self.shared {
            let _ = self.session.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_host_forms() {
        assert_eq!(SshSettings::parse_host("10.0.0.4", 22), ("10.0.0.4".into(), 22));
        assert_eq!(SshSettings::parse_host("10.0.0.4:2222", 22), ("10.0.0.4".into(), 2222));
        assert_eq!(SshSettings::parse_host("jump.example.org", 50001), ("jump.example.org".into(), 50001));
        assert_eq!(SshSettings::parse_host("[fd00::4]:2200", 22), ("fd00::4".into(), 2200));
    }

    #[test]
    fn config_routes_every_node_but_the_jumpbox_through_it() {
        let kh = tempfile::NamedTempFile::new().unwrap();
        let fleet = SshFleet::new(SshSettings {
            jumpbox_host: "10.1.2.5".into(),
            jumpbox_port: 22,
            user: "azureuser".into(),
            private_key: "/keys/id".into(),
            host_keys: HostKeyPolicy::Strict(kh.path().to_path_buf()),
            connect_timeout: Duration::from_secs(10),
            no_private_keys: false,
        })
        .unwrap();
        let cfg = std::fs::read_to_string(fleet.config_path()).unwrap();
        assert!(!cfg.contains("KexAlgorithms"), "sessions that may carry keys keep OpenSSH's key exchange");
        let reader = SshFleet::new(SshSettings { no_private_keys: true, ..fleet.settings().clone() }).unwrap();
        let cfg = std::fs::read_to_string(reader.config_path()).unwrap();
        assert!(cfg.contains("KexAlgorithms ^curve25519-sha256,"), "{cfg}");
        assert!(cfg.contains("StrictHostKeyChecking yes"));
        let hop = format!("Host * !certrotate-jumpbox\n  ProxyCommand setsid ssh -F '{}' -W '[%h]:%p' certrotate-jumpbox\n", reader.config_path().display());
        assert!(cfg.contains(&hop), "{cfg}");
        assert!(cfg.contains("StrictHostKeyChecking yes"));
        assert!(cfg.contains("HostKeyAlias 10.1.2.5"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(fleet.dir.path()).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
