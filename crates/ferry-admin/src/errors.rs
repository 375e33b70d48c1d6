//! The one shape of every error answer (DESIGN §4, HTTP): a 4xx or 5xx with the JSON body
//! `{"error": "...", "detail": ...}`, and the mapping of the admin's refusals to it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::ErrorBody;

use crate::operations::ApiError;

pub(crate) fn error(status: u16, msg: impl Into<String>) -> Response {
    error_with(status, msg, serde_json::Value::Null)
}

pub(crate) fn error_with(status: u16, msg: impl Into<String>, detail: serde_json::Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(ErrorBody { error: msg.into(), detail })).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status(), self.to_string())
    }
}

impl IntoResponse for crate::pki::Refusal {
    fn into_response(self) -> Response {
        error(self.status(), self.to_string())
    }
}
