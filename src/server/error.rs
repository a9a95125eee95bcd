//! The one place where an error becomes a status code and a body, in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Errors a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed; `param` names the offending field when there is one.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("{message}")]
    Unauthorized { message: String },
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The classifier queue is full: try again after `retry_after_secs`.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    /// A dependency could not answer in time or at all.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// A bug or a failure the client cannot fix; the message is logged, not detailed.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// A 400 about `param`.
    pub fn bad_request(
        message: impl Into<String>,
        param: Option<&str>,
        code: &'static str,
    ) -> Self {
        AppError::BadRequest {
            message: message.into(),
            param: param.map(str::to_string),
            code,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            AppError::NotFound { .. } => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` for this error.
    fn kind(&self) -> &'static str {
        match self {
            AppError::BadRequest { .. }
            | AppError::NotFound { .. }
            | AppError::MethodNotAllowed { .. }
            | AppError::PayloadTooLarge { .. } => "invalid_request_error",
            AppError::Unauthorized { .. } => "authentication_error",
            AppError::Overloaded { .. } => "rate_limit_error",
            AppError::Unavailable { .. } | AppError::Internal(_) => "server_error",
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest { code, .. } | AppError::NotFound { code, .. } => code,
            AppError::Unauthorized { .. } => "invalid_api_key",
            AppError::MethodNotAllowed { .. } => "method_not_allowed",
            AppError::PayloadTooLarge { .. } => "request_too_large",
            AppError::Overloaded { .. } => "queue_full",
            AppError::Unavailable { .. } => "classifier_unavailable",
            AppError::Internal(_) => "internal_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            AppError::BadRequest { param, .. } | AppError::NotFound { param, .. } => {
                param.as_deref()
            }
            _ => None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        let body = json!({
            "error": {
                "message": message,
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            AppError::Overloaded {
                retry_after_secs, ..
            }
            | AppError::Unavailable {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            AppError::Unauthorized { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
