//! What both benchmarks need: the binaries built beside them, a child run measured by its own
//! rusage, and CPU time split by who spent it (cgroup v1 cpuacct), because the lab's nodes,
//! its stand-ins and certrotate all share this machine's cores and a wall time alone cannot
//! say whose work it was.

#![allow(dead_code)] // each bench uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace built in the same profile as the running bench.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target profile dir").join(name);
    assert!(bin.is_file(), "build {name} in this profile first (cargo build --workspace); looked for {}", bin.display());
    bin
}

pub struct Measured {
    pub wall: Duration,
    /// user + sys of the child and the children it waited for.
    pub cpu: Duration,
    pub max_rss_kib: i64,
    pub code: i32,
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Runs a command (stdin closed, stdout and stderr as already set on `cmd`) and returns its
/// wall time, CPU time and peak RSS, read from the child's own rusage with wait4 so that other
/// processes do not count.
pub fn run_measured(cmd: &mut Command) -> Measured {
    let start = Instant::now();
    let child = cmd.stdin(Stdio::null()).spawn().expect("spawn the measured command");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    // wait4 reaped it: the Child must not try again.
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    Measured { wall: start.elapsed(), cpu: tv(usage.ru_utime) + tv(usage.ru_stime), max_rss_kib: usage.ru_maxrss, code }
}

/// Machine-wide busy CPU time so far (all cores, /proc/stat): user, nice, system, irq and
/// softirq. Idle, iowait and steal are not work done here; guest time is already in user.
pub fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
    Duration::from_millis(busy * 1000 / ticks_per_sec)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A cpuacct cgroup (v1) that counts the CPU time of every process put in it and of all its
/// descendants, including the ones that daemonize (ssh ControlMasters) and so escape wait4.
/// It is made inside the bench's own group, so that where cpu and cpuacct share a hierarchy
/// the processes moved keep the CPU weight they had. Removed on drop once empty.
pub struct CpuGroup {
    dir: PathBuf,
    parent: PathBuf,
}

const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";

/// The cpuacct group the bench itself runs in (v1: the /proc/self/cgroup line naming cpuacct).
fn own_cpuacct_group() -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let relative = own
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(1).zip(l.splitn(3, ':').nth(2)))
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "cpuacct"))
        .map(|(_, path)| path.trim_start_matches('/').to_string())
        .unwrap_or_default();
    Path::new(CPUACCT).join(relative)
}

impl CpuGroup {
    /// None where cgroup v1 cpuacct is not mounted or not writable: the bench then prints
    /// n/a rather than guess.
    pub fn new(name: &str) -> Option<CpuGroup> {
        let parent = own_cpuacct_group();
        let dir = parent.join(format!("certrotate-bench-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let group = CpuGroup { dir, parent };
        group.usage()?;
        Some(group)
    }

    /// Moves a running process (all its threads) into the group; its later children follow.
    pub fn add(&self, pid: u32) -> bool {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).is_ok()
    }

    pub fn usage(&self) -> Option<Duration> {
        let ns: u64 = std::fs::read_to_string(self.dir.join("cpuacct.usage")).ok()?.trim().parse().ok()?;
        Some(Duration::from_nanos(ns))
    }

    /// Sets `cmd` to join this group in the child, before exec, so nothing it starts escapes.
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(self.dir.join("cgroup.procs").into_os_string().into_encoded_bytes()).expect("path");
        // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" means the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Waits (up to `limit`) until every process in the group has exited, so its usage is final.
    pub fn wait_empty(&self, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // Whatever is still inside goes back to the bench's own group, so the directory can go.
        let root = self.parent.join("cgroup.procs");
        for pid in std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines() {
            let _ = std::fs::write(&root, pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Processes whose command line contains `needle` (e.g. every sshd of one lab, by its directory).
pub fn pids_with_cmdline(needle: &str, program: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(needle) && cmdline.contains(program)
        })
        .collect()
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
