//! The journal: one JSON line per finished step, appended and synced as each step ends, in the
//! plan's run directory beside the API model. A rerun of the same plan skips what the journal
//! records, so after a failure or a kill apply continues where it stopped. It holds step ids,
//! times and short notes only, never key material. Beside the steps it records who approved
//! each run that walked the plan (a line of its own, `{"approval": ...}`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    pub step: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    pub secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Who approved a run of the plan, how, and for which plan digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub approved_by: String,
    pub how: ApprovalHow,
    pub plan_digest: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ApprovalHow {
    /// `yes` at apply's prompt.
    Prompt,
    /// `--auto-approve`: the approval was given elsewhere (a change ticket), named by `--approved-by`.
    AutoApprove,
    /// `apply PLAN`: the reviewed, saved plan is the approval, applied by this person.
    SavedPlan,
}

#[derive(Serialize, Deserialize)]
struct ApprovalLine {
    approval: Approval,
}

/// The finished steps (in the order they finished) and the approvals of a journal's text,
/// read without opening it for writing (`evidence`). A torn last line is left out.
pub fn parse(text: &str) -> (Vec<JournalEntry>, Vec<Approval>) {
    let mut entries = Vec::new();
    let mut approvals = Vec::new();
    for line in text.lines() {
        if let Ok(entry) = serde_json::from_str::<JournalEntry>(line) {
            entries.push(entry);
        } else if let Ok(line) = serde_json::from_str::<ApprovalLine>(line) {
            approvals.push(line.approval);
        }
    }
    (entries, approvals)
}

/// How a step skipped under `--force` begins its note.
pub const FORCED_NOTE: &str = "skipped (--force";

pub struct Journal {
    path: PathBuf,
    done: Mutex<BTreeMap<String, JournalEntry>>,
    approvals: Mutex<Vec<Approval>>,
    /// Shared with the blocking-pool task that appends and syncs each line.
    file: Arc<Mutex<std::fs::File>>,
}

impl Journal {
    /// Opens (or creates, 0600) the journal and reads what earlier runs finished. A last line
    /// cut short by a kill is ignored: its step simply runs again.
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        use std::os::unix::fs::OpenOptionsExt;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let (entries, approvals) = parse(&text);
        let done: BTreeMap<String, JournalEntry> = entries.into_iter().map(|e| (e.step.clone(), e)).collect();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        if !text.is_empty() && !text.ends_with('\n') {
            // End the torn line so the next entry starts on a line of its own.
            file.write_all(b"\n")?;
        }
        Ok(Journal { path: path.to_path_buf(), done: Mutex::new(done), approvals: Mutex::new(approvals), file: Arc::new(Mutex::new(file)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.done.lock().expect("journal lock").contains_key(step)
    }

    /// Whether the step was only skipped because of `--force` (its note says so).
    pub fn was_forced(&self, step: &str) -> bool {
        self.done.lock().expect("journal lock").get(step).and_then(|e| e.note.as_deref()).is_some_and(|n| n.starts_with(FORCED_NOTE))
    }

    pub fn done_count(&self) -> usize {
        self.done.lock().expect("journal lock").len()
    }

    pub fn entries(&self) -> Vec<JournalEntry> {
        self.done.lock().expect("journal lock").values().cloned().collect()
    }

    /// Every approval recorded, oldest first.
    pub fn approvals(&self) -> Vec<Approval> {
        self.approvals.lock().expect("journal lock").clone()
    }

    /// Records who approved this run; the line is on disk when this returns.
    pub async fn record_approval(&self, approval: Approval) -> std::io::Result<()> {
        let line = serde_json::to_string(&ApprovalLine { approval: approval.clone() }).expect("approval serialises");
        self.append(line).await?;
        self.approvals.lock().expect("journal lock").push(approval);
        Ok(())
    }

    /// Records a finished step; the line is on disk when this returns.
    ///
    /// The write and fsync run on tokio's blocking pool: an fsync can take a long time on a
    /// busy disk, and on a runtime worker it would stall the steps in flight and the progress
    /// output meanwhile. spawn_blocking rather than block_in_place, which panics on a
    /// current-thread runtime.
    pub async fn record(&self, step: &str, secs: f64, note: Option<String>) -> std::io::Result<()> {
        let entry = JournalEntry { step: step.to_string(), at: time::OffsetDateTime::now_utc(), secs, note };
        self.append(serde_json::to_string(&entry).expect("entry serialises")).await?;
        self.done.lock().expect("journal lock").insert(entry.step.clone(), entry);
        Ok(())
    }

    async fn append(&self, mut line: String) -> std::io::Result<()> {
        line.push('\n');
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let mut f = file.lock().expect("journal lock");
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(|e| std::io::Error::other(format!("the journal write did not finish: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A current-thread runtime, as #[tokio::test] gives, also checks that recording needs no
    // multi-thread runtime.
    #[tokio::test]
    async fn finished_steps_survive_a_reopen_and_a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::open(&path).unwrap();
        j.record("issuePki", 1.5, None).await.unwrap();
        j.record("installCerts@m0", 0.2, Some("3 files".into())).await.unwrap();
        drop(j);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\":\"restartEtcd@m0\",\"at\":");
        std::fs::write(&path, text).unwrap();
        let j = Journal::open(&path).unwrap();
        assert!(j.is_done("issuePki") && j.is_done("installCerts@m0"));
        assert!(!j.is_done("restartEtcd@m0"));
        assert_eq!(j.done_count(), 2);
        j.record("restartEtcd@m0", 3.0, None).await.unwrap();
        drop(j);
        assert!(Journal::open(&path).unwrap().is_done("restartEtcd@m0"), "an entry after a torn line is readable");
        let j = Journal::open(&path).unwrap();
        let approval = Approval { approved_by: "Jane Doe".into(), how: ApprovalHow::AutoApprove, plan_digest: "sha256:ab".into(), at: time::OffsetDateTime::UNIX_EPOCH };
        j.record_approval(approval.clone()).await.unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.approvals(), vec![approval], "approvals survive a reopen");
        assert_eq!(j.done_count(), 3, "an approval is not a step");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
