//! The cluster-wide lock: a file on the first master naming who holds it (user, host, pid),
//! since when, and for which plan. A second apply is refused while the holder lives; a lock
//! left by an apply of this machine whose process is gone (killed, crashed) is taken over,
//! so rerunning the same plan resumes; `--break-lock` takes any lock, with a warning.

use crate::apply::node;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub since: String,
    pub plan: String,
}

impl LockHolder {
    pub fn me(plan_digest: &str) -> LockHolder {
        LockHolder {
            user: std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into()),
            host: local_host(),
            pid: std::process::id(),
            since: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            plan: plan_digest.to_string(),
        }
    }

    pub fn line(&self) -> String {
        format!("holder={}@{} pid={} since={} plan={}", self.user, self.host, self.pid, self.since, self.plan)
    }

    pub fn parse(line: &str) -> Option<LockHolder> {
        let fields: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
        let (user, host) = fields.get("holder")?.split_once('@')?;
        Some(LockHolder {
            user: user.to_string(),
            host: host.to_string(),
            pid: fields.get("pid")?.parse().ok()?,
            since: fields.get("since").unwrap_or(&"").to_string(),
            plan: fields.get("plan").unwrap_or(&"").to_string(),
        })
    }

    /// Whether the holder is a process of this machine that no longer runs. A process we may
    /// not signal (EPERM) still lives: /proc may hide other users' processes.
    pub fn is_dead_local_process(&self) -> bool {
        if self.host != local_host() {
            return false;
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else { return false };
        // SAFETY: signal 0 only checks whether the process exists; nothing is delivered.
        let alive = unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        !alive
    }

    pub fn describe(&self) -> String {
        format!("{}@{} (pid {}) since {} for plan {}", self.user, self.host, self.pid, self.since, short(&self.plan))
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(16)]
}

/// This machine: host name and machine id, so two jumpboxes cloned with one host name differ.
fn local_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into());
    match std::fs::read_to_string("/etc/machine-id") {
        Ok(id) if !id.trim().is_empty() => format!("{name}/{}", &id.trim()[..id.trim().len().min(12)]),
        _ => name,
    }
}

/// What taking the lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Taken,
    /// Taken over from a dead process of this machine or broken with --break-lock.
    TakenFrom(String),
    Held(String),
}

/// What `decide` read, for the compare-and-swap take-over.
pub fn held_line(answer: &str) -> Option<&str> {
    let mut lines = answer.lines();
    (lines.next().map(str::trim) == Some("HELD")).then(|| lines.next().unwrap_or("").trim())
}

/// Interprets the take script's answer and says whether to force it.
pub fn decide(answer: &str, break_lock: bool) -> (LockOutcome, bool) {
    let mut lines = answer.lines();
    match lines.next().map(str::trim) {
        Some("TAKEN") => (LockOutcome::Taken, false),
        _ => {
            let held = lines.next().unwrap_or("").trim().to_string();
            match LockHolder::parse(&held) {
                Some(h) if h.is_dead_local_process() => (LockOutcome::TakenFrom(h.describe()), true),
                Some(h) if break_lock => (LockOutcome::TakenFrom(h.describe()), true),
                Some(h) => (LockOutcome::Held(h.describe()), false),
                None if break_lock => (LockOutcome::TakenFrom(format!("an unreadable lock ({held})")), true),
                None => (LockOutcome::Held(format!("an unreadable lock in {} ({held})", node::LOCK_FILE)), false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_is_refused_a_dead_local_one_is_taken_over() {
        let me = LockHolder::me("sha256:abcdef");
        assert_eq!(LockHolder::parse(&me.line()), Some(me.clone()));
        let (o, force) = decide(&format!("HELD\n{}\n", me.line()), false);
        assert!(matches!(o, LockOutcome::Held(_)) && !force, "our own live process holds it");
        let dead = LockHolder { pid: 999_999_999, ..me.clone() };
        let (o, force) = decide(&format!("HELD\n{}\n", dead.line()), false);
        assert!(matches!(o, LockOutcome::TakenFrom(_)) && force);
        let other = LockHolder { host: "elsewhere".into(), pid: 1, ..me.clone() };
        assert!(matches!(decide(&format!("HELD\n{}\n", other.line()), false).0, LockOutcome::Held(_)));
        assert!(matches!(decide(&format!("HELD\n{}\n", other.line()), true).0, LockOutcome::TakenFrom(_)));
        assert_eq!(decide("TAKEN\n", false).0, LockOutcome::Taken);
    }
}
