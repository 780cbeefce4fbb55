//! `evidence`: what an auditor asks for after a maintenance window, gathered from the plan's
//! run directory beside the API model and from the nodes into one bundle: the plan and its
//! review document, the approvals, the journal, the expiry table before apply changed
//! anything and now (human and JSON), each node's rotate-certs.log, where the backups are,
//! and a SHA-256 manifest of it all. Everything in it is scanned for private keys, client
//! secrets and tokens before a byte is written: a bundle that would hold one is not written.
//!
//! Gathering is split so that each part can be checked on its own: [`locate`] finds the run
//! on the operator's machine, [`node_script`] and [`parse_node_output`] read a node, and
//! [`assemble`] turns what was found into the bundle's files, which [`write_dir`] and
//! [`write_tar_gz`] put on disk atomically.

use crate::apply::journal::{self, Approval, JournalEntry};
use crate::apply::node::{BACKUP, BACKUP_EXTRA};
use crate::apply::rollback::{find_run, ROLLBACK_JOURNAL};
use crate::apply::store::RunState;
use crate::model::apimodel::ApiModel;
use crate::flow::expiry::ExpiryRow;
use crate::model::topology::{OsType, Topology};
use crate::pki::catalogue::ROTATE_LOG;
use crate::plan::file::{find_secret, PlanFile};
use crate::plan::review;
use crate::remote::script::sh_quote;
use crate::remote::refresh::{run_as_root_once, ReadLimit};
use crate::remote::ssh::SshFleet;
use miette::{miette, IntoDiagnostic};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name of the manifest inside the bundle, in `sha256sum -c` form.
pub const MANIFEST: &str = "SHA256SUMS";

/// The lines of a node's rotate-certs.log the bundle keeps: the newest, should the log have
/// grown over years of windows.
pub const LOG_LINES_KEPT: usize = 20_000;

/// A plan's run as apply left it on the operator's machine.
#[derive(Debug)]
pub struct RunRecord {
    /// The plan file the evidence is for (the operator's, or apply's copy in the run directory).
    pub plan_path: PathBuf,
    pub plan: PlanFile,
    pub run_dir: PathBuf,
    pub journal_text: String,
    pub steps_done: Vec<JournalEntry>,
    pub approvals: Vec<Approval>,
    pub state: RunState,
    /// `status-before.txt` and `status-before.json`, when this apply kept them.
    pub status_before: Option<(String, String)>,
    /// The journal of a rollback of this apply, if one ran.
    pub rollback_journal: Option<String>,
}

impl RunRecord {
    /// The plan's steps the journal does not record as finished, in the plan's order.
    pub fn steps_not_done(&self) -> Vec<&str> {
        let done: std::collections::BTreeSet<&str> = self.steps_done.iter().map(|e| e.step.as_str()).collect();
        self.plan.graph.steps.iter().map(|s| s.id.as_str()).filter(|s| !done.contains(s)).collect()
    }
}

/// Finds the run of `plan` (or, without one, the most recent apply) beside the API model, as
/// rollback does. A plan never applied from here has no run: there is nothing to give
/// evidence of.
pub fn locate(model: &ApiModel, plan: Option<&Path>) -> miette::Result<RunRecord> {
    let (run, plan_file) = find_run(model, plan)?;
    let plan_path = plan.map(Path::to_path_buf).unwrap_or_else(|| run.root.join("plan.yaml"));
    let journal_text = std::fs::read_to_string(run.journal_path()).into_diagnostic()?;
    let (steps_done, approvals) = journal::parse(&journal_text);
    let status_before = match (std::fs::read_to_string(run.status_before_text()), std::fs::read_to_string(run.status_before_json())) {
        (Ok(text), Ok(json)) => Some((text, json)),
        _ => None,
    };
    let rollback_journal = std::fs::read_to_string(run.root.join(ROLLBACK_JOURNAL)).ok();
    Ok(RunRecord { plan_path, plan: plan_file, state: run.load_state(), run_dir: run.root, journal_text, steps_done, approvals, status_before, rollback_journal })
}

/// What a node holds of the run: its backups and its log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node: String,
    /// `/etc/kubernetes/certs.bak` exists.
    pub backup_present: bool,
    /// The plan stamp the backup was made for (`certs.bak.extra/stamp`).
    pub backup_stamp: Option<String>,
    /// etcd's /proxycerts values were backed up (first master).
    pub etcd_backup_present: bool,
    /// Backups of earlier plans, kept aside as `certs.bak.<time>`.
    pub earlier_backups: Vec<String>,
    /// The newest lines of rotate-certs.log; `None` when the node has none.
    #[serde(skip)]
    pub log: Option<String>,
}

const LOG_MARK: &str = "--- rotate-certs.log";

/// The read-only script that reports a node's backups and prints its log (run as root: the
/// log and the backups are root's).
pub fn node_script() -> String {
    format!(
        "set -u\nB={b}\nX={x}\nL={l}\n\
         if [ -d \"$B\" ]; then echo backup=present; else echo backup=absent; fi\n\
         if [ -f \"$X/stamp\" ]; then printf 'stamp=%s\\n' \"$(cat \"$X/stamp\")\"; fi\n\
         if [ -f \"$X/etcd-proxycerts/.saved\" ]; then echo etcd=present; else echo etcd=absent; fi\n\
         for d in \"$B\".2*; do [ -d \"$d\" ] && printf 'earlier=%s\\n' \"$d\"; done\n\
         echo {mark}\n\
         if [ -f \"$L\" ]; then tail -n {n} \"$L\"; else echo 'absent'; fi\n",
        b = sh_quote(BACKUP),
        x = sh_quote(BACKUP_EXTRA),
        l = sh_quote(ROTATE_LOG),
        mark = sh_quote(LOG_MARK),
        n = LOG_LINES_KEPT,
    )
}

/// Reads what [`node_script`] printed.
pub fn parse_node_output(node: &str, out: &str) -> Result<NodeRecord, String> {
    let (head, log) = out.split_once(&format!("{LOG_MARK}\n")).ok_or_else(|| format!("{node}: the evidence script's output is cut short"))?;
    let mut record = NodeRecord { node: node.to_string(), ..Default::default() };
    for line in head.lines() {
        match line.split_once('=') {
            Some(("backup", v)) => record.backup_present = v == "present",
            Some(("stamp", v)) => record.backup_stamp = Some(v.to_string()),
            Some(("etcd", v)) => record.etcd_backup_present = v == "present",
            Some(("earlier", v)) => record.earlier_backups.push(v.to_string()),
            _ => return Err(format!("{node}: unexpected line in the evidence script's output: {line:?}")),
        }
    }
    record.log = if log == "absent\n" { None } else { Some(log.to_string()) };
    Ok(record)
}

/// Reads every Linux node's backups and log, as many at once as `limit` allows; a node that
/// does not answer is named, not fatal. Windows nodes are listed as not read (certrotate
/// does not read Windows nodes yet).
pub async fn read_nodes(fleet: Arc<SshFleet>, topo: &Topology, limit: ReadLimit) -> (Vec<NodeRecord>, Vec<UnreadNode>, Vec<String>) {
    let jumpbox = topo.masters.first().map(|m| m.name.clone());
    let mut not_read = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for node in topo.nodes() {
        if node.os == OsType::Windows {
            not_read.push(format!("{}: a Windows node; its log ({}) and backups are not read by certrotate yet", node.name, crate::apply::windows::LOG_PATH));
            continue;
        }
        let (fleet, limit, jumpbox, name) = (fleet.clone(), limit.clone(), jumpbox.clone(), node.name.clone());
        tasks.spawn(async move {
            let _permit = limit.permit().await;
            let out = run_as_root_once(&fleet, jumpbox.as_deref(), &name, "evidence", &node_script()).await;
            let result = out.map_err(|e| e.to_string()).and_then(|out| parse_node_output(&name, &out));
            (name, result)
        });
    }
    let (mut nodes, mut unread) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("evidence task panicked") {
            (_, Ok(record)) => nodes.push(record),
            (node, Err(error)) => unread.push(UnreadNode { node, error }),
        }
    }
    let order = |name: &str| topo.nodes().position(|n| n.name == name);
    nodes.sort_by_key(|n| order(&n.node));
    unread.sort_by_key(|u| order(&u.node));
    (nodes, unread, not_read)
}

/// The expiry table now, as `status` prints it and as JSON; or why it could not be read.
pub enum StatusAfter {
    Read { text: String, rows: Vec<ExpiryRow> },
    NotRead(String),
}

/// A node that could not be read for its log and backups.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadNode {
    pub node: String,
    pub error: String,
}

/// Everything the bundle is made from.
pub struct Gathered {
    pub run: RunRecord,
    pub cluster: String,
    pub after: StatusAfter,
    pub nodes: Vec<NodeRecord>,
    pub unread_nodes: Vec<UnreadNode>,
    /// Nodes whose logs certrotate cannot read yet (Windows).
    pub not_read_kinds: Vec<String>,
    pub taken_at: time::OffsetDateTime,
}

/// The bundle's files, by path relative to its top directory, manifest last.
#[derive(Debug)]
pub struct Bundle {
    /// The top directory's name: `certrotate-evidence-<dnsPrefix>-<plan digest, 16>`.
    pub name: String,
    pub files: Vec<(String, Vec<u8>)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackupLocations<'a> {
    /// The API model's backup on the operator's machine (`_rotate_certs_backup/<time>/`).
    api_model_backup: Option<&'a Path>,
    node_backup_dir: &'static str,
    node_backup_extra_dir: &'static str,
    nodes: &'a [NodeRecord],
    unread_nodes: &'a [UnreadNode],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    cluster: &'a str,
    plan_digest: String,
    plan_file: &'a Path,
    profile: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    gathered_at: time::OffsetDateTime,
    steps_in_plan: usize,
    steps_done: usize,
    steps_not_done: Vec<&'a str>,
    complete: bool,
    rolled_back: bool,
    approvals: &'a [Approval],
    status_before_kept: bool,
    status_after_read: bool,
    files: Vec<&'a str>,
}

/// Turns what was gathered into the bundle's files and checks that none holds a secret.
pub fn assemble(g: &Gathered) -> miette::Result<Bundle> {
    let plan = &g.run.plan;
    let digest = plan.digest.as_ref().map(|d| d.to_string()).unwrap_or_default();
    let short: String = plan.digest.as_ref().map(|d| d.hex().chars().take(16).collect()).unwrap_or_default();
    let name = format!("certrotate-evidence-{}-{short}", plan.cluster.dns_prefix);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |path: &str, bytes: Vec<u8>| files.push((path.to_string(), bytes));

    add("plan/plan.yaml", plan.to_yaml().into_diagnostic()?.into_bytes());
    add("plan/review.md", review::markdown_for_file(plan, &g.run.plan_path).into_bytes());
    add("plan/review.html", review::html(plan, &g.run.plan_path).into_bytes());
    add("journal.jsonl", g.run.journal_text.clone().into_bytes());
    if let Some(text) = &g.run.rollback_journal {
        add("rollback.jsonl", text.clone().into_bytes());
    }
    add("approval.json", json(&g.run.approvals).into_bytes());
    match &g.run.status_before {
        Some((text, rows)) => {
            add("status/before.txt", text.clone().into_bytes());
            add("status/before.json", rows.clone().into_bytes());
        }
        None => add("status/before.txt", b"not kept: this plan was applied by a certrotate that did not keep the status before apply\n".to_vec()),
    }
    match &g.after {
        StatusAfter::Read { text, rows } => {
            add("status/after.txt", text.clone().into_bytes());
            add("status/after.json", json(rows).into_bytes());
        }
        StatusAfter::NotRead(why) => add("status/after.txt", format!("not read: {why}\n").into_bytes()),
    }
    for n in &g.nodes {
        let log = n.log.clone().unwrap_or_else(|| format!("{} has no {ROTATE_LOG}\n", n.node));
        add(&format!("nodes/{}/rotate-certs.log", n.node), log.into_bytes());
    }
    if !g.not_read_kinds.is_empty() || !g.unread_nodes.is_empty() {
        let mut s = String::new();
        for u in &g.unread_nodes {
            s.push_str(&format!("{}: {}\n", u.node, u.error));
        }
        for k in &g.not_read_kinds {
            s.push_str(&format!("{k}\n"));
        }
        add("nodes/NOT-READ.txt", s.into_bytes());
    }
    add(
        "backups.json",
        json(&BackupLocations {
            api_model_backup: g.run.state.backup_dir.as_deref(),
            node_backup_dir: BACKUP,
            node_backup_extra_dir: BACKUP_EXTRA,
            nodes: &g.nodes,
            unread_nodes: &g.unread_nodes,
        })
        .into_bytes(),
    );

    let steps = plan.graph.steps.len();
    let not_done = g.run.steps_not_done();
    let names: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
    let summary = Summary {
        cluster: &g.cluster,
        plan_digest: digest,
        plan_file: &g.run.plan_path,
        profile: &plan.profile.name,
        gathered_at: g.taken_at,
        steps_in_plan: steps,
        steps_done: steps - not_done.len(),
        complete: not_done.is_empty(),
        rolled_back: g.run.rollback_journal.is_some(),
        steps_not_done: not_done,
        approvals: &g.run.approvals,
        status_before_kept: g.run.status_before.is_some(),
        status_after_read: matches!(g.after, StatusAfter::Read { .. }),
        files: names.iter().map(String::as_str).collect(),
    };
    files.push(("evidence.json".into(), json(&summary).into_bytes()));

    for (path, bytes) in &files {
        if let Some(what) = find_secret(&String::from_utf8_lossy(bytes)) {
            return Err(miette!(
                help = "nothing was written; report this as a bug in certrotate, with the name of the file (not its content)",
                "the evidence would hold {what} in {path}: refusing to write it"
            ));
        }
    }
    let manifest: String = files.iter().map(|(p, b)| format!("{}  {p}\n", hex::encode(Sha256::digest(b)))).collect();
    files.push((MANIFEST.into(), manifest.into_bytes()));
    Ok(Bundle { name, files })
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("evidence serialises");
    s.push('\n');
    s
}

/// Writes the bundle as the directory `dir` (which must not exist yet): built beside it
/// under a temporary name, then renamed, so an interrupted run leaves no half bundle.
pub fn write_dir(bundle: &Bundle, dir: &Path) -> miette::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::io::Write as _;
    if dir.exists() {
        return Err(miette!(help = "pass a new directory (evidence never overwrites an earlier bundle)", "{} already exists", dir.display()));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".certrotate-evidence-").tempdir_in(parent).map_err(|e| miette!("cannot write in {}: {e}", parent.display()))?;
    for (rel, bytes) in &bundle.files {
        let path = tmp.path().join(rel);
        if let Some(p) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(p).into_diagnostic()?;
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).into_diagnostic()?;
        f.write_all(bytes).into_diagnostic()?;
        f.sync_all().into_diagnostic()?;
    }
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).into_diagnostic()?;
    let kept = tmp.keep();
    std::fs::rename(&kept, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        miette!("cannot put the bundle at {}: {e}", dir.display())
    })
}

/// Writes the bundle as a gzip-compressed tar file, its entries under the bundle's name,
/// atomically (a temporary file beside `file`, renamed).
pub fn write_tar_gz(bundle: &Bundle, file: &Path) -> miette::Result<()> {
    if file.exists() {
        return Err(miette!(help = "pass a new file name (evidence never overwrites an earlier bundle)", "{} already exists", file.display()));
    }
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".certrotate-evidence-").tempfile_in(parent).map_err(|e| miette!("cannot write in {}: {e}", parent.display()))?;
    let mtime = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    {
        let gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut dirs = std::collections::BTreeSet::new();
        for (rel, bytes) in &bundle.files {
            let path = format!("{}/{rel}", bundle.name);
            let mut at = Path::new(&path).parent();
            let mut missing = Vec::new();
            while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
                if dirs.insert(d.to_path_buf()) {
                    missing.push(d.to_path_buf());
                }
                at = d.parent();
            }
            for d in missing.into_iter().rev() {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o700);
                h.set_size(0);
                h.set_mtime(mtime);
                tar.append_data(&mut h, &d, std::io::empty()).into_diagnostic()?;
            }
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o600);
            h.set_size(bytes.len() as u64);
            h.set_mtime(mtime);
            tar.append_data(&mut h, &path, bytes.as_slice()).into_diagnostic()?;
        }
        let gz = tar.into_inner().into_diagnostic()?;
        gz.finish().into_diagnostic()?.sync_all().into_diagnostic()?;
    }
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o600)).into_diagnostic()?;
    tmp.persist(file).map_err(|e| miette!("cannot put the bundle at {}: {}", file.display(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_output_reads_backups_and_log() {
        let out = "backup=present\nstamp=0123456789abcdef\netcd=present\nearlier=/etc/kubernetes/certs.bak.20261201T010203Z\n--- rotate-certs.log\nline one\nline two\n";
        let r = parse_node_output("m0", out).unwrap();
        assert!(r.backup_present && r.etcd_backup_present);
        assert_eq!(r.backup_stamp.as_deref(), Some("0123456789abcdef"));
        assert_eq!(r.earlier_backups, vec!["/etc/kubernetes/certs.bak.20261201T010203Z".to_string()]);
        assert_eq!(r.log.as_deref(), Some("line one\nline two\n"));
        let none = parse_node_output("a0", "backup=absent\netcd=absent\n--- rotate-certs.log\nabsent\n").unwrap();
        assert!(!none.backup_present && none.log.is_none() && none.backup_stamp.is_none());
        assert!(parse_node_output("a0", "backup=present\n").unwrap_err().contains("cut short"));
        assert!(parse_node_output("a0", "Permission denied\n--- rotate-certs.log\n").unwrap_err().contains("unexpected line"));
    }

    #[test]
    fn the_node_script_only_reads() {
        let s = node_script();
        for writer in ["rm ", "mv ", "cp ", " > ", ">>", "tee ", "mkdir", "chmod", "chown", "sed -i"] {
            assert!(!s.contains(writer), "the evidence script must change nothing on a node, but has {writer:?}:\n{s}");
        }
    }
}
