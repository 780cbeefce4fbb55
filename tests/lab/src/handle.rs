//! The Rust API of the lab (what integration tests use) and the logic behind `lab up` and
//! `lab down`: prepare the directory (PKI, node files, outputs), start the detached
//! supervisor, wait for health, and tear everything down again.

use crate::control::{self, Fault, LabStatus, PhaseTiming, Request};
use crate::error::LabError;
use crate::outputs::{self, Identity};
use crate::spec::{host_subnets_in_use, LabSpec, Layout};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of `up` beyond the cluster's shape.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// The `lab` binary to run as supervisor and to call from the node shims. Default: the
    /// `LAB_BINARY` environment variable, else the current executable if it is `lab`, else
    /// `lab` beside the current executable's directory (cargo's target/<profile>/).
    pub lab_binary: Option<PathBuf>,
    /// Tear the lab down when this process exits (tests: no lab outlives its test binary).
    pub owner_pid: Option<u32>,
    /// Give up waiting for health after this long (default 60 s + 1 s per node).
    pub timeout: Option<Duration>,
}

/// How long `up` took and how much memory the lab used, per phase.
#[derive(Debug, Clone, Default)]
pub struct UpReport {
    /// Phases in order: the `up` side (memory = its own peak) and the supervisor's side
    /// (memory = supervisor plus node processes after the phase).
    pub phases: Vec<PhaseTiming>,
    pub total: Duration,
    /// Peak of the summed resident memory of lab processes seen while waiting, KiB.
    pub peak_rss_kib: u64,
    pub process_count: usize,
}

/// A running lab. Dropping it tears the lab down.
#[derive(Debug)]
pub struct Lab {
    pub layout: Layout,
    pub identity: Identity,
    pub report: UpReport,
    torn_down: bool,
}

fn resolve_binary(explicit: Option<PathBuf>) -> Result<PathBuf, LabError> {
    if let Some(path) = explicit.or_else(|| std::env::var_os("LAB_BINARY").map(PathBuf::from)) {
        return Ok(path);
    }
    let me = std::env::current_exe().map_err(LabError::io("finding the current executable"))?;
    if me.file_name().is_some_and(|n| n == "lab") {
        return Ok(me);
    }
    let beside = me.parent().and_then(Path::parent).map(|p| p.join("lab"));
    match beside {
        Some(path) if path.exists() => Ok(path),
        _ => Err(LabError::Spec(
            "cannot find the `lab` binary; build it (`cargo build -p certrotate-lab`) and set LAB_BINARY".into(),
        )),
    }
}

fn canonical_dir(dir: &Path) -> Result<PathBuf, LabError> {
    std::fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    let dir = dir.canonicalize().map_err(LabError::io(format!("resolving {}", dir.display())))?;
    // The node's /etc, /var and /home are overlays or binds: a lab inside them would hide
    // its own files from its nodes.
    for reserved in ["/etc", "/var", "/home", "/run", "/usr"] {
        if dir.starts_with(reserved) {
            return Err(LabError::Spec(format!(
                "--dir {} lies under {reserved}, which every node replaces with its own; use a directory elsewhere (e.g. under /tmp or /work)",
                dir.display()
            )));
        }
    }
    Ok(dir)
}

/// `preferred` if 127.0.0.1 can listen on it, else the next free port (the ARM stand-in's
/// endpoint is written into apimodel.json before the supervisor binds it).
fn free_local_port(preferred: u16) -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    (preferred..preferred.saturating_add(200))
        .find(|p| free(*p))
        .or_else(|| std::net::TcpListener::bind(("127.0.0.1", 0)).ok().and_then(|l| l.local_addr().ok()).map(|a| a.port()))
        .unwrap_or(preferred)
}

fn supervisor_alive(layout: &Layout) -> bool {
    control::call(&layout.socket(), &Request::Status, Duration::from_secs(5)).is_ok()
}

impl Lab {
    /// Bring a lab up in `dir` and wait until it is healthy.
    pub fn up(dir: &Path, spec: LabSpec, options: UpOptions) -> Result<Lab, LabError> {
        let started = Instant::now();
        let dir = canonical_dir(dir)?;
        if let Ok(previous) = Layout::load(&dir) {
            if supervisor_alive(&previous) {
                return Err(LabError::AlreadyRunning { dir });
            }
            crate::cleanup::cleanup_offline(&previous);
        }
        let lab_binary = resolve_binary(options.lab_binary.clone())?;
        let mut phases = Vec::new();
        let mut since = Instant::now();
        let mut mark = |name: &str, since: &mut Instant| {
            let rss_kib = crate::nsexec::own_peak_rss_kib();
            phases.push(PhaseTiming { phase: name.to_string(), millis: since.elapsed().as_millis() as u64, rss_kib });
            *since = Instant::now();
        };
        let used = host_subnets_in_use();
        let mut layout = Layout::derive(&dir, spec, |s| used.contains(&s))?;
        layout.arm_port = free_local_port(layout.arm_port);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(LabError::io("chmod the lab dir"))?;
        let state = serde_json::to_string_pretty(&layout).expect("layouts serialise");
        crate::fsutil::write_file(&Layout::state_file(&dir), state.as_bytes(), 0o644, 0, 0)?;

        let public_key = crate::nodefiles::write_operator_key(&layout)?;
        let identity = Identity::generate(&layout);
        crate::armhost::write_tls(&layout)?;
        crate::armhost::write_client_certificate(&layout, &identity)?;
        outputs::write_model_skeleton(&layout, &identity, &public_key)?;
        let topology = crate::pki::topology_of(&layout, &outputs::apimodel_path(&layout))?;
        let pki = crate::pki::issue_cluster_pki(&layout, &certrotate::pki::catalogue::catalogue(&topology))?;
        mark("pki", &mut since);

        let kubeconfig = outputs::admin_kubeconfig(&layout, &pki);
        std::thread::scope(|scope| {
            let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) * 2;
            let per = layout.nodes.len().div_ceil(workers).max(1);
            let handles: Vec<_> = layout
                .nodes
                .chunks(per)
                .enumerate()
                .map(|(chunk_index, chunk)| {
                    let (layout, pki, public_key, kubeconfig) = (&layout, &pki, &public_key, &kubeconfig);
                    scope.spawn(move || {
                        chunk.iter().enumerate().try_for_each(|(i, node)| {
                            crate::nodefiles::write_node(layout, node, chunk_index * per + i, pki, public_key, kubeconfig)
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|_| Err(LabError::Spec("writing node files panicked".into()))))
        })?;
        crate::nodefiles::write_known_hosts(&layout)?;
        crate::nodefiles::write_ssh_config(&layout)?;
        outputs::write_outputs(&layout, &pki, &identity, &public_key, &kubeconfig)?;
        mark("files", &mut since);

        spawn_supervisor(&layout, &lab_binary, options.owner_pid)?;
        let timeout = options.timeout.unwrap_or(Duration::from_secs(60 + layout.nodes.len() as u64));
        let (status, peak) = wait_healthy(&layout, timeout)?;
        mark("healthy", &mut since);
        phases.extend(status.timings.iter().map(|t| PhaseTiming { phase: format!("supervisor:{}", t.phase), ..t.clone() }));
        Ok(Lab {
            identity,
            report: UpReport { phases, total: started.elapsed(), peak_rss_kib: peak, process_count: status.process_count },
            layout,
            torn_down: false,
        })
    }

    /// Attach to a running lab (does not take ownership: dropping it leaves the lab up).
    pub fn attach(dir: &Path) -> Result<Lab, LabError> {
        let layout = Layout::load(&dir.canonicalize().map_err(LabError::io(format!("resolving {}", dir.display())))?)?;
        let identity = outputs::load_identity(&layout)?;
        Ok(Lab { layout, identity, report: UpReport::default(), torn_down: true })
    }

    pub fn status(&self) -> Result<LabStatus, LabError> {
        status(&self.layout)
    }

    pub fn fault(&self, fault: Fault) -> Result<String, LabError> {
        Ok(control::call_ok(&self.layout.socket(), &Request::Fault(fault), Duration::from_secs(120))?.message)
    }

    /// Every call the ARM stand-in answered, oldest first.
    pub fn arm_calls(&self) -> Result<Vec<crate::arm::CallRecord>, LabError> {
        let response = control::call_ok(&self.layout.socket(), &Request::ArmCalls, Duration::from_secs(30))?;
        Ok(response.arm_calls.unwrap_or_default())
    }

    /// Every LAB_* value of lab.env.
    pub fn env(&self) -> BTreeMap<&'static str, String> {
        outputs::env_vars(&self.layout, &self.identity).into_iter().collect()
    }

    /// How many SSH logins a node has accepted (sshd's log, `LogLevel VERBOSE`): lets tests
    /// assert how many connections a tool opened per node.
    pub fn ssh_logins(&self, node: &str) -> Result<usize, LabError> {
        let info = self.layout.node(node)?;
        let log = crate::nodefiles::sshd_log(&self.layout, info);
        let text = std::fs::read_to_string(&log).map_err(LabError::io(format!("reading {}", log.display())))?;
        Ok(text.matches("Accepted publickey for ").count())
    }

    /// Wait until the lab reports healthy again (after a fault is undone, a reboot...).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<LabStatus, LabError> {
        wait_healthy(&self.layout, timeout).map(|(s, _)| s)
    }

    /// Leave the lab running when this handle is dropped (the `lab up` command does this).
    pub fn release(&mut self) {
        self.torn_down = true;
    }

    pub fn down(mut self) -> Result<Vec<String>, LabError> {
        self.torn_down = true;
        down(&self.layout)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(e) = down(&self.layout) {
                eprintln!("lab: tearing down {} failed: {e}", self.layout.dir.display());
            }
        }
    }
}

fn spawn_supervisor(layout: &Layout, lab_binary: &Path, owner_pid: Option<u32>) -> Result<(), LabError> {
    use std::os::unix::process::CommandExt;
    let log_path = layout.dir.join("supervisor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(LabError::io(format!("opening {}", log_path.display())))?;
    let mut command = std::process::Command::new(lab_binary);
    command.arg("supervise").arg("--dir").arg(&layout.dir);
    if let Some(pid) = owner_pid {
        command.arg("--owner-pid").arg(pid.to_string());
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(LabError::io("duplicating the log handle"))?)
        .stderr(log)
        .process_group(0);
    // SAFETY: setsid only, so the supervisor survives the terminal of `lab up`.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command.spawn().map_err(LabError::io(format!("starting {}", lab_binary.display())))?;
    // The supervisor is detached; reap it from a thread so it never lingers as a zombie of a
    // long-running test process.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}

pub fn status(layout: &Layout) -> Result<LabStatus, LabError> {
    let response = control::call_ok(&layout.socket(), &Request::Status, Duration::from_secs(30))?;
    response.status.ok_or_else(|| LabError::Refused("status answer without a status".into()))
}

fn wait_healthy(layout: &Layout, timeout: Duration) -> Result<(LabStatus, u64), LabError> {
    let deadline = Instant::now() + timeout;
    let mut peak = 0;
    let mut last_problem = String::from("the supervisor has not answered yet");
    loop {
        if Instant::now() > deadline {
            let log_tail = std::fs::read_to_string(layout.dir.join("supervisor.log"))
                .map(|t| t.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            return Err(LabError::Timeout { secs: timeout.as_secs(), detail: format!("{last_problem}\nsupervisor.log ends:\n{log_tail}") });
        }
        match status(layout) {
            Ok(status) => {
                peak = peak.max(status.rss_kib);
                if status.healthy {
                    return Ok((status, peak));
                }
                last_problem = status.problems.join("; ");
            }
            Err(e) => {
                last_problem = e.to_string();
                if crate::cleanup::live_supervisor(layout).is_none() && layout.dir.join("supervisor.log").exists() {
                    // Give a starting supervisor a moment to write its pid file.
                    std::thread::sleep(Duration::from_millis(300));
                    if crate::cleanup::live_supervisor(layout).is_none() && !layout.socket().exists() {
                        let log = std::fs::read_to_string(layout.dir.join("supervisor.log")).unwrap_or_default();
                        if log.contains("bring-up failed") {
                            return Err(LabError::Refused(format!("the supervisor failed to bring the lab up:\n{log}")));
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stop the lab: ask the supervisor, wait for it to finish, then verify (and clean up what a
/// dead supervisor left). Returns what had to be cleaned offline.
pub fn down(layout: &Layout) -> Result<Vec<String>, LabError> {
    let supervisor = crate::cleanup::live_supervisor(layout);
    if control::call_ok(&layout.socket(), &Request::Down, Duration::from_secs(10)).is_ok() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let alive = supervisor.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()
                && crate::cleanup::live_supervisor(layout) == Some(pid));
            if !alive && !layout.socket().exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let cleaned = crate::cleanup::cleanup_offline(layout);
    let left = crate::cleanup::leftovers(layout);
    if !left.is_empty() {
        return Err(LabError::Refused(format!("after down these are still present: {}", left.join(", "))));
    }
    Ok(cleaned)
}
