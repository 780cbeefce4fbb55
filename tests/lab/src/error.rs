//! Errors of the lab, each saying what went wrong and what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid lab request: {0}")]
    Spec(String),
    #[error("{dir} is not a lab directory ({reason}); run `lab up --dir {dir}` first", dir = .dir.display())]
    NotALab { dir: PathBuf, reason: String },
    #[error("{dir} already holds a running lab; run `lab down --dir {dir}` first", dir = .dir.display())]
    AlreadyRunning { dir: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("command `{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("issuing {what} failed: {detail}")]
    Pki { what: String, detail: String },
    #[error("the lab supervisor at {socket} did not answer ({detail}); is the lab up? `lab status --dir DIR`", socket = .socket.display())]
    Supervisor { socket: PathBuf, detail: String },
    #[error("the supervisor refused: {0}")]
    Refused(String),
    #[error("the lab did not become healthy within {secs} s: {detail}")]
    Timeout { secs: u64, detail: String },
}

impl LabError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;
