//! The two shapes of a response: a plain-text message (one line, as etcdbrctl answers errors)
//! and JSON.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// A plain-text message, newline-terminated.
pub(super) fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

/// A JSON body (a 500 with a message if it cannot be encoded).
pub(super) fn json(code: StatusCode, v: &impl serde::Serialize) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => (code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        ),
    }
}
