//! API errors as kube-apiserver reports them: an HTTP status plus a `Status` object
//! (`kind: Status`, `reason`, `message`, `details`) that kubectl and kube-rs decode.

use crate::kube::etcd::EtcdError;
use serde_json::{json, Value};

/// One failed API request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// Resource name, group and plural the error is about, for `details`.
    pub name: Option<String>,
    pub group: Option<String>,
    pub kind: Option<String>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), name: None, group: None, kind: None }
    }

    fn about(mut self, group: &str, plural: &str, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self.group = Some(group.to_owned());
        self.kind = Some(plural.to_owned());
        self
    }

    fn qualified(group: &str, plural: &str) -> String {
        if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") }
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", Self::qualified(group, plural)))
            .about(group, plural, name)
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", Self::qualified(group, plural)))
            .about(group, plural, name)
    }

    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                Self::qualified(group, plural)
            ),
        )
        .about(group, plural, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(group: &str, plural: &str, name: &str, message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message).about(group, plural, name)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(405, "MethodNotAllowed", format!("the server does not allow this method ({method}) on {path}"))
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format ({content_type})"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.name.is_some() || self.kind.is_some() {
            let mut details = json!({});
            if let Some(name) = &self.name {
                details["name"] = json!(name);
            }
            if let Some(group) = self.group.as_deref().filter(|g| !g.is_empty()) {
                details["group"] = json!(group);
            }
            if let Some(kind) = &self.kind {
                details["kind"] = json!(kind);
            }
            status["details"] = details;
        }
        status
    }
}

impl From<EtcdError> for ApiError {
    fn from(error: EtcdError) -> Self {
        // kube-apiserver turns storage outages into 503s and anything else into 500s.
        match error {
            EtcdError::Unavailable { .. } => ApiError::unavailable(format!("etcd: {error}")),
            other => ApiError::internal(format!("etcd: {other}")),
        }
    }
}
