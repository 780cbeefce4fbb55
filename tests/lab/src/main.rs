//! The `lab` command: bring a local AKS Engine-like cluster up, inspect it, inject faults,
//! tear it down. Hidden subcommands run the supervisor and serve the nodes' systemctl/reboot.

use clap::{Parser, Subcommand};
use lab::control::{self, Fault, Request, SystemctlAction};
use lab::handle::{Lab, UpOptions};
use lab::spec::{Expiry, LabSpec, Layout};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "lab", about = "A local AKS Engine-like cluster: real sshd, real etcd, TLS stand-ins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a cluster up and wait until it is healthy; writes DIR/lab.env.
    Up {
        #[arg(long, default_value_t = 3)]
        masters: u8,
        #[arg(long, default_value_t = 2)]
        agents: u16,
        /// Leaf certificates expire this long after now (e.g. 20d, 36h).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expired")]
        expires_in: Option<Duration>,
        /// Leaf certificates are already expired.
        #[arg(long)]
        expired: bool,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        dns_prefix: Option<String>,
        #[arg(long, default_value = "local")]
        location: String,
        /// How long a reboot keeps a node down.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        reboot_delay: Duration,
        /// How often kubelets report node status (Kubernetes' default is 10s); a node goes
        /// NotReady after four missed reports.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        heartbeat: Duration,
        /// The stamp's identity provider: azure_ad or adfs.
        #[arg(long, value_enum, default_value = "azure_ad")]
        identity_system: IdentityArg,
        /// How the service principal signs in: client_secret or client_certificate (lab.env
        /// then names LAB_CLIENT_CERTIFICATE and LAB_CLIENT_PRIVATE_KEY).
        #[arg(long, value_enum, default_value = "client_secret")]
        auth_method: AuthArg,
        /// How long a (re)started apiserver takes before /readyz is ok (it listens at once).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
        apiserver_startup: Duration,
        /// kube-apiserver's --shutdown-delay-duration: after a stop, /readyz fails at once and
        /// it keeps serving this long (Kubernetes' and AKS Engine's value is 0s).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        apiserver_shutdown_delay: Duration,
        /// Print time and peak memory per phase.
        #[arg(long)]
        timings: bool,
    },
    /// Show the health of every node and service.
    Status {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Inject or undo a fault.
    Fault {
        #[arg(long)]
        dir: PathBuf,
        #[command(subcommand)]
        fault: FaultCommand,
    },
    /// Stop everything and remove every process, namespace, veth and bridge of the lab.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        owner_pid: Option<u32>,
    },
    /// The apiserver stand-in of one master (run by the supervisor inside the node).
    #[command(hide = true)]
    Apiserver {
        #[arg(long)]
        config: PathBuf,
    },
    /// Called by the shims inside a node (systemctl, reboot).
    #[command(hide = true)]
    NodeCtl {
        /// The supervisor's socket as the node sees it.
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum FaultCommand {
    StopNode { node: String },
    StartNode { node: String },
    Reboot { node: String },
    CutNetwork { node: String },
    RestoreNetwork { node: String },
    /// Make reboots slow (all nodes unless --node).
    RebootDelay {
        #[arg(value_parser = humantime::parse_duration)]
        delay: Duration,
        #[arg(long)]
        node: Option<String>,
    },
    /// Make `systemctl restart` keep the unit down this long (all nodes unless --node).
    RestartDelay {
        #[arg(value_parser = humantime::parse_duration)]
        delay: Duration,
        #[arg(long)]
        node: Option<String>,
    },
    StopEtcd { node: String },
    StartEtcd { node: String },
    ReplaceHostKey { node: String },
    ReadOnlyKubernetes { node: String },
    WritableKubernetes { node: String },
    /// Make the ARM stand-in fail matching requests (e.g. --status 429 --times 2).
    ArmError {
        #[arg(long)]
        status: u16,
        /// Fail this many requests, then serve again (default: every one until cleared).
        #[arg(long)]
        times: Option<u32>,
        /// Request path glob (`*` matches anything), case-insensitive.
        #[arg(long, default_value = "*")]
        path: String,
        /// Only this HTTP method (GET, POST...).
        #[arg(long)]
        method: Option<String>,
    },
    ClearArmErrors,
}

impl FaultCommand {
    fn into_fault(self) -> Fault {
        match self {
            FaultCommand::StopNode { node } => Fault::StopNode { node },
            FaultCommand::StartNode { node } => Fault::StartNode { node },
            FaultCommand::Reboot { node } => Fault::RebootNode { node },
            FaultCommand::CutNetwork { node } => Fault::CutNetwork { node },
            FaultCommand::RestoreNetwork { node } => Fault::RestoreNetwork { node },
            FaultCommand::RebootDelay { delay, node } => Fault::RebootDelay { node, millis: delay.as_millis() as u64 },
            FaultCommand::RestartDelay { delay, node } => Fault::RestartDelay { node, millis: delay.as_millis() as u64 },
            FaultCommand::StopEtcd { node } => Fault::StopEtcd { node },
            FaultCommand::StartEtcd { node } => Fault::StartEtcd { node },
            FaultCommand::ReplaceHostKey { node } => Fault::ReplaceHostKey { node },
            FaultCommand::ReadOnlyKubernetes { node } => Fault::ReadOnlyKubernetes { node },
            FaultCommand::WritableKubernetes { node } => Fault::WritableKubernetes { node },
            FaultCommand::ArmError { status, times, path, method } => {
                let mut rule = lab::arm::FaultRule::new(path, status, times);
                rule.method = method;
                Fault::ArmError { rule }
            }
            FaultCommand::ClearArmErrors => Fault::ClearArmErrors,
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_status(status: &control::LabStatus) {
    println!("phase: {}   healthy: {}   processes: {}   memory: {}", status.phase, status.healthy, status.process_count, mib(status.rss_kib));
    for node in &status.nodes {
        let units: Vec<String> = node
            .units
            .iter()
            .map(|(unit, s)| {
                let state = if s.active { "active" } else if s.wanted { "starting" } else { "stopped" };
                let note = if s.placeholder { "(placeholder)" } else { "" };
                format!("{unit:?}={state}{note}").to_lowercase()
            })
            .collect();
        let etcd = match node.etcd_healthy {
            Some(true) => " etcd=healthy",
            Some(false) => " etcd=UNHEALTHY",
            None => "",
        };
        let ready = match node.apiserver_ready {
            Some(true) => " readyz=ok",
            Some(false) => " readyz=FAILING",
            None => "",
        };
        println!(
            "  {:<32} {:<15} {:?}{} ssh={}{}{} {}",
            node.name,
            node.ip,
            node.power,
            if node.network_up { "" } else { " NETWORK-CUT" },
            if node.ssh_reachable { "ok" } else { "DOWN" },
            etcd,
            ready,
            units.join(" ")
        );
    }
    let mut balancer = "";
    for backend in &status.load_balancers {
        if backend.balancer != balancer {
            balancer = &backend.balancer;
            println!("  load balancer {balancer}");
        }
        println!(
            "    {:<30} {:<10} probe={:<7} connections={:<6} changed {}s ago",
            backend.master, backend.status, backend.check, backend.sessions_total, backend.last_change_secs
        );
    }
    for problem in &status.problems {
        println!("  problem: {problem}");
    }
}

/// systemctl as the node sees it: exit codes as systemd's (0 ok, 3 inactive, 5 no such unit).
fn node_ctl(socket: PathBuf, node: String, args: Vec<String>) -> ExitCode {
    let words: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    let call = |request: Request| control::call(&socket, &request, Duration::from_secs(120));
    match words.as_slice() {
        ["reboot", ..] => match call(Request::Reboot { node }) {
            Ok(r) if r.ok => ExitCode::SUCCESS,
            Ok(r) => {
                eprintln!("reboot: {}", r.message);
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("reboot: {e}");
                ExitCode::FAILURE
            }
        },
        ["systemctl", "daemon-reload" | "reset-failed", ..] => ExitCode::SUCCESS,
        ["systemctl", verb, units @ ..] if !units.is_empty() => {
            let action = match *verb {
                "start" => SystemctlAction::Start,
                "stop" => SystemctlAction::Stop,
                "restart" | "try-restart" | "reload-or-restart" => SystemctlAction::Restart,
                "is-active" => SystemctlAction::IsActive,
                other => {
                    eprintln!("systemctl (lab): unsupported command {other:?}; supported: start, stop, restart, is-active");
                    return ExitCode::from(1);
                }
            };
            let mut code = ExitCode::SUCCESS;
            for unit in units {
                match call(Request::Systemctl { node: node.clone(), action, unit: unit.to_string() }) {
                    Ok(r) if action == SystemctlAction::IsActive => {
                        println!("{}", r.message);
                        if !r.ok {
                            code = ExitCode::from(3);
                        }
                    }
                    Ok(r) if r.ok => {}
                    Ok(r) => {
                        eprintln!("Failed to {verb} {unit}: {}", r.message);
                        code = ExitCode::from(5);
                    }
                    Err(e) => {
                        eprintln!("Failed to {verb} {unit}: {e}");
                        code = ExitCode::from(1);
                    }
                }
            }
            code
        }
        _ => {
            eprintln!("systemctl (lab): usage: systemctl start|stop|restart|is-active UNIT...");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum IdentityArg {
    AzureAd,
    Adfs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum AuthArg {
    ClientSecret,
    ClientCertificate,
}

fn run(cli: Cli) -> Result<ExitCode, lab::error::LabError> {
    match cli.command {
        Command::Up {
            masters,
            agents,
            expires_in,
            expired,
            dir,
            dns_prefix,
            location,
            reboot_delay,
            heartbeat,
            identity_system,
            auth_method,
            apiserver_startup,
            apiserver_shutdown_delay,
            timings,
        } => {
            let expiry = match (expired, expires_in) {
                (true, _) => Expiry::Expired,
                (false, Some(d)) => Expiry::In(d.as_secs()),
                (false, None) => Expiry::Default,
            };
            let identity_system = match identity_system {
                IdentityArg::AzureAd => lab::spec::IdentitySystem::AzureAd,
                IdentityArg::Adfs => lab::spec::IdentitySystem::Adfs,
            };
            let auth_method = match auth_method {
                AuthArg::ClientSecret => lab::spec::AuthMethod::ClientSecret,
                AuthArg::ClientCertificate => lab::spec::AuthMethod::ClientCertificate,
            };
            let spec = LabSpec {
                masters,
                agents,
                expiry,
                dns_prefix,
                location,
                reboot_delay,
                heartbeat,
                identity_system,
                auth_method,
                apiserver_startup,
                apiserver_shutdown_delay,
            };
            let mut lab = Lab::up(&dir, spec, UpOptions::default())?;
            let report = lab.report.clone();
            let env_path = lab::outputs::env_path(&lab.layout);
            // The lab outlives this command: detach the handle without tearing down.
            lab.release();
            println!("lab is up: {} nodes; source {}", lab.layout.nodes.len(), env_path.display());
            if timings {
                println!("  {:<28} {:>7}    {}", "phase", "time", "memory after (up: own peak; supervisor: all lab processes)");
                for t in &report.phases {
                    println!("  {:<28} {:>7} ms {:>10}", t.phase, t.millis, mib(t.rss_kib));
                }
                println!("  {:<28} {:>7} ms", "total", report.total.as_millis());
                println!("  peak memory of lab processes: {} in {} processes", mib(report.peak_rss_kib), report.process_count);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { dir, json } => {
            let layout = Layout::load(&dir)?;
            let status = lab::handle::status(&layout)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status).expect("status serialises"));
            } else {
                print_status(&status);
            }
            Ok(if status.healthy { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Command::Fault { dir, fault } => {
            let layout = Layout::load(&dir)?;
            let response = control::call_ok(&layout.socket(), &Request::Fault(fault.into_fault()), Duration::from_secs(120))?;
            println!("{}", response.message);
            Ok(ExitCode::SUCCESS)
        }
        Command::Down { dir } => {
            let layout = Layout::load(&dir)?;
            for line in lab::handle::down(&layout)? {
                println!("{line}");
            }
            println!("lab in {} is down", layout.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Supervise { dir, owner_pid } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(lab::error::LabError::io("starting the async runtime"))?;
            runtime.block_on(lab::supervisor::run(&dir, owner_pid))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::NodeCtl { socket, node, args } => Ok(node_ctl(socket, node, args)),
        Command::Apiserver { config } => {
            let text = std::fs::read_to_string(&config).map_err(lab::error::LabError::io(format!("reading {}", config.display())))?;
            let config: lab::kube::ApiserverConfig = serde_json::from_str(&text)
                .map_err(|e| lab::error::LabError::Spec(format!("{} is not an apiserver config: {e}", config.display())))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(lab::error::LabError::io("starting the async runtime"))?;
            runtime.block_on(async {
                let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(lab::error::LabError::io("installing the SIGTERM handler"))?;
                lab::kube::apiserver::run(config, async move {
                    terminate.recv().await;
                })
                .await
                .map_err(|e| lab::error::LabError::Refused(format!("apiserver: {e}")))
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Supervise { .. } | Command::Apiserver { .. }) {
        // Die quietly when stdout is a closed pipe (`lab status | head`), as CLI tools do.
        // The supervisor keeps Rust's default (ignored) so a vanished client cannot kill it.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab: {e}");
            ExitCode::FAILURE
        }
    }
}
