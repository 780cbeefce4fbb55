//! The lab's control surface on the stand-in's own HTTPS endpoint, for a CLI running in
//! another process than the server: `GET|POST|DELETE /_lab/faults`, `DELETE /_lab/faults/{id}`,
//! `GET|DELETE /_lab/calls`. Bodies are the serde types of `faults`. Every request must carry
//! the configured `x-lab-admin-token`; without one configured the surface does not exist.

use super::faults::{FaultId, FaultRule};
use super::http::{ArmRequest, Reply, ServerState};
use serde_json::json;

pub(crate) fn handle(state: &ServerState, req: &ArmRequest) -> Reply {
    let Some(expected) = &state.config.admin_token else {
        return Reply::arm_error(404, "NotFound", format!("The requested path '{}' was not found.", req.path));
    };
    let given = req.header_str("x-lab-admin-token").unwrap_or_default();
    if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), expected.0.as_bytes()).is_err() {
        return Reply::arm_error(401, "AuthenticationFailed", "The x-lab-admin-token header is missing or wrong.");
    }
    let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["_lab", "faults"]) => json_reply(&state.faults.list()),
        ("POST", ["_lab", "faults"]) => match serde_json::from_slice::<FaultRule>(&req.body) {
            Ok(rule) => Reply::json(201, &json!({"id": state.faults.add(rule)})),
            Err(e) => Reply::arm_error(400, "InvalidRequestContent", format!("the body is not a fault rule: {e}")),
        },
        ("DELETE", ["_lab", "faults"]) => {
            state.faults.clear();
            Reply::empty(204)
        }
        ("DELETE", ["_lab", "faults", id]) => match id.parse::<u64>() {
            Ok(id) if state.faults.remove(FaultId(id)) => Reply::empty(204),
            _ => Reply::arm_error(404, "NotFound", format!("no fault with id {id}")),
        },
        ("GET", ["_lab", "calls"]) => json_reply(&state.calls.snapshot()),
        ("DELETE", ["_lab", "calls"]) => {
            state.calls.clear();
            Reply::empty(204)
        }
        _ => Reply::arm_error(404, "NotFound", format!("The requested path '{}' was not found.", req.path)),
    }
}

fn json_reply(value: &impl serde::Serialize) -> Reply {
    match serde_json::to_value(value) {
        Ok(v) => Reply::json(200, &v),
        Err(e) => Reply::arm_error(500, "InternalServerError", e.to_string()),
    }
}
