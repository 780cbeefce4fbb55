//! Cleaning up a lab whose supervisor is gone (crashed, killed, or never finished starting):
//! kill the processes of the lab's own node namespaces and of the load balancers' (HAProxy),
//! found through `holders.json` (checked to still be our `sleep infinity` holders in a
//! namespace other than the host's), then remove
//! the lab's bridge. Never touches anything it cannot prove is this lab's.

use crate::nsexec;
use crate::spec::Layout;
use crate::supervisor::{holders_file, pid_file, HolderRecord};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn host_net_inode() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// Whether `pid` is still the holder we recorded: same netns inode, not the host's, and
/// running `sleep infinity`.
fn is_our_holder(record: &HolderRecord) -> bool {
    let Ok(meta) = std::fs::metadata(format!("/proc/{}/ns/net", record.pid)) else { return false };
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", record.pid)).unwrap_or_default();
    meta.ino() == record.net_inode && Some(record.net_inode) != host_net_inode() && cmdline == b"sleep\0infinity\0"
}

/// The supervisor pid, if the recorded one is alive and is a `lab supervise` of this dir.
pub fn live_supervisor(layout: &Layout) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(&layout.dir)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let dir = layout.dir.as_os_str().as_encoded_bytes();
    (words.contains(&&b"supervise"[..]) && words.contains(&dir)).then_some(pid)
}

/// Remove what a dead supervisor left. Returns what was done, for the user.
pub fn cleanup_offline(layout: &Layout) -> Vec<String> {
    let mut done = Vec::new();
    if let Some(pid) = live_supervisor(layout) {
        nsexec::signal_all(&[pid], libc::SIGKILL);
        done.push(format!("killed the unresponsive supervisor (pid {pid})"));
    }
    let records: Vec<HolderRecord> = std::fs::read_to_string(holders_file(&layout.dir))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let ours: Vec<&HolderRecord> = records.iter().filter(|r| is_our_holder(r)).collect();
    for record in &ours {
        let pids = nsexec::pids_in_netns(record.net_inode);
        nsexec::signal_all(&pids, libc::SIGKILL);
        done.push(format!("killed {} processes of {}", pids.len(), record.node));
    }
    for _ in 0..100 {
        if ours.iter().all(|r| nsexec::pids_in_netns(r.net_inode).is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if crate::net::link_exists(&layout.bridge) {
        match crate::net::delete_bridge(layout) {
            Ok(()) => done.push(format!("removed bridge {}", layout.bridge)),
            Err(e) => done.push(format!("could not remove bridge {}: {e}", layout.bridge)),
        }
    }
    // veths die with their namespaces; one left means its node process survived.
    for veth in layout.nodes.iter().map(|n| n.veth.clone()).chain([layout.lb_veth()]) {
        if crate::net::link_exists(&veth) {
            let _ = crate::net::ip_batch(&format!("link del {veth}\n"));
            done.push(format!("removed leftover veth {veth}"));
        }
    }
    let _ = std::fs::remove_file(holders_file(&layout.dir));
    let _ = std::fs::remove_file(pid_file(&layout.dir));
    let _ = std::fs::remove_file(layout.socket());
    done
}

/// What of this lab still exists on the machine (empty = nothing).
pub fn leftovers(layout: &Layout) -> Vec<String> {
    let mut left = Vec::new();
    if crate::net::link_exists(&layout.bridge) {
        left.push(format!("bridge {}", layout.bridge));
    }
    for veth in layout.nodes.iter().map(|n| n.veth.clone()).chain([layout.lb_veth()]) {
        if crate::net::link_exists(&veth) {
            left.push(format!("veth {veth}"));
        }
    }
    if let Some(pid) = live_supervisor(layout) {
        left.push(format!("supervisor pid {pid}"));
    }
    let records: Vec<HolderRecord> = std::fs::read_to_string(holders_file(&layout.dir))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    for record in records.iter().filter(|r| is_our_holder(r)) {
        left.push(format!("namespaces of {} (pid {})", record.node, record.pid));
    }
    left
}
