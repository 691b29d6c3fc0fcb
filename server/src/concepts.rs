//! The concept endpoints: list, show, upload (raw `.ycpt` body or multipart), delete, and
//! recognition (the concept scan).

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use concept_format::ConceptPackage;
use concept_registry::{Entry, InstallOptions, InstallOutcome};
use concepts_runtime::api::{ConceptScore, Selection};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::{check_declared_length, read_body};
use crate::error::ApiError;
use crate::{images, AppState, SharedState};

fn entry_json(e: &Entry) -> Value {
    json!({
        "object": "concept",
        "name": e.name,
        "identifier": e.identifier,
        "display_name": e.summary.display_name,
        "category": e.summary.category,
        "k": e.summary.k,
        "sha256": e.sha256.as_hex(),
        "size": e.size,
    })
}

/// Runs a blocking registry call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("registry task failed: {e}")))?
}

pub(crate) async fn list(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.clone();
    let entries = blocking(move || Ok(registry.list()?)).await?;
    Ok(Json(json!({
        "object": "list",
        "data": entries.iter().map(entry_json).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn show(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.clone();
    let entry = blocking(move || Ok(registry.get(&name)?)).await?;
    Ok(Json(entry_json(&entry)))
}

/// Mutating endpoints need the token when one is set, and are off on a non-loopback bind
/// without one.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    check_token(
        state.config.token.as_deref(),
        state.config.addr.ip().is_loopback(),
        header,
    )
}

/// The rule of [`authorize`] on its inputs: the configured token, whether the server is
/// bound to loopback, and the `Authorization` header.
fn check_token(token: Option<&str>, loopback: bool, header: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else {
        if loopback {
            return Ok(());
        }
        return Err(ApiError::forbidden(
            "concept changes are disabled: the server listens beyond loopback without a token",
        ));
    };
    let given = header.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "this endpoint needs `Authorization: Bearer <token>`",
        ))
    }
}

/// Compares without an early exit, so timing does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    #[serde(default)]
    replace: bool,
}

pub(crate) async fn upload(
    State(state): State<SharedState>,
    Query(query): Query<UploadQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(&state, request.headers())?;
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (parts, body) = request.into_parts();
    let limit = state.config.limits.max_upload_bytes;
    check_declared_length(&parts.headers, limit)?;
    let _slot = state.admission.admit_upload()?;
    let bytes = read_body(&parts.headers, body, limit, state.config.body_timeout).await?;
    let bytes = if is_multipart {
        let request = Request::from_parts(parts, Body::from(bytes));
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::invalid(format!("multipart body: {e}")))?;
        let mut file = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::invalid(format!("multipart body: {e}")))?
        {
            if field.file_name().is_some() || field.name() == Some("file") {
                let data = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::invalid(format!("multipart body: {e}")))?;
                file = Some(data);
                break;
            }
        }
        file.ok_or_else(|| {
            ApiError::invalid("the multipart body has no file field (name it `file`)")
        })?
    } else {
        bytes
    };
    let registry = state.registry.clone();
    let runtime = state.runtime.clone();
    let options = InstallOptions {
        replace: query.replace,
        force: false,
    };
    let report = blocking(move || {
        // Parsed and checked against the served model before the registry sees it.
        let package = ConceptPackage::parse(&bytes)
            .map_err(|e| ApiError::invalid(format!("not a valid concept package: {e}")))?;
        runtime.check_package(&package)?;
        Ok(registry.install_bytes(&bytes, &options)?)
    })
    .await?;
    let status = match report.outcome {
        InstallOutcome::Installed => StatusCode::CREATED,
        InstallOutcome::AlreadyInstalled => StatusCode::OK,
    };
    let mut body = entry_json(&report.entry);
    body["replaced"] = json!(report
        .replaced
        .iter()
        .map(|e| e.name.as_str())
        .collect::<Vec<_>>());
    Ok((status, Json(body)).into_response())
}

pub(crate) async fn remove(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let registry = state.registry.clone();
    let entry = blocking(move || Ok(registry.remove(&name)?)).await?;
    let mut body = entry_json(&entry);
    body["deleted"] = json!(true);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
struct RecogniseRequest {
    /// A data URL or a path inside the image directory.
    image: String,
    /// Names or identifiers; all installed concepts when absent.
    #[serde(default)]
    concepts: Option<Vec<String>>,
}

pub(crate) async fn recognise(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let limit = state.config.limits.max_body_bytes;
    check_declared_length(&headers, limit)?;
    let _permit = state.admission.admit().await?;
    let bytes = read_body(&headers, body, limit, state.config.body_timeout).await?;
    let request: RecogniseRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("invalid recognise request: {e}")))?;
    let image = images::resolve(&state, &request.image, 1)?;
    let selection = match request.concepts {
        Some(names) => Selection::Named(names),
        None => Selection::All,
    };
    let scores = state.runtime.recognise_all(image, selection).await?;
    let data: Vec<Value> = scores.iter().map(score_json).collect();
    Ok(Json(json!({
        "object": "list",
        "model": state.runtime.model_id(),
        "data": data,
        "present": scores
            .iter()
            .filter(|s| s.present())
            .map(|s| s.concept.name.as_str())
            .collect::<Vec<_>>(),
    })))
}

/// A recognition score as the server's `/v1/recognise`, `concepts scan --json` and
/// `concepts run --json` print it: `{name, identifier, p_yes, p_no, present}`.
pub fn score_json(score: &ConceptScore) -> Value {
    json!({
        "name": score.concept.name,
        "identifier": score.concept.identifier,
        "p_yes": score.p_yes,
        "p_no": score.p_no,
        "present": score.present(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concept_changes_need_the_token_and_beyond_loopback_a_token_at_all() {
        let status = |token, loopback, header| {
            check_token(token, loopback, header).map_or_else(|e| e.status.as_u16(), |()| 200)
        };
        assert_eq!(status(None, true, None), 200);
        assert_eq!(status(None, false, None), 403);
        assert_eq!(status(None, false, Some("Bearer x")), 403);
        for loopback in [true, false] {
            assert_eq!(status(Some("s3cret"), loopback, None), 401);
            assert_eq!(status(Some("s3cret"), loopback, Some("Bearer s3cre")), 401);
            assert_eq!(status(Some("s3cret"), loopback, Some("s3cret")), 401);
            assert_eq!(status(Some("s3cret"), loopback, Some("Bearer s3cret")), 200);
        }
    }
}
