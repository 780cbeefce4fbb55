//! Gates: checks that must hold before the steps behind them run. Each gate polls at its
//! interval until it passes or its timeout runs out, reporting what it observed on every
//! miss; a timed-out gate fails with the plan's advice for the operator plus the last
//! observations. SSH-level probes (etcd, the apiserver's certificate, unit states) run on the
//! nodes themselves, so they work where the operator's machine cannot reach the masters'
//! private addresses; API-level probes use kube-rs with the new admin credentials, then the old.

use crate::apply::executor::{Context, StepError};
use crate::apply::node;
use crate::apply::progress::Event;
use crate::cloud::kube as kops;
use crate::model::profile::GateKind;
use crate::plan::step::{GateSpec, Phase, Probe, Step};
use std::time::{Duration, Instant};

const EXIT_MARK: &str = "CERTROTATE_PROBE_EXIT=";

/// Runs a probe script on a node; returns whether it exited 0 and its output lines.
async fn probe(ctx: &Context, node: &str, script: &str) -> Result<(bool, Vec<String>), StepError> {
    let wrapped = format!("( {script}\n) 2>&1\necho \"{EXIT_MARK}$?\"\n");
    let out = ctx.run_root(node, "probe", &wrapped).await?;
    let mut ok = false;
    let mut lines = Vec::new();
    for l in out.lines() {
        match l.strip_prefix(EXIT_MARK) {
            Some(code) => ok = code.trim() == "0",
            None if !l.trim().is_empty() => lines.push(l.trim().to_string()),
            None => {}
        }
    }
    Ok((ok, lines))
}

/// Runs a probe script on each node; the output of every failing one, prefixed by the node.
async fn probe_each(ctx: &Context, nodes: &[String], script: impl Fn(&str) -> String) -> Result<Vec<String>, StepError> {
    let mut problems = Vec::new();
    for n in nodes {
        let (ok, lines) = probe(ctx, n, &script(n)).await?;
        if !ok {
            problems.extend(lines.into_iter().map(|l| format!("{n}: {l}")));
        }
    }
    Ok(problems)
}

/// One look at the gate: the problems seen (empty = passes).
async fn look(
    ctx: &Context,
    step: &Step,
    spec: &GateSpec,
    kind: GateKind,
    since: k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>,
) -> Result<Vec<String>, StepError> {
    let nodes: Vec<String> = if spec.nodes.is_empty() { ctx.topo.masters.iter().map(|m| m.name.clone()).collect() } else { spec.nodes.clone() };
    let expired = spec.why_ssh.is_some();
    let mut problems = Vec::new();
    match (kind, spec.probe) {
        (GateKind::EtcdHealthy, _) if expired => problems = probe_each(ctx, &nodes, |_| node::etcd_alive_script()).await?,
        (GateKind::EtcdHealthy, _) => {
            let endpoints = ctx.topo.etcd_client_endpoints();
            let on = step.target.clone().unwrap_or_else(|| nodes[0].clone());
            let (ok, lines) = probe(ctx, &on, &node::etcd_health_script(&endpoints)).await?;
            if !ok || lines.iter().any(|l| l.contains("unhealthy")) {
                problems.extend(lines.into_iter().map(|l| format!("from {on}: {l}")));
                if problems.is_empty() {
                    problems.push(format!("from {on}: etcdctl endpoint health failed"));
                }
            }
        }
        (GateKind::ApiserverServesNewCert, _) => {
            let expected = ctx.pki()?.fingerprint("apiserver");
            for n in &nodes {
                let ip = ctx.topo.node(n).and_then(|x| x.ip).map(|ip| ip.to_string()).unwrap_or_else(|| n.clone());
                let (_, lines) = probe(ctx, n, &node::apiserver_probe_script(&ip, &ctx.topo.fqdn)).await?;
                let field = |tag: &str| lines.iter().find_map(|l| l.strip_prefix(tag)).map(|v| v.trim().to_string()).unwrap_or_default();
                let fp = field("FINGERPRINT\t");
                let readyz = field("READYZ\t");
                if fp.is_empty() {
                    problems.push(format!("{n}: the apiserver at {ip}:443 presents no certificate (not listening?)"));
                    continue;
                }
                if let Some(want) = &expected {
                    if &fp != want {
                        problems.push(format!("{n}: the apiserver presents certificate {}…, not the new one {}…", &fp[..16.min(fp.len())], &want[..16]));
                        continue;
                    }
                }
                if !readyz.contains(" 200") {
                    problems.push(format!("{n}: /readyz answered `{readyz}`"));
                }
            }
        }
        (GateKind::NodesReady, Probe::Ssh) => problems = probe_each(ctx, &nodes, |_| node::unit_active_script("kubelet")).await?,
        (GateKind::ControlPlanePodsReady, Probe::Ssh) => {
            problems = probe_each(ctx, &nodes, |n| {
                let ip = ctx.topo.node(n).and_then(|x| x.ip).map(|ip| ip.to_string()).unwrap_or_else(|| "127.0.0.1".into());
                node::port_open_script(&ip)
            })
            .await?
        }
        (GateKind::NodesReady, Probe::Api) | (GateKind::ControlPlanePodsReady, Probe::Api) | (GateKind::KubeSystemReady, _) => {
            let client = ctx.kube_client().await?;
            let r = match kind {
                // After a restart, Ready must come from the restarted kubelet, not from before.
                GateKind::NodesReady if step.phase != Phase::Preflight => kops::nodes_not_ready_since(&client, &nodes, since).await,
                GateKind::NodesReady => kops::nodes_not_ready(&client, &nodes).await,
                GateKind::ControlPlanePodsReady => kops::control_plane_not_ready(&client, &nodes).await,
                _ => kops::kube_system_not_ready(&client).await,
            };
            problems = r.map_err(|e| StepError::new(e.to_string()))?;
        }
    }
    Ok(problems)
}

pub async fn run_gate(ctx: &Context, step: &Step, kind: GateKind) -> Result<Option<String>, StepError> {
    let spec = step.gate.as_ref().ok_or_else(|| StepError::new(format!("gate {} has no specification in the plan", step.id)))?;
    let started = Instant::now();
    let since = k8s_openapi::chrono::Utc::now();
    let deadline = started + spec.timeout.as_std();
    let interval = spec.interval.as_std();
    let api_level = spec.probe == Probe::Api && !matches!(kind, GateKind::EtcdHealthy | GateKind::ApiserverServesNewCert);
    loop {
        // A probe that hangs (a half-open TLS port, a stuck command) counts as a miss.
        let budget = deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_secs(5), Duration::from_secs(60));
        let looked = match tokio::time::timeout(budget, look(ctx, step, spec, kind, since)).await {
            Ok(r) => r,
            Err(_) => Err(StepError::new(format!("the probe did not answer within {}s", budget.as_secs()))),
        };
        let observed = match looked {
            Ok(p) if p.is_empty() => return Ok(Some(format!("passed after {:.1}s", started.elapsed().as_secs_f64()))),
            Ok(p) => p,
            Err(e) if api_level && ctx.force => {
                ctx.emit(Event::Warning { message: format!("--force: gate {} skipped, the API does not answer: {}", step.id, e.message) });
                return Ok(Some("skipped (--force, API down)".into()));
            }
            Err(e) => vec![e.message],
        };
        if Instant::now() + interval > deadline {
            return Err(StepError {
                message: format!("gate {} did not pass within {}: {}", step.id, spec.timeout, spec.on_failure),
                observed,
            });
        }
        ctx.emit(Event::GateWaiting { id: step.id.clone(), observed, elapsed_secs: started.elapsed().as_secs_f64() });
        tokio::time::sleep(interval).await;
    }
}
