//! The bodies of the rollback steps the step runner runs: confirm a node holds this plan's
//! backup, put a node's certificates back from it (Linux or Windows), put etcd's front-proxy
//! material back, and put apimodel.json and the admin kubeconfig back from the local backup.
//! Each is idempotent, so a rollback resumed after a stop may run one again.

use crate::apply::executor::{Context, StepError};
use crate::apply::node;
use crate::apply::store;
use crate::model::apimodel::write_atomic;
use crate::model::topology::{OsType, Role};
use crate::plan::step::Step;
use std::path::{Path, PathBuf};

fn target(step: &Step) -> Result<&str, StepError> {
    step.target.as_deref().ok_or_else(|| StepError::new(format!("step {} names no node", step.id)))
}

/// What `backup_stamp_script` answers, judged: `Ok` when the node holds the backup of `stamp`.
pub(crate) fn judge_backup(node: &str, stamp: &str, answer: &str) -> Result<String, StepError> {
    let answer = answer.trim();
    if answer == format!("BACKUP {stamp}") {
        return Ok(format!("backup of plan {stamp} present"));
    }
    let found = match answer.strip_prefix("BACKUP ") {
        Some(other) => format!("its backup was made by plan {other}"),
        None => "it holds no backup".into(),
    };
    Err(StepError {
        message: format!(
            "{node} does not hold the backup this plan's apply made (plan {stamp}): {found}; nothing was restored. If you know which backup is right, restore it by hand from /etc/kubernetes/certs.bak*"
        ),
        observed: vec![answer.to_string()],
    })
}

/// verifyBackup: the node holds `/etc/kubernetes/certs.bak` stamped with this plan.
pub(crate) async fn verify_backup(ctx: &Context, step: &Step) -> Result<Option<String>, StepError> {
    let node = target(step)?;
    let answer = ctx.run_root(node, "check the backup", &node::backup_stamp_script()).await?;
    judge_backup(node, &ctx.stamp(), &answer).map(Some)
}

/// restoreCerts: on Linux the backed-up directory (and on masters the admin kubeconfig) back
/// in place, the rotated one kept aside; on Windows c:\k from its backup, services restarted.
pub(crate) async fn restore_certs(ctx: &Context, step: &Step) -> Result<Option<String>, StepError> {
    let name = target(step)?;
    let node = ctx.topo.node(name).ok_or_else(|| StepError::new(format!("the plan names node {name}, which the API model does not have")))?;
    if node.os == OsType::Windows {
        crate::apply::winexec::restore_windows(ctx, name).await?;
        return Ok(Some("c:\\k restored, kubelet and kubeproxy restarted".into()));
    }
    let admin = match (&step.params.admin_kubeconfig, node.role) {
        (Some(path), _) => Some(path.clone()),
        (None, Role::Master) => Some(format!("/home/{}/.kube/config", ctx.topo.admin_username)),
        (None, _) => None,
    };
    ctx.run_root(name, "restore certificates", &node::restore_script(&ctx.stamp(), admin.as_deref())).await?;
    Ok(Some(format!("/etc/kubernetes/certs restored from {}", node::BACKUP)))
}

/// restoreFrontProxyInEtcd: `/proxycerts/*` back from the values saved before the apply's
/// put, else from the restored files.
pub(crate) async fn restore_front_proxy_in_etcd(ctx: &Context, step: &Step) -> Result<Option<String>, StepError> {
    let node = target(step)?;
    ctx.run_root(node, "restore front-proxy material in etcd", &node::etcd_restore_proxy_script(&ctx.stamp())).await?;
    Ok(Some("/proxycerts restored in etcd".into()))
}

/// restoreApiModel: apimodel.json and the kubeconfigs beside it back from the apply's local
/// backup, each written atomically; the rotated model is kept as `before-rollback-<time>`
/// first. A model that already equals the backup is left as it is (a resumed rollback).
pub(crate) fn restore_api_model(ctx: &Context, step: &Step) -> Result<Option<String>, StepError> {
    let backup = step
        .params
        .local_backup
        .as_deref()
        .map(PathBuf::from)
        .ok_or_else(|| StepError::new(format!("step {} names no local backup", step.id)))?;
    let model_dir = ctx.model_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    restore_api_model_files(&backup, &ctx.model_path, &model_dir).map(Some)
}

fn restore_api_model_files(backup: &Path, model_path: &Path, model_dir: &Path) -> Result<String, StepError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| StepError::new(format!("cannot read {}: {e}", p.display())));
    let saved = read(&backup.join("apimodel.json"))?;
    let mut notes = Vec::new();
    if std::fs::read(model_path).ok().as_deref() == Some(saved.as_slice()) {
        notes.push(format!("{} already holds the backup", model_path.display()));
    } else {
        let kept = store::backup_api_model_as(model_dir, "before-rollback-")?;
        write_atomic(model_path, &saved, None).map_err(|e| StepError::new(format!("cannot write {}: {e}", model_path.display())))?;
        notes.push(format!("{} restored (the rotated one is kept in {})", model_path.display(), kept.display()));
    }
    let kc_dir = backup.join("kubeconfig");
    if kc_dir.is_dir() {
        let entries = std::fs::read_dir(&kc_dir).map_err(|e| StepError::new(format!("cannot read {}: {e}", kc_dir.display())))?;
        let out_dir = model_dir.join("kubeconfig");
        store::private_dir(&out_dir)?;
        let mut restored = 0;
        for e in entries.flatten() {
            let bytes = read(&e.path())?;
            let to = out_dir.join(e.file_name());
            if std::fs::read(&to).ok().as_deref() != Some(bytes.as_slice()) {
                write_atomic(&to, &bytes, Some(0o600)).map_err(|err| StepError::new(format!("cannot write {}: {err}", to.display())))?;
                restored += 1;
            }
        }
        notes.push(format!("{restored} admin kubeconfig(s) restored"));
    }
    Ok(notes.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_plans_backup_passes() {
        assert!(judge_backup("m0", "0123abcd", "BACKUP 0123abcd\n").is_ok());
        let other = judge_backup("m0", "0123abcd", "BACKUP ffff0000").unwrap_err();
        assert!(other.message.starts_with("m0 does not hold") && other.message.contains("made by plan ffff0000"), "{}", other.message);
        let none = judge_backup("m0", "0123abcd", "NONE").unwrap_err();
        assert!(none.message.contains("holds no backup"), "{}", none.message);
    }

    #[test]
    fn the_api_model_and_kubeconfig_come_back_and_the_rotated_model_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path();
        let model = model_dir.join("apimodel.json");
        let backup = model_dir.join("_rotate_certs_backup").join("20260101T000000Z");
        std::fs::create_dir_all(backup.join("kubeconfig")).unwrap();
        std::fs::write(backup.join("apimodel.json"), "{\"old\":1}").unwrap();
        std::fs::write(backup.join("kubeconfig").join("kubeconfig.local.json"), "old kubeconfig").unwrap();
        std::fs::create_dir_all(model_dir.join("kubeconfig")).unwrap();
        std::fs::write(&model, "{\"rotated\":1}").unwrap();
        std::fs::write(model_dir.join("kubeconfig").join("kubeconfig.local.json"), "new kubeconfig").unwrap();

        let note = restore_api_model_files(&backup, &model, model_dir).unwrap();
        assert!(note.contains("restored"), "{note}");
        assert_eq!(std::fs::read_to_string(&model).unwrap(), "{\"old\":1}");
        assert_eq!(std::fs::read_to_string(model_dir.join("kubeconfig").join("kubeconfig.local.json")).unwrap(), "old kubeconfig");
        let kept: Vec<PathBuf> = std::fs::read_dir(model_dir.join("_rotate_certs_backup"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("before-rollback-"))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(std::fs::read_to_string(kept[0].join("apimodel.json")).unwrap(), "{\"rotated\":1}");

        // Again (a resumed rollback): nothing is kept twice, nothing changes.
        let note = restore_api_model_files(&backup, &model, model_dir).unwrap();
        assert!(note.contains("already holds the backup") && note.contains("0 admin"), "{note}");
        let count = std::fs::read_dir(model_dir.join("_rotate_certs_backup")).unwrap().count();
        assert_eq!(count, 2, "the backup and one kept model");
    }
}
