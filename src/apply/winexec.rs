//! Runs the node steps of Windows agents: the PowerShell scripts of `windows.rs`, sent over
//! the node's SSH connection on stdin. The lab has no Windows node, so this path is covered
//! by the unit tests of the scripts, not by a live run.

use crate::apply::executor::{Context, StepError};
use crate::apply::store::NewPki;
use crate::apply::windows;
use crate::plan::step::{Operation, Step};
use std::sync::Arc;

async fn run_ps(ctx: &Context, node: &str, what: &str, script: &str) -> Result<String, StepError> {
    let (program, args) = windows::POWERSHELL_COMMAND.split_first().expect("a program");
    ctx.run_program(node, what, program, args, script).await
}

/// What a node step does on a Windows agent.
#[derive(PartialEq, Eq)]
pub(crate) enum WindowsAction {
    /// Nothing to run there; the note says why (for the journal).
    Note(&'static str),
    /// A PowerShell script to run on the node, and what it does (for messages).
    Script { what: &'static str, script: String },
}

impl std::fmt::Debug for WindowsAction {
    // The install script carries the client key: never print a script's text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowsAction::Note(n) => f.debug_tuple("Note").field(n).finish(),
            WindowsAction::Script { what, script } => f.debug_struct("Script").field("what", what).field("bytes", &script.len()).finish_non_exhaustive(),
        }
    }
}

/// The Windows counterpart of a node step, without running it: `stamp` names the plan's
/// backup; `pki` is asked for the new material only by the install step.
pub(crate) fn windows_action(step: &Step, stamp: &str, pki: impl FnOnce() -> Result<Arc<NewPki>, StepError>) -> Result<WindowsAction, StepError> {
    let node = step.target.as_deref().unwrap_or_default();
    let script = |what: &'static str, script: String| -> Result<WindowsAction, StepError> { Ok(WindowsAction::Script { what, script }) };
    match step.operation {
        // The material travels with the install step; what remains of this step on Windows
        // is its backup (plans saved before the two steps were merged also have it apart).
        Operation::DistributeCerts | Operation::BackupNodeCerts => script("back up c:\\k", windows::backup_script(stamp)),
        Operation::InstallCerts => {
            let pki = pki()?;
            let client = pki.get("client").ok_or_else(|| {
                StepError::new(format!("{node} is a Windows agent and the plan does not reissue its client certificate; certrotate only rotates Windows agents together with the client certificate"))
            })?;
            let install = windows::WindowsInstall {
                ca_crt_pem: pki.ca_cert_pem.clone(),
                client_crt_pem: client.cert_pem.clone(),
                client_key_pem: client.key_pem.clone(),
                stamp: stamp.to_string(),
            };
            script("install certificates under c:\\k", windows::stage_and_install_script(&install))
        }
        Operation::RestartKubelet => script("restart kubelet and kubeproxy", windows::restart_script()),
        Operation::Cleanup => script("clean up c:\\k", windows::cleanup_script()),
        Operation::RemoveKubeletClientCurrent => Ok(WindowsAction::Note("Windows: no kubelet-client-current.pem")),
        other => Err(StepError::new(format!("step {} ({}) has no Windows counterpart; {node} is a Windows node", step.id, other.as_str()))),
    }
}

/// The Windows version of a node step; steps with no Windows counterpart are no-ops that say so.
pub async fn run_windows_step(ctx: &Context, step: &Step) -> Result<Option<String>, StepError> {
    let node = step.target.clone().unwrap_or_default();
    match windows_action(step, &ctx.stamp(), || ctx.pki())? {
        WindowsAction::Note(note) => Ok(Some(note.to_string())),
        WindowsAction::Script { what, script } => {
            run_ps(ctx, &node, what, &script).await?;
            Ok(None)
        }
    }
}

/// Rollback of a Windows agent: restore c:\k from its backup and restart the services.
pub async fn restore_windows(ctx: &Context, node: &str) -> Result<(), StepError> {
    run_ps(ctx, node, "restore c:\\k", &windows::restore_script(&ctx.stamp())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::GateKind;
    use crate::pki::KeyCertPair;

    const NODE: &str = "2480k8s000";
    const STAMP: &str = "0123abcd4567ef89";

    fn step(operation: Operation) -> Step {
        Step {
            id: format!("{}@{NODE}", operation.as_str()),
            kind: operation.kind(),
            operation,
            phase: crate::plan::step::Phase::Agents,
            scope: crate::plan::step::Scope::Node,
            target: Some(NODE.into()),
            description: String::new(),
            params: Default::default(),
            gate: None,
            requires: Vec::new(),
        }
    }

    fn pair(name: &str) -> KeyCertPair {
        KeyCertPair {
            cert_pem: format!("-----BEGIN CERTIFICATE-----\n{name}CERT\n-----END CERTIFICATE-----\n"),
            key_pem: format!("-----BEGIN RSA PRIVATE KEY-----\n{name}KEY\n-----END RSA PRIVATE KEY-----\n"),
        }
    }

    fn pki(ids: &[&str]) -> Arc<NewPki> {
        Arc::new(NewPki {
            items: ids.iter().map(|id| (id.to_string(), pair(id))).collect(),
            ca_cert_pem: "-----BEGIN CERTIFICATE-----\nCLUSTERCA\n-----END CERTIFICATE-----\n".into(),
            proxy_ca_cert_pem: None,
        })
    }

    /// The action for `op`, failing the test if it asks for the new material.
    fn action_without_pki(op: Operation) -> Result<WindowsAction, StepError> {
        windows_action(&step(op), STAMP, || panic!("{} must not need the new certificates", op.as_str()))
    }

    fn script(what: &'static str, script: String) -> WindowsAction {
        WindowsAction::Script { what, script }
    }

    #[test]
    fn each_node_step_runs_its_own_script_or_says_why_none() {
        assert_eq!(action_without_pki(Operation::BackupNodeCerts).unwrap(), script("back up c:\\k", windows::backup_script(STAMP)));
        assert_eq!(action_without_pki(Operation::RestartKubelet).unwrap(), script("restart kubelet and kubeproxy", windows::restart_script()));
        assert_eq!(action_without_pki(Operation::Cleanup).unwrap(), script("clean up c:\\k", windows::cleanup_script()));
        // The backup is named after the plan: another stamp is another script.
        assert_ne!(action_without_pki(Operation::BackupNodeCerts).unwrap(), script("back up c:\\k", windows::backup_script("ffffffffffffffff")));
        // distributeCerts carries the backup on Linux too; the material travels with install.
        assert_eq!(action_without_pki(Operation::DistributeCerts).unwrap(), script("back up c:\\k", windows::backup_script(STAMP)));
        assert_eq!(action_without_pki(Operation::RemoveKubeletClientCurrent).unwrap(), WindowsAction::Note("Windows: no kubelet-client-current.pem"));
    }

    #[test]
    fn install_sends_the_cluster_ca_and_the_new_client_pair_with_the_plan_stamp() {
        let got = windows_action(&step(Operation::InstallCerts), STAMP, || Ok(pki(&["client", "kubeletserver"]))).unwrap();
        let want = windows::stage_and_install_script(&windows::WindowsInstall {
            ca_crt_pem: pki(&[]).ca_cert_pem.clone(),
            client_crt_pem: pair("client").cert_pem,
            client_key_pem: pair("client").key_pem,
            stamp: STAMP.into(),
        });
        assert_eq!(got, script("install certificates under c:\\k", want));
        // Not the kubelet serving pair, which Windows agents do not use.
        let WindowsAction::Script { script: text, .. } = got else { unreachable!() };
        assert!(!text.contains("kubeletserver"), "only the client pair travels");
    }

    #[test]
    fn install_without_a_new_client_certificate_is_refused_naming_the_node() {
        let e = windows_action(&step(Operation::InstallCerts), STAMP, || Ok(pki(&["kubeletserver"]))).unwrap_err();
        assert!(e.message.starts_with(&format!("{NODE} is a Windows agent")) && e.message.contains("client certificate"), "{}", e.message);
        // A failure to load the material is passed on as it is.
        let e = windows_action(&step(Operation::InstallCerts), STAMP, || Err(StepError::new("no pki yet"))).unwrap_err();
        assert_eq!(e.message, "no pki yet");
    }

    #[test]
    fn steps_with_no_windows_counterpart_fail_naming_step_and_node() {
        let ops = [
            Operation::InstallAdminKubeconfig,
            Operation::RestartEtcd,
            Operation::RestartControlPlane,
            Operation::RebootVm,
            Operation::PutFrontProxyInEtcd,
            Operation::InstallFrontProxy,
            Operation::RestartApiserver,
            Operation::Gate(GateKind::ALL[0]),
        ];
        for op in ops {
            let e = action_without_pki(op).unwrap_err();
            assert_eq!(e.message, format!("step {}@{NODE} ({}) has no Windows counterpart; {NODE} is a Windows node", op.as_str(), op.as_str()));
        }
    }
}
