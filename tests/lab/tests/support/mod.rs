//! Helpers shared by the lab tests that run the certrotate binary.

use std::path::PathBuf;
use std::process::Output;

/// The certrotate binary built beside this test binary (`cargo build --workspace`).
pub fn certrotate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("certrotate");
    assert!(bin.is_file(), "build certrotate first: cargo build --workspace (looked for {})", bin.display());
    bin
}

/// Exit code, stdout and stderr of a run, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("exit {:?}\n{}\n{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
