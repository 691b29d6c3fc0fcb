//! Reading request bodies within bounds: a declared `Content-Length` over the limit is refused
//! before a byte is read, a body that grows past the limit is cut off, and one that does not
//! arrive within the body timeout gets `408`. Callers admit a request (queue slot, upload
//! slot) *before* reading its body, so a full server refuses bodies without reading them.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;

use crate::error::ApiError;

/// `413` when the request declares a body longer than `limit`; nothing is read.
pub(crate) fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    if let Some(len) = declared_length(headers) {
        if len > limit as u64 {
            return Err(ApiError::too_large(format!(
                "the request body is {len} bytes, over the limit of {limit} bytes"
            )));
        }
    }
    Ok(())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads a body of at most `limit` bytes within `timeout`: `413` beyond the limit (declared or
/// found), `408` when it is too slow, `400` if it cannot be read. The buffer is sized from
/// `Content-Length` once, so a body costs its own length in memory, not a doubling growth.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    check_declared_length(headers, limit)?;
    let capacity = declared_length(headers).map_or(0, |n| n as usize);
    let read = async move {
        let mut body = body;
        let mut out = Vec::with_capacity(capacity);
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::invalid(format!("reading the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(ApiError::too_large(format!(
                        "the request body is over the limit of {limit} bytes"
                    )));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::timeout(format!(
            "the request body did not arrive within {} s",
            timeout.as_secs_f64()
        ))
    })?
}
