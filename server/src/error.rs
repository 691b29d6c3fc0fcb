//! Errors: [`ServerError`] for starting and running the server, [`ApiError`] for one
//! request, rendered as OpenAI's JSON error object
//! `{"error": {"message", "type", "param", "code"}}`.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use concept_registry::RegistryError;
use concepts_runtime::RuntimeError;
use serde_json::json;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be opened.
    #[error("binding `{addr}`: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The image directory does not exist or cannot be resolved.
    #[error("image directory `{}`: {source}", path.display())]
    ImageDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bearer token is empty or blank, which would read as "no token" to some clients
    /// and as a valid token to others.
    #[error("the API token is empty; give a non-empty token (or none, on loopback)")]
    EmptyToken,
    /// The bearer token holds characters an `Authorization` header cannot carry.
    #[error("the API token must be visible ASCII characters without spaces")]
    InvalidToken,
    /// Listening beyond loopback without a token was not explicitly allowed.
    #[error(
        "refusing to listen on `{addr}` without a token: anyone who can reach it could use the \
         model; give --token (or CONCEPTS_API_TOKEN), listen on 127.0.0.1, or pass \
         --insecure-no-auth to accept that"
    )]
    NoTokenBeyondLoopback { addr: SocketAddr },
}

/// A request's failure: an HTTP status and an OpenAI-style error body.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    kind: &'static str,
    code: &'static str,
    param: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            kind,
            code,
            param: None,
            message,
        }
    }

    /// 400: the request is malformed or asks for something impossible.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message.into(),
        )
    }

    /// 400 about one parameter.
    pub(crate) fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..Self::invalid(message)
        }
    }

    /// 413: over a size bound.
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "too_large",
            message.into(),
        )
    }

    /// 408: the client did not send its request in time.
    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "timeout",
            message.into(),
        )
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            message.into(),
        )
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            message.into(),
        )
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_token",
            message.into(),
        )
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "forbidden",
            message.into(),
        )
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "conflict",
            message.into(),
        )
    }

    /// 422: a well-formed concept package this model cannot use.
    pub(crate) fn incompatible(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            "incompatible_concept",
            message.into(),
        )
    }

    /// 429: the queue is full.
    pub(crate) fn queue_full(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "queue_full",
            message.into(),
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            message.into(),
        )
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), message = %self.message, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), message = %self.message, "request rejected");
        }
        let mut response = (self.status, Json(self.body())).into_response();
        // These refusals leave the request body unread: close the connection rather than
        // let it wait for (and drain) a body nobody will use.
        if matches!(self.status.as_u16(), 408 | 413 | 429) {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let message = e.to_string();
        match e {
            RuntimeError::ConceptNotFound { .. } => ApiError {
                param: Some("concepts"),
                ..ApiError::not_found(message)
            },
            RuntimeError::Image(
                concepts_runtime::preprocess::PreprocessError::TooLarge { .. }
                | concepts_runtime::preprocess::PreprocessError::File(
                    concepts_fs::FsError::TooLarge { .. },
                ),
            ) => ApiError::too_large(message),
            RuntimeError::Limit { .. } => ApiError {
                code: "limit_exceeded",
                ..ApiError::invalid(message)
            },
            RuntimeError::Concept { .. } => ApiError::incompatible(message),
            RuntimeError::InvalidInput(_)
            | RuntimeError::Prompt(_)
            | RuntimeError::Image(_)
            | RuntimeError::Io { .. } => ApiError::invalid(message),
            _ => ApiError::internal(message),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::NotInstalled { .. } => ApiError::not_found(message),
            RegistryError::InvalidPackage { source, .. } => {
                ApiError::invalid(format!("{message}: {source}"))
            }
            RegistryError::NameTaken { .. } | RegistryError::IdentifierTaken { .. } => {
                ApiError::conflict(message)
            }
            RegistryError::BaseModel(_) | RegistryError::PinnedBaseModel { .. } => {
                ApiError::incompatible(message)
            }
            _ => ApiError::internal(message),
        }
    }
}
