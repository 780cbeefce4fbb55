//! The lab's network: one bridge per lab in the host namespace (host side .1 of the lab's /24),
//! one veth pair per node (host end on the bridge, node end `eth0` in the node's namespace).
//! The operator side reaches every node address directly through the bridge.

use crate::error::LabError;
use crate::nsexec::{Enter, NodeNamespaces};
use crate::spec::{Layout, NodeInfo};
use std::io::Write;
use std::process::{Command, Stdio};

/// Run `ip -batch -` with `script` on the host.
pub fn ip_batch(script: &str) -> Result<(), LabError> {
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LabError::io("starting ip -batch"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .map_err(LabError::io("feeding ip -batch"))?;
    let output = child.wait_with_output().map_err(LabError::io("waiting for ip -batch"))?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: format!("ip -batch <<EOF\n{script}EOF"),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Create the lab's bridge with the host address. Refuses when a link of that name exists.
pub fn create_bridge(layout: &Layout) -> Result<(), LabError> {
    if link_exists(&layout.bridge) {
        return Err(LabError::AlreadyRunning { dir: layout.dir.clone() });
    }
    ip_batch(&format!(
        "link add name {br} type bridge\naddr add {host}/24 dev {br}\nlink set {br} up\n",
        br = layout.bridge,
        host = layout.host_ip()
    ))?;
    // A host with br_netfilter would push bridged traffic through iptables' FORWARD chain,
    // which container runtimes often set to DROP; nodes talk to each other over this bridge.
    let _ = Command::new("ip")
        .args(["link", "set", "dev", &layout.bridge, "type", "bridge", "nf_call_iptables", "0"])
        .stderr(Stdio::null())
        .status();
    Ok(())
}

pub fn delete_bridge(layout: &Layout) -> Result<(), LabError> {
    if link_exists(&layout.bridge) {
        ip_batch(&format!("link del {}\n", layout.bridge))?;
    }
    Ok(())
}

/// Plug nodes into the bridge: one veth pair each, node end moved into the holder's netns.
pub fn plug_nodes(layout: &Layout, nodes: &[(&NodeInfo, u32)]) -> Result<(), LabError> {
    let mut script = String::new();
    for (node, holder_pid) in nodes {
        script.push_str(&format!(
            "link add name {veth} type veth peer name eth0 netns {holder_pid}\nlink set {veth} master {br}\nlink set {veth} up\n",
            veth = node.veth,
            br = layout.bridge
        ));
    }
    ip_batch(&script)
}

/// Address the node end and bring up loopback (etcd listens on 127.0.0.1 too).
pub fn configure_node(layout: &Layout, node: &NodeInfo, ns: &NodeNamespaces) -> Result<(), LabError> {
    let script = format!(
        "link set lo up\naddr add {ip}/24 dev eth0\nlink set eth0 up\nroute add default via {host}\n",
        ip = node.ip,
        host = layout.host_ip()
    );
    ns.run("ip", &["-batch", "-"], Some(&script), Enter::NET).map(|_| ())
}

/// Cut (or restore) a node's network by downing the host end of its veth.
pub fn set_node_link(node: &NodeInfo, up: bool) -> Result<(), LabError> {
    ip_batch(&format!("link set {} {}\n", node.veth, if up { "up" } else { "down" }))
}
