//! Runs the node steps of Windows agents: the PowerShell scripts of `windows.rs`, sent over
//! the node's SSH connection on stdin. The lab has no Windows node, so this path is covered
//! by the unit tests of the scripts, not by a live run.

use crate::apply::executor::{Context, StepError};
use crate::apply::windows;
use crate::plan::graph::{Operation, Step};

async fn run_ps(ctx: &Context, node: &str, what: &str, script: &str) -> Result<String, StepError> {
    let (program, args) = windows::POWERSHELL_COMMAND.split_first().expect("a program");
    ctx.run_program(node, what, program, args, script).await
}

/// The Windows version of a node step; steps with no Windows counterpart are no-ops that say so.
pub async fn run_windows_step(ctx: &Context, step: &Step) -> Result<Option<String>, StepError> {
    let node = step.target.clone().unwrap_or_default();
    let stamp = ctx.stamp();
    match step.operation {
        // The material travels with the install step; what remains of this step on Windows
        // is its backup (plans saved before the two steps were merged also have it apart).
        Operation::DistributeCerts | Operation::BackupNodeCerts => {
            run_ps(ctx, &node, "back up c:\\k", &windows::backup_script(&stamp)).await?;
            Ok(None)
        }
        Operation::InstallCerts => {
            let pki = ctx.pki()?;
            let client = pki.get("client").ok_or_else(|| {
                StepError::new(format!("{node} is a Windows agent and the plan does not reissue its client certificate; certrotate only rotates Windows agents together with the client certificate"))
            })?;
            let install = windows::WindowsInstall {
                ca_crt_pem: pki.ca_cert_pem.clone(),
                client_crt_pem: client.cert_pem.clone(),
                client_key_pem: client.key_pem.clone(),
                stamp: stamp.clone(),
            };
            run_ps(ctx, &node, "install certificates under c:\\k", &windows::stage_and_install_script(&install)).await?;
            Ok(None)
        }
        Operation::RestartKubelet => {
            run_ps(ctx, &node, "restart kubelet and kubeproxy", &windows::restart_script()).await?;
            Ok(None)
        }
        Operation::Cleanup => {
            run_ps(ctx, &node, "clean up c:\\k", &windows::cleanup_script()).await?;
            Ok(None)
        }
        Operation::RemoveKubeletClientCurrent => Ok(Some("Windows: no kubelet-client-current.pem".into())),
        other => Err(StepError::new(format!("step {} ({}) has no Windows counterpart; {node} is a Windows node", step.id, other.as_str()))),
    }
}

/// Rollback of a Windows agent: restore c:\k from its backup and restart the services.
pub async fn restore_windows(ctx: &Context, node: &str) -> Result<(), StepError> {
    run_ps(ctx, node, "restore c:\\k", &windows::restore_script(&ctx.stamp())).await?;
    Ok(())
}
