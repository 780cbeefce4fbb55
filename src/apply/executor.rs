//! The step runner: what each step of a plan does, as one match over its typed operation.
//! Linux nodes get root scripts over SSH (`node`), Windows nodes PowerShell (`winexec`),
//! gates look at the cluster (`gates`), local steps write the run's store and the API model.
//! [`Context`] holds the plan and the cluster, the connections (`connections`), the run's
//! store (`run_store`) and the reporter; the walker (`walker`) decides what runs when.

use crate::apply::connections::Connections;
use crate::apply::journal::{Journal, FORCED_NOTE};
use crate::apply::run_store::RunStore;
use crate::apply::walker::{self, EventSink, StepRunner, WalkSettings};
use crate::apply::node::{self, NodeFile};
use crate::apply::progress::{Event, Phase, Reporter, Timings};
use crate::apply::store::{self, NewPki, RunDir};
use crate::cloud::kube as kops;
use crate::model::apimodel::{write_atomic, ApiModel};
use crate::model::profile::{GateKind, Profile};
use crate::model::topology::{Availability, Node, OsType, Role, Topology};
use crate::pki::catalogue::{self, CertEntry, ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY};
use crate::plan::graph::ActionGraph;
use crate::plan::step::{Operation, Probe, Step};
use crate::remote::ssh::{RemoteError, SshFleet};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::apply::walker::{StepError, WalkResult};

impl From<RemoteError> for StepError {
    fn from(e: RemoteError) -> Self {
        StepError::new(e.to_string())
    }
}

impl From<store::StoreError> for StepError {
    fn from(e: store::StoreError) -> Self {
        StepError::new(e.to_string())
    }
}

/// Everything a step may need: the plan and the cluster it was made for, the connections
/// that reach the cluster, the run's store, and the reporter.
pub struct Context {
    pub graph: ActionGraph,
    pub topo: Topology,
    pub catalogue: Vec<CertEntry>,
    pub profile: Profile,
    pub model_path: PathBuf,
    /// apimodel.json as apply loaded it (and checked against the plan), so steps do not
    /// load it again; `None`: they load it from `model_path`.
    pub api_model: Option<Arc<ApiModel>>,
    pub parallelism: usize,
    pub force: bool,
    /// The admin kubeconfig as it was before apply (JSON text), if there was one.
    pub old_admin_kubeconfig: Option<String>,
    /// Server URL of each master's ~/.kube/config as refresh saw it.
    pub master_kubeconfig_servers: Mutex<HashMap<String, String>>,
    /// Set by Ctrl-C or SIGTERM: no new step starts, gates in flight are cancelled.
    pub stop: crate::interrupt::StopRequest,
    pub conn: Connections,
    pub store: RunStore,
    pub reporter: Arc<Reporter>,
    /// Time per phase and waiting versus own work, from the events.
    pub timings: Mutex<Timings>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        graph: ActionGraph,
        topo: Topology,
        profile: Profile,
        model_path: PathBuf,
        run: RunDir,
        journal: Journal,
        reporter: Arc<Reporter>,
        fleet: Arc<SshFleet>,
        plan_digest: String,
    ) -> Self {
        let catalogue = catalogue::catalogue(&topo);
        let first_master = topo.masters.first().map(|m| m.name.clone());
        Context {
            graph,
            topo,
            catalogue,
            profile,
            model_path,
            api_model: None,
            parallelism: 10,
            force: false,
            old_admin_kubeconfig: None,
            master_kubeconfig_servers: Mutex::new(HashMap::new()),
            stop: crate::interrupt::StopRequest::default(),
            conn: Connections::new(fleet, first_master),
            store: RunStore::new(run, journal, plan_digest),
            reporter,
            timings: Mutex::new(Timings::new()),
        }
    }

    /// Reports an event and accounts for it in the timings.
    pub fn emit(&self, event: Event) {
        self.timings.lock().expect("timings lock").observe(&event);
        self.reporter.emit(event);
    }

    pub fn stamp(&self) -> String {
        self.store.stamp()
    }

    fn model_dir(&self) -> PathBuf {
        self.model_path.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| PathBuf::from("."))
    }

    /// The API model: the one apply loaded, else read from its file.
    fn api_model(&self) -> Result<ApiModel, StepError> {
        match &self.api_model {
            Some(m) => Ok(ApiModel::clone(m)),
            None => ApiModel::load(&self.model_path).map_err(|e| StepError::new(format!("{e}"))),
        }
    }

    fn node(&self, name: &str) -> Result<&Node, StepError> {
        self.topo.node(name).ok_or_else(|| StepError::new(format!("the plan names node {name}, which the API model does not have")))
    }

    pub(crate) fn pki(&self) -> Result<Arc<NewPki>, StepError> {
        self.store.pki()
    }

    fn save_state(&self) -> Result<(), StepError> {
        self.store.save_state()
    }

    pub async fn run_program(&self, name: &str, what: &str, program: &str, args: &[&str], stdin: &str) -> Result<String, StepError> {
        self.conn.run_program(name, what, program, args, stdin).await
    }

    pub async fn run_root(&self, name: &str, what: &str, script: &str) -> Result<String, StepError> {
        self.conn.run_root(name, what, script).await
    }

    pub async fn close_sessions(&self) {
        self.conn.close_sessions().await
    }

    /// Kubeconfigs to try, new credentials first.
    fn kube_access(&self) -> Result<kops::KubeAccess, StepError> {
        let mut candidates = Vec::new();
        if let Ok(Some(new)) = self.new_admin_kubeconfig() {
            candidates.push(("new admin credentials".to_string(), new));
        }
        if let Some(old) = &self.old_admin_kubeconfig {
            candidates.push(("previous admin credentials".to_string(), old.clone()));
        }
        if candidates.is_empty() {
            return Err(StepError::new("no admin kubeconfig to reach the API with (kubeconfig/kubeconfig.<location>.json beside the API model)"));
        }
        kops::KubeAccess::from_kubeconfigs(&candidates, self.conn.apiserver.as_deref()).map_err(|e| StepError::new(e.to_string()))
    }

    pub(crate) async fn kube_client(&self) -> Result<kube::Client, StepError> {
        let access = self.kube_access()?;
        let (client, _label) = access.client(Duration::from_secs(10)).await.map_err(|e| StepError::new(e.to_string()))?;
        Ok(client)
    }

    /// The admin kubeconfig after rotation: the previous one with its CA and client
    /// credentials replaced (server, names and contexts kept), or `None` when neither changes.
    pub fn new_admin_kubeconfig(&self) -> Result<Option<String>, StepError> {
        let pki = self.pki()?;
        let client = pki.get("kubeconfig");
        let ca_changes = pki.get("ca").is_some();
        if client.is_none() && !ca_changes {
            return Ok(None);
        }
        let Some(old) = &self.old_admin_kubeconfig else {
            return Err(StepError::new("there is no admin kubeconfig beside the API model to base the new one on"));
        };
        let mut doc: serde_json::Value = serde_json::from_str(old)
            .or_else(|_| serde_yaml::from_str(old))
            .map_err(|e| StepError::new(format!("the admin kubeconfig is neither JSON nor YAML: {e}")))?;
        use base64::Engine as _;
        let b64 = |s: &str| serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(s));
        set_in_each(&mut doc, "clusters", "cluster", "certificate-authority-data", b64(&pki.ca_cert_pem));
        if let Some(pair) = client {
            set_in_each(&mut doc, "users", "user", "client-certificate-data", b64(&pair.cert_pem));
            set_in_each(&mut doc, "users", "user", "client-key-data", b64(&pair.key_pem));
        }
        Ok(Some(serde_json::to_string_pretty(&doc).expect("kubeconfig serialises")))
    }

    fn admin_kubeconfig_path(&self) -> String {
        format!("/home/{}/.kube/config", self.topo.admin_username)
    }

    /// The files certificate `id` puts on `node`: its certificate, and its key where the node
    /// keeps it (see [`catalogue::files_on_node`]).
    fn files_of(&self, id: &str, node: &Node) -> Result<Vec<NodeFile>, StepError> {
        let pki = self.pki()?;
        let pair = pki.get(id).ok_or_else(|| StepError::new(format!("`{id}` was not issued")))?;
        let entry = catalogue::entry_of_plan_id(&self.catalogue, &self.topo, id).map_err(StepError::new)?;
        if entry.in_admin_kubeconfig() {
            // Written inline into the admin kubeconfig by installAdminKubeconfig, as AKS Engine does.
            return Ok(vec![]);
        }
        let files = catalogue::files_on_node(&self.catalogue, &self.topo, id, node)
            .map_err(StepError::new)?
            .ok_or_else(|| StepError::new(format!("the plan puts `{id}` on {}, which does not hold it", node.name)))?;
        let file = |spec: &catalogue::FileSpec, content: &str| NodeFile {
            path: spec.path.clone(),
            owner: spec.owner.clone(),
            group: spec.group.clone(),
            mode: spec.mode,
            content: content.as_bytes().to_vec(),
        };
        let mut out = vec![file(&files.cert, &pair.cert_pem)];
        out.extend(files.key.iter().map(|k| file(k, &pair.key_pem)));
        Ok(out)
    }

    fn admin_kubeconfig_file(&self, node: &Node) -> Result<Option<NodeFile>, StepError> {
        let Some(text) = self.new_admin_kubeconfig()? else { return Ok(None) };
        let server = self.master_kubeconfig_servers.lock().expect("servers lock").get(&node.name).cloned();
        let text = match server {
            Some(server) => {
                let mut doc: serde_json::Value = serde_json::from_str(&text).expect("made as JSON");
                set_in_each(&mut doc, "clusters", "cluster", "server", serde_json::Value::String(server));
                serde_json::to_string_pretty(&doc).expect("serialises")
            }
            None => text,
        };
        Ok(Some(NodeFile {
            path: self.admin_kubeconfig_path(),
            owner: self.topo.admin_username.clone(),
            group: String::new(),
            mode: 0o600,
            content: format!("{text}\n").into_bytes(),
        }))
    }

    /// Everything a node receives, staged in one transfer.
    fn staged_files(&self, step: &Step, node: &Node) -> Result<Vec<NodeFile>, StepError> {
        let mut out = Vec::new();
        for id in &step.params.certificates {
            out.extend(self.files_of(id, node)?);
        }
        if node.role == Role::Master && step.params.certificates.iter().any(|i| i == "kubeconfig") {
            if let Some(f) = self.admin_kubeconfig_file(node)? {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Files the front-proxy phase writes on a master: proxy-ca.crt, proxy.crt, proxy.key.
    fn front_proxy_files(&self, node: &Node) -> Result<Vec<NodeFile>, StepError> {
        let mut out = Vec::new();
        for id in ["proxy-ca", "proxy"] {
            if self.pki()?.get(id).is_some() {
                out.extend(self.files_of(id, node)?);
            }
        }
        Ok(out)
    }

    fn is_windows(&self, node: &str) -> bool {
        self.topo.node(node).map(|n| n.os == OsType::Windows).unwrap_or(false)
    }
}

#[async_trait::async_trait]
impl StepRunner for Context {
    async fn run(&self, step: &Step) -> Result<Option<String>, StepError> {
        run_step(self, step).await
    }
}

impl EventSink for Context {
    fn emit(&self, event: Event) {
        Context::emit(self, event)
    }
}

/// Walks the context's graph with the context as the step runner.
pub async fn walk(ctx: Arc<Context>) -> WalkResult {
    ctx.timings.lock().expect("timings lock").set_steps(&step_phases(&ctx.graph));
    let settings = WalkSettings { parallelism: ctx.parallelism, stop: ctx.stop.clone() };
    walker::walk(&ctx.graph, ctx.clone(), &ctx.store.journal, &*ctx, &settings).await
}

/// Runs one step; `Ok` carries an optional note for the journal.
async fn run_step(ctx: &Context, step: &Step) -> Result<Option<String>, StepError> {
    let target = step.target.clone().unwrap_or_default();
    let stamp = ctx.stamp();
    let node_step = matches!(
        step.operation,
        Operation::DistributeCerts | Operation::BackupNodeCerts | Operation::InstallCerts | Operation::RemoveKubeletClientCurrent | Operation::RestartKubelet
    );
    if node_step && ctx.is_windows(&target) {
        return crate::apply::winexec::run_windows_step(ctx, step).await;
    }
    match step.operation {
        Operation::BackupApiModel => {
            if let Some(dir) = ctx.store.state.lock().expect("state").backup_dir.clone() {
                if dir.join("apimodel.json").is_file() {
                    return Ok(Some(format!("backup already in {}", dir.display())));
                }
            }
            let dir = store::backup_api_model(&ctx.model_dir())?;
            ctx.store.state.lock().expect("state").backup_dir = Some(dir.clone());
            ctx.save_state()?;
            Ok(Some(format!("backed up to {}", dir.display())))
        }
        Operation::IssuePki => {
            if let Some(persisted) = NewPki::load(&ctx.store.run.pki_dir())? {
                ctx.store.set_pki(persisted);
                return Ok(Some("reused the certificates issued by an earlier run of this plan".into()));
            }
            let ids = step.params.certificates.clone();
            let model = ctx.api_model()?;
            let (topo, catalogue, profile, supplied) = (ctx.topo.clone(), ctx.catalogue.clone(), ctx.profile.clone(), ctx.store.supplied.clone());
            let pki = tokio::task::spawn_blocking(move || store::issue_pki(&ids, &topo, &catalogue, &model, &profile, supplied.as_deref()))
                .await
                .map_err(|e| StepError::new(format!("issuing panicked: {e}")))??;
            pki.persist(&ctx.store.run.pki_dir())?;
            let n = pki.items.len();
            ctx.store.set_pki(pki);
            Ok(Some(format!("issued {n} certificates into {}", ctx.store.run.pki_dir().display())))
        }
        Operation::PauseAutoscaler => {
            if ctx.store.state.lock().expect("state").autoscaler_paused {
                return Ok(Some("already paused".into()));
            }
            let client = match ctx.kube_client().await {
                Ok(c) => c,
                Err(e) if ctx.force => {
                    ctx.emit(Event::Warning { message: format!("--force: not pausing cluster-autoscaler, the API does not answer: {}", e.message) });
                    return Ok(Some("skipped (--force, API down)".into()));
                }
                Err(e) => return Err(e),
            };
            let before = kops::scale_autoscaler(&client, 0).await.map_err(|e| StepError::new(e.to_string()))?;
            {
                let mut st = ctx.store.state.lock().expect("state");
                st.autoscaler_replicas = before;
                st.autoscaler_paused = true;
            }
            ctx.save_state()?;
            Ok(Some(match before {
                Some(n) => format!("scaled cluster-autoscaler from {n} to 0"),
                None => "cluster-autoscaler is not deployed".into(),
            }))
        }
        Operation::ResumeAutoscaler => {
            let (paused, replicas) = {
                let st = ctx.store.state.lock().expect("state");
                (st.autoscaler_paused, st.autoscaler_replicas)
            };
            let Some(replicas) = replicas.filter(|_| paused) else {
                // A pause skipped under --force runs on the next run: so must its resume.
                if ctx.store.journal.was_forced("pauseAutoscaler") {
                    return Ok(Some(format!("{FORCED_NOTE}: cluster-autoscaler was not paused, the run that pauses it resumes it)")));
                }
                return Ok(Some("nothing to resume".into()));
            };
            let client = ctx.kube_client().await?;
            kops::scale_autoscaler(&client, replicas).await.map_err(|e| StepError::new(e.to_string()))?;
            ctx.store.state.lock().expect("state").autoscaler_paused = false;
            ctx.save_state()?;
            Ok(Some(format!("scaled cluster-autoscaler back to {replicas}")))
        }
        Operation::DistributeCerts => {
            let node = ctx.node(&target)?;
            let mut files = ctx.staged_files(step, node)?;
            if node.role == Role::Master {
                for f in ctx.front_proxy_files(node)? {
                    if !files.iter().any(|x| x.path == f.path) {
                        files.push(f);
                    }
                }
            }
            // The backup goes first in the same remote command; plans saved before the two
            // were merged still have a backupNodeCerts step after this, which then finds the
            // backup made and skips.
            let admin = (node.role == Role::Master).then(|| ctx.admin_kubeconfig_path());
            let script = node::backup_and_stage_script(&stamp, admin.as_deref(), &files);
            let out = ctx.run_root(&target, "back up /etc/kubernetes/certs and stage the new certificates", &script).await?;
            let mut lines = out.split_whitespace();
            let (backup, staging) = (lines.next().unwrap_or("?"), lines.next().unwrap_or("?"));
            Ok(Some(format!("backup {backup}; {} files staged ({staging})", files.len())))
        }
        Operation::BackupNodeCerts => {
            let node = ctx.node(&target)?;
            let admin = (node.role == Role::Master).then(|| ctx.admin_kubeconfig_path());
            let out = ctx.run_root(&target, "back up /etc/kubernetes/certs", &node::backup_script(&stamp, admin.as_deref())).await?;
            Ok(Some(out.trim().to_string()))
        }
        Operation::InstallCerts => {
            let node = ctx.node(&target)?;
            let mut files = Vec::new();
            for id in &step.params.certificates {
                if id == "proxy" || id == "proxy-ca" {
                    continue;
                }
                files.extend(ctx.files_of(id, node)?);
            }
            ctx.run_root(&target, "install the new certificates", &node::install_script(&stamp, "installCerts", &files)).await?;
            Ok(Some(format!("{} files installed", files.len())))
        }
        Operation::InstallAdminKubeconfig => {
            let node = ctx.node(&target)?;
            let Some(f) = ctx.admin_kubeconfig_file(node)? else { return Ok(Some("admin kubeconfig unchanged".into())) };
            ctx.run_root(&target, "install the admin kubeconfig", &node::install_script(&stamp, "installAdminKubeconfig", &[f])).await?;
            Ok(None)
        }
        Operation::RemoveKubeletClientCurrent => {
            ctx.run_root(&target, "remove kubelet-client-current.pem", &node::remove_kubelet_pem_script(&stamp)).await?;
            Ok(None)
        }
        Operation::RestartEtcd => {
            ctx.run_root(&target, "restart etcd", &node::restart_script(&stamp, "restartEtcd", &["etcd"], &[])).await?;
            Ok(None)
        }
        Operation::RestartControlPlane => {
            let script = node::restart_script(&stamp, "restartControlPlane", &["kubelet"], &["kube-apiserver", "kube-controller-manager", "kube-scheduler"]);
            ctx.run_root(&target, "restart kubelet and the control plane", &script).await?;
            Ok(None)
        }
        Operation::RestartApiserver => {
            ctx.run_root(&target, "restart kube-apiserver", &node::restart_script(&stamp, "restartApiserver", &["kubelet"], &["kube-apiserver"])).await?;
            Ok(None)
        }
        Operation::RestartKubelet => {
            ctx.run_root(&target, "restart kubelet", &node::restart_script(&stamp, "restartKubelet", &["kubelet"], &[])).await?;
            Ok(None)
        }
        Operation::RebootVm => reboot(ctx, &target).await,
        Operation::PutFrontProxyInEtcd => {
            let node = ctx.node(&target)?;
            let files = ctx.front_proxy_files(node)?;
            let find = |suffix: &str| files.iter().find(|f| f.path.ends_with(suffix));
            let mut puts = Vec::new();
            for (key, suffix) in [(ETCD_PROXY_CA_KEY, "/proxy-ca.crt"), (ETCD_PROXY_CERT_KEY, "/proxy.crt"), (ETCD_PROXY_KEY_KEY, "/proxy.key")] {
                if let Some(f) = find(suffix) {
                    puts.push((key, f));
                }
            }
            ctx.run_root(&target, "write the front-proxy material into etcd", &node::etcd_put_script(&stamp, &puts)).await?;
            Ok(Some(format!("{} keys written", puts.len())))
        }
        Operation::InstallFrontProxy => {
            let node = ctx.node(&target)?;
            let files = ctx.front_proxy_files(node)?;
            ctx.run_root(&target, "install the front-proxy certificates", &node::install_script(&stamp, "installFrontProxy", &files)).await?;
            Ok(None)
        }
        Operation::DeleteKubeProxyPod => kube_op(ctx, |client| {
            let target = target.clone();
            async move { kops::delete_kube_proxy_pods(&client, &target).await.map(|n| format!("deleted {n} kube-proxy pod(s)")) }
        })
        .await,
        Operation::DeleteServiceAccountTokens => kube_op(ctx, |client| async move {
            kops::delete_service_account_tokens(&client).await.map(|n| format!("deleted {n} token secrets"))
        })
        .await,
        Operation::RolloutWorkloads => {
            let stamp_time = {
                let mut st = ctx.store.state.lock().expect("state");
                st.rollout_stamp
                    .get_or_insert_with(|| time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default())
                    .clone()
            };
            ctx.save_state()?;
            kube_op(ctx, |client| async move { kops::rollout_restart_all(&client, &stamp_time).await.map(|n| format!("restarted {n} deployments and daemonsets")) }).await
        }
        Operation::UpdateApiModel => update_api_model(ctx),
        Operation::Cleanup => {
            let nodes: Vec<String> =
                ctx.graph.steps().filter(|s| s.operation == Operation::DistributeCerts).filter_map(|s| s.target.clone()).collect();
            // Every node at once (bounded like the walk): one after another, a 3+20 cluster
            // paid 23 round trips in a row at the very end of the run.
            let limit = Arc::new(tokio::sync::Semaphore::new(ctx.parallelism.max(1)));
            let cleanups = nodes.iter().map(|n| {
                let (limit, stamp) = (limit.clone(), stamp.clone());
                async move {
                    let _permit = limit.acquire_owned().await.map_err(|e| StepError::new(e.to_string()))?;
                    if ctx.is_windows(n) {
                        let cleanup = Step { target: Some(n.clone()), ..step.clone() };
                        crate::apply::winexec::run_windows_step(ctx, &cleanup).await.map(|_| ())
                    } else {
                        ctx.run_root(n, "remove the staging directory", &node::cleanup_script(&stamp)).await.map(|_| ())
                    }
                }
            });
            let failed: Vec<StepError> = futures_join_all(cleanups).await.into_iter().filter_map(Result::err).collect();
            if let Some(first) = failed.into_iter().next() {
                return Err(first);
            }
            Ok(Some(format!("cleaned up on {} nodes", nodes.len())))
        }
        Operation::Gate(kind) => crate::apply::gates::run_gate(ctx, step, kind).await,
        Operation::VerifyBackup => crate::apply::restore::verify_backup(ctx, step).await,
        Operation::RestoreCerts => crate::apply::restore::restore_certs(ctx, step).await,
        Operation::RestoreFrontProxyInEtcd => crate::apply::restore::restore_front_proxy_in_etcd(ctx, step).await,
        Operation::RestoreApiModel => crate::apply::restore::restore_api_model(ctx, step),
    }
}

/// Runs futures that borrow the step's context concurrently on this task (they cannot be
/// spawned, being not `'static`) and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// Runs a Kubernetes operation with the first credentials that work; with `--force`, an API
/// that does not answer is a warning, not a failure.
async fn kube_op<F, Fut>(ctx: &Context, op: F) -> Result<Option<String>, StepError>
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: std::future::Future<Output = Result<String, kops::KubeOpsError>>,
{
    let client = match ctx.kube_client().await {
        Ok(c) => c,
        Err(e) if ctx.force => {
            ctx.emit(Event::Warning { message: format!("--force: skipped because the API does not answer: {}", e.message) });
            return Ok(Some("skipped (--force, API down)".into()));
        }
        Err(e) => return Err(e),
    };
    op(client).await.map(Some).map_err(|e| StepError::new(e.to_string()))
}

async fn reboot(ctx: &Context, name: &str) -> Result<Option<String>, StepError> {
    let compute = ctx.conn.compute().await?;
    let node = ctx.node(name)?;
    let timeout = ctx.profile.gates.timing(GateKind::NodesReady).timeout.as_std();
    let result = match node.availability {
        Availability::VirtualMachineScaleSets => {
            let set = format!("k8s-master-{}-vmss", ctx.topo.name_suffix);
            let instance = node.index.to_string();
            compute.restart_scale_set_vm(&set, &instance).await.map_err(|e| StepError::new(e.to_string()))?;
            compute.wait_running_scale_set_vm(&set, &instance, timeout).await
        }
        Availability::AvailabilitySet => {
            compute.restart_vm(name).await.map_err(|e| StepError::new(e.to_string()))?;
            compute.wait_running_vm(name, timeout).await
        }
    };
    result.map_err(|e| StepError::new(e.to_string()))?;
    ctx.conn.drop_session(name).await;
    // Running in Azure's eyes is not yet reachable over SSH.
    let deadline = Instant::now() + timeout;
    loop {
        match ctx.run_root(name, "check the node is back", "true").await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(StepError { message: format!("{name} runs again but does not answer SSH"), observed: vec![e.message] })
            }
            Err(_) => {
                ctx.conn.drop_session(name).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    Ok(Some("restarted through the Azure Compute API".into()))
}

/// Writes the new certificateProfile into apimodel.json and the new admin kubeconfig beside
/// it, each atomically; both are skipped when they already hold the new content.
fn update_api_model(ctx: &Context) -> Result<Option<String>, StepError> {
    let pki = ctx.pki()?;
    let mut model = ctx.api_model()?;
    let cp = store::updated_certificate_profile(&model, &ctx.catalogue, &pki);
    model.set_certificate_profile(&cp);
    let mut notes = Vec::new();
    if model.is_modified() {
        model.save_atomic(&ctx.model_path).map_err(|e| StepError::new(format!("cannot write {}: {e}", ctx.model_path.display())))?;
        notes.push("apimodel.json updated");
    }
    if let Some(kc) = ctx.new_admin_kubeconfig()? {
        let path = crate::flow::discover::admin_kubeconfig_path(&ctx.model_dir(), &ctx.topo.location);
        if let Some(dir) = path.parent() {
            store::private_dir(dir)?;
        }
        if std::fs::read_to_string(&path).ok().as_deref() != Some(kc.as_str()) {
            write_atomic(&path, kc.as_bytes(), Some(0o600)).map_err(|e| StepError::new(format!("cannot write {}: {e}", path.display())))?;
            notes.push("admin kubeconfig written");
        }
    }
    Ok(Some(if notes.is_empty() { "already up to date".into() } else { notes.join("; ") }))
}

/// Probe settings of a gate, for messages.
pub fn gate_probe(step: &Step) -> Probe {
    step.gate.as_ref().map(|g| g.probe).unwrap_or(Probe::Api)
}

/// Every step with its phase, for the progress bars.
pub fn step_phases(graph: &ActionGraph) -> Vec<(String, Phase)> {
    graph.steps().map(|s| (s.id.clone(), s.phase)).collect()
}

/// Sets `key` to `value` in the `item` object of every entry of the kubeconfig list `list`
/// (every cluster's `cluster`, every user's `user`).
fn set_in_each(doc: &mut serde_json::Value, list: &str, item: &str, key: &str, value: serde_json::Value) {
    for entry in doc.get_mut(list).and_then(|l| l.as_array_mut()).into_iter().flatten() {
        if let Some(object) = entry.get_mut(item).and_then(|o| o.as_object_mut()) {
            object.insert(key.to_string(), value.clone());
        }
    }
}
