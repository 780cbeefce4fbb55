//! Namespaces of a node. Each node is held by one small process (`sleep infinity`) that owns
//! the node's network, mount and UTS namespaces; no named netns or host mount is created, so
//! nothing outlives the node's processes. In its mount namespace the node's own `/etc` and
//! `/var` are overlays of the host's (upper layer = `DIR/nodes/<n>/fs/...`), `/home` is the
//! node's, `/run` is a private tmpfs (sshd's privsep dir lives there), and the supervisor
//! shim covers systemctl/reboot. Other processes join a node with `setns` before exec.

use crate::error::LabError;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// One mount the holder performs inside the node's fresh mount namespace.
#[derive(Debug, Clone)]
pub enum NodeMount {
    Overlay { target: PathBuf, upper: PathBuf, work: PathBuf },
    Bind { source: PathBuf, target: PathBuf },
    Tmpfs { target: PathBuf },
    /// Create a directory (mode 0755), e.g. a mount point inside a fresh tmpfs.
    MakeDir { path: PathBuf },
    /// Create an empty file, a mount point for binding a single file.
    MakeFile { path: PathBuf },
}

fn cstring(path: &Path) -> Result<CString, LabError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| LabError::Spec(format!("path {} contains a NUL byte", path.display())))
}

enum PreparedStep {
    Mount(PreparedMount),
    MakeDir(CString),
    MakeFile(CString),
}

/// A mount prepared as C strings before fork (no allocation after fork).
struct PreparedMount {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
}

fn prepare(mounts: &[NodeMount]) -> Result<Vec<PreparedStep>, LabError> {
    mounts
        .iter()
        .map(|m| {
            Ok(PreparedStep::Mount(match m {
                NodeMount::MakeDir { path } => return Ok(PreparedStep::MakeDir(cstring(path)?)),
                NodeMount::MakeFile { path } => return Ok(PreparedStep::MakeFile(cstring(path)?)),
                NodeMount::Overlay { target, upper, work } => PreparedMount {
                    source: CString::new("overlay").expect("literal"),
                    target: cstring(target)?,
                    fstype: Some(CString::new("overlay").expect("literal")),
                    flags: 0,
                    data: Some(
                        CString::new(format!(
                            "lowerdir={},upperdir={},workdir={}",
                            target.display(),
                            upper.display(),
                            work.display()
                        ))
                        .map_err(|_| LabError::Spec("overlay path contains a NUL byte".into()))?,
                    ),
                },
                NodeMount::Bind { source, target } => PreparedMount {
                    source: cstring(source)?,
                    target: cstring(target)?,
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                },
                NodeMount::Tmpfs { target } => PreparedMount {
                    source: CString::new("tmpfs").expect("literal"),
                    target: cstring(target)?,
                    fstype: Some(CString::new("tmpfs").expect("literal")),
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                    data: Some(CString::new("mode=755,size=16m").expect("literal")),
                },
            }))
        })
        .collect()
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A command that, when spawned, becomes the holder of a new node: new net/mount/UTS
/// namespaces, private propagation, the node's mounts (in order) and its hostname.
pub fn holder_command(hostname: &str, mounts: &[NodeMount]) -> Result<std::process::Command, LabError> {
    let prepared = prepare(mounts)?;
    let hostname = hostname.as_bytes().to_vec();
    let root = CString::new("/").expect("literal");
    let mut command = std::process::Command::new("sleep");
    command.arg("infinity");
    command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: the closure only makes raw syscalls on data prepared before fork.
    unsafe {
        command.pre_exec(move || {
            check(libc::setsid())?;
            check(libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for step in &prepared {
                match step {
                    PreparedStep::Mount(m) => check(libc::mount(
                        m.source.as_ptr(),
                        m.target.as_ptr(),
                        m.fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                        m.flags,
                        m.data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
                    ))?,
                    PreparedStep::MakeDir(path) => {
                        let rc = libc::mkdir(path.as_ptr(), 0o755);
                        if rc == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    PreparedStep::MakeFile(path) => {
                        let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o755);
                        check(fd)?;
                        libc::close(fd);
                    }
                }
            }
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            Ok(())
        });
    }
    Ok(command)
}

/// Open handles on a running node's namespaces, to enter them from new processes.
pub struct NodeNamespaces {
    pub holder_pid: u32,
    net: OwnedFd,
    mnt: OwnedFd,
    uts: OwnedFd,
}

fn open_ns(pid: u32, kind: &str) -> Result<OwnedFd, LabError> {
    let path = format!("/proc/{pid}/ns/{kind}");
    std::fs::File::open(&path).map(OwnedFd::from).map_err(LabError::io(format!("opening {path}")))
}

/// Which namespaces a command joins and as whom it runs.
#[derive(Debug, Clone, Copy)]
pub struct Enter {
    pub net: bool,
    pub mount_and_uts: bool,
    /// uid and gid to switch to after entering (supplementary groups cleared).
    pub user: Option<(u32, u32)>,
}

impl Enter {
    pub const ALL: Enter = Enter { net: true, mount_and_uts: true, user: None };
    pub const NET: Enter = Enter { net: true, mount_and_uts: false, user: None };
}

impl NodeNamespaces {
    pub fn open(holder_pid: u32) -> Result<NodeNamespaces, LabError> {
        Ok(NodeNamespaces {
            holder_pid,
            net: open_ns(holder_pid, "net")?,
            mnt: open_ns(holder_pid, "mnt")?,
            uts: open_ns(holder_pid, "uts")?,
        })
    }

    /// Inode of the node's network namespace: the mark of every process that belongs to it.
    pub fn net_inode(&self) -> Result<u64, LabError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(format!("/proc/{}/ns/net", self.holder_pid))
            .map_err(LabError::io("reading a node's netns"))?;
        Ok(meta.ino())
    }

    /// Make `command` start inside the node. Works for std and tokio commands alike.
    pub fn enter(&self, command: &mut std::process::Command, how: Enter) {
        let (net, mnt, uts) = (self.net.as_raw_fd(), self.mnt.as_raw_fd(), self.uts.as_raw_fd());
        let root = CString::new("/").expect("literal");
        // SAFETY: raw syscalls only; the fds stay open in the parent until spawn returns
        // (callers hold `self` across spawn).
        unsafe {
            command.pre_exec(move || {
                if how.net {
                    check(libc::setns(net, libc::CLONE_NEWNET))?;
                }
                if how.mount_and_uts {
                    check(libc::setns(mnt, libc::CLONE_NEWNS))?;
                    check(libc::setns(uts, libc::CLONE_NEWUTS))?;
                    check(libc::chdir(root.as_ptr()))?;
                }
                if let Some((uid, gid)) = how.user {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(gid))?;
                    check(libc::setuid(uid))?;
                }
                Ok(())
            });
        }
    }

    /// Run a command inside the node to completion; error with its stderr when it fails.
    pub fn run(&self, program: &str, args: &[&str], stdin: Option<&str>, how: Enter) -> Result<String, LabError> {
        use std::io::Write;
        let mut command = std::process::Command::new(program);
        command.args(args);
        command.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        self.enter(&mut command, how);
        let rendered = format!("{program} {}", args.join(" "));
        let mut child = command.spawn().map_err(LabError::io(format!("starting {rendered} in a node")))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(LabError::io(format!("feeding {rendered}")))?;
        }
        let output = child.wait_with_output().map_err(LabError::io(format!("waiting for {rendered}")))?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: rendered,
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Every process whose network namespace has inode `net_inode` (a node's processes).
pub fn pids_in_netns(net_inode: u64) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino() == net_inode).unwrap_or(false)
        })
        .collect()
}

/// Resident memory of a process in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Peak resident memory of this process so far, KiB.
pub fn own_peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// This process plus every process in the given network namespaces: (KiB, count).
pub fn lab_rss_kib(net_inodes: &[u64]) -> (u64, usize) {
    let mut total = rss_kib(std::process::id());
    let mut count = 1;
    for inode in net_inodes {
        for pid in pids_in_netns(*inode) {
            total += rss_kib(pid);
            count += 1;
        }
    }
    (total, count)
}

/// Send `signal` to every pid in `pids`, ignoring those already gone.
pub fn signal_all(pids: &[u32], signal: libc::c_int) {
    for pid in pids {
        // SAFETY: kill(2) with a pid we found in the node's namespace.
        unsafe {
            libc::kill(*pid as libc::pid_t, signal);
        }
    }
}

impl NodeNamespaces {
    /// Run an async task on a thread of its own that joined the node's network namespace, so
    /// every socket it opens (listeners, client connections) lives in the node: a stand-in
    /// run this way sees the node's network, cuts included, without a process of its own.
    /// `make` receives a stop signal; the returned `Running` ends when the task does.
    pub fn spawn_net_task<F, Fut>(&self, name: String, make: F) -> Result<crate::service::Running, LabError>
    where
        F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let net = self.net.try_clone().map_err(LabError::io("duplicating a netns handle"))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // SAFETY: setns on this thread only; the network namespace is per thread.
                if unsafe { libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) } == -1 {
                    eprintln!("lab: {name}: cannot join the node's network: {}", std::io::Error::last_os_error());
                    let _ = done_tx.send(());
                    return;
                }
                drop(net);
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(make(stop_rx)),
                    Err(e) => eprintln!("lab: {name}: cannot start a runtime: {e}"),
                }
                let _ = done_tx.send(());
            })
            .map_err(LabError::io("starting a node task thread"))?;
        Ok(crate::service::Running::Task { stop: Some(stop_tx), done: done_rx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A holder with no mounts: fresh namespaces only. Killed on drop.
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn net_tasks_and_commands_run_inside_the_node() {
        let holder = Holder(holder_command("ns-test-node", &[]).unwrap().spawn().expect("needs root"));
        let ns = NodeNamespaces::open(holder.0.id()).unwrap();
        let node_inode = ns.net_inode().unwrap();
        let host_inode = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(node_inode, host_inode);

        let hostname = ns.run("hostname", &[], None, Enter::ALL).unwrap();
        assert_eq!(hostname.trim(), "ns-test-node");

        let (tx, rx) = tokio::sync::oneshot::channel();
        let running = ns
            .spawn_net_task("ns-test".into(), move |_stop| async move {
                let inode = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
                let _ = tx.send(inode);
            })
            .unwrap();
        assert_eq!(rx.await.unwrap(), node_inode, "the task's thread is in the node's netns");
        let crate::service::Running::Task { done, .. } = running else { panic!("a task") };
        done.await.unwrap();
        assert_eq!(std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(), host_inode, "the caller stays put");
    }
}
