//! `POST /v1/chat/completions` in OpenAI's schema, so OpenAI client libraries work
//! unchanged.
//!
//! Request: `messages` (`role` + `content` as a string or an array of `{type: "text"}` /
//! `{type: "image_url", image_url: {url}}` parts), `max_tokens` (or
//! `max_completion_tokens`), `temperature`, `top_p`, `seed`, `stream`,
//! `stream_options.include_usage`. Extensions: `concepts` (names or identifiers to
//! activate, besides the identifiers found in the text) and `ignore_eos`. Unknown fields
//! are ignored, as OpenAI-compatible servers do; `n` must be 1.
//!
//! Response: `chat.completion` with `choices[0].message.content`, `finish_reason` and
//! `usage`, or with `stream: true` server-sent events of `chat.completion.chunk` objects
//! (`choices[0].delta.content`) ending in `data: [DONE]`. Both carry the extension
//! `concepts`: the concepts that were active.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use concepts_runtime::api::{
    ActiveConcept, ChatEvent, ChatMessage, ChatRequest, ChatStream, ChatSummary, FinishReason,
    PersonalPrompts, Role,
};
use concepts_runtime::generate::Sampling;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::{check_declared_length, read_body};
use crate::error::ApiError;
use crate::queue::Permit;
use crate::{images, AppState, SharedState};

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    /// Extension: concepts to activate by name or identifier.
    #[serde(default)]
    concepts: Vec<String>,
    /// Extension: `"mentioned"` (default) introduces only the active concepts the messages
    /// mention with their personal prompt, `"all"` every active one.
    #[serde(default)]
    personal_prompts: PersonalPrompts,
    /// Extension (as in vLLM): generate until `max_tokens` even past end-of-sequence.
    #[serde(default)]
    ignore_eos: bool,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
}

pub(crate) async fn chat_completions(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.config.limits.max_body_bytes;
    // Refused unread: a body over the limit, or any body when the queue is full.
    check_declared_length(&headers, limit)?;
    let permit = state.admission.admit().await?;
    let bytes = read_body(&headers, body, limit, state.config.body_timeout).await?;
    let request: CompletionRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("invalid chat completion request: {e}")))?;
    let stream = request.stream;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if let Some(model) = &request.model {
        tracing::debug!(requested = %model, served = %state.runtime.model_id(), "chat request");
    }
    // Not kept while the answer is generated.
    drop(bytes);
    let chat = to_chat_request(&state, request)?;
    let chat_slot = state.admission.admit_chat().await?;
    let chat_stream = state.runtime.chat(chat).await?;
    // In the decode batch the chat slot bounds the generation; the worker goes on to the
    // next request's body.
    let permit = chat_slot.unwrap_or(permit);
    let id = format!(
        "chatcmpl-{:016x}",
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let meta = Meta {
        id,
        created: unix_now(),
        model: state.runtime.model_id().to_string(),
        concepts: chat_stream.concepts().to_vec(),
    };
    if stream {
        Ok(sse(chat_stream, meta, include_usage, permit).into_response())
    } else {
        let summary = chat_stream.collect().await?;
        drop(permit);
        Ok(Json(completion(&meta, &summary)).into_response())
    }
}

/// Checks the request against the server's bounds and turns it into a runtime request.
fn to_chat_request(state: &AppState, request: CompletionRequest) -> Result<ChatRequest, ApiError> {
    let limits = &state.config.limits;
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "`messages` is empty"));
    }
    if request.messages.len() > limits.max_messages {
        return Err(ApiError::invalid_param(
            "messages",
            format!(
                "{} messages, the limit is {}",
                request.messages.len(),
                limits.max_messages
            ),
        ));
    }
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(limits.default_max_tokens as u64);
    if max_tokens > limits.max_tokens as u64 {
        return Err(ApiError::invalid_param(
            "max_tokens",
            format!(
                "max_tokens is {max_tokens}, the limit is {}",
                limits.max_tokens
            ),
        ));
    }
    let sampling = Sampling::from_temperature(
        request.temperature.unwrap_or(0.0),
        request.top_p.unwrap_or(1.0),
        request.seed.unwrap_or(0),
    )
    .map_err(|e| ApiError::invalid(e.to_string()))?;
    let mut image_count = 0;
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in request.messages {
        let role = match message.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("unsupported message role `{other}`"),
                ))
            }
        };
        let mut text = String::new();
        let mut images = Vec::new();
        match message.content {
            None => {}
            Some(Content::Text(t)) => text = t,
            Some(Content::Parts(parts)) => {
                for part in parts {
                    match part {
                        Part::Text { text: t } => {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(&t);
                        }
                        Part::ImageUrl { image_url } => {
                            image_count += 1;
                            images.push(images::resolve(state, &image_url.url, image_count)?);
                        }
                    }
                }
            }
        }
        messages.push(ChatMessage { role, text, images });
    }
    Ok(ChatRequest {
        concepts: request.concepts,
        personal_prompts: request.personal_prompts,
        sampling,
        stop_at_eos: !request.ignore_eos,
        ..ChatRequest::new(messages, max_tokens as usize)
    })
}

/// What every response object of one completion repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    concepts: Vec<ActiveConcept>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(summary: &ChatSummary) -> Value {
    json!({
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "total_tokens": summary.prompt_tokens + summary.completion_tokens,
    })
}

fn concept_names(meta: &Meta) -> Vec<&str> {
    meta.concepts.iter().map(|c| c.name.as_str()).collect()
}

fn completion(meta: &Meta, summary: &ChatSummary) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": summary.text},
            "logprobs": null,
            "finish_reason": finish_reason(summary.finish),
        }],
        "usage": usage(summary),
        "concepts": concept_names(meta),
    })
}

fn chunk(meta: &Meta, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish,
        }],
    })
}

/// Where an SSE response is.
enum Phase {
    Start,
    Streaming,
    Done,
}

struct SseState {
    stream: ChatStream,
    meta: Meta,
    include_usage: bool,
    phase: Phase,
    pending: Vec<Event>,
    /// The worker slot, held until the stream ends or the client goes away.
    _permit: Permit,
}

fn event(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

fn sse(
    stream: ChatStream,
    meta: Meta,
    include_usage: bool,
    permit: Permit,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let state = SseState {
        stream,
        meta,
        include_usage,
        phase: Phase::Start,
        pending: Vec::new(),
        _permit: permit,
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if !s.pending.is_empty() {
                let next = s.pending.remove(0);
                return Some((Ok(next), s));
            }
            match s.phase {
                Phase::Done => return None,
                Phase::Start => {
                    s.phase = Phase::Streaming;
                    let mut first =
                        chunk(&s.meta, json!({"role": "assistant", "content": ""}), None);
                    first["concepts"] = json!(concept_names(&s.meta));
                    s.pending.push(event(&first));
                }
                Phase::Streaming => match s.stream.next().await {
                    Some(Ok(ChatEvent::Text(text))) => {
                        s.pending
                            .push(event(&chunk(&s.meta, json!({"content": text}), None)));
                    }
                    Some(Ok(ChatEvent::Done(summary))) => {
                        s.phase = Phase::Done;
                        let reason = finish_reason(summary.finish);
                        s.pending
                            .push(event(&chunk(&s.meta, json!({}), Some(reason))));
                        if s.include_usage {
                            let mut last = chunk(&s.meta, json!({}), None);
                            last["choices"] = json!([]);
                            last["usage"] = usage(&summary);
                            s.pending.push(event(&last));
                        }
                        s.pending.push(Event::default().data("[DONE]"));
                    }
                    Some(Err(e)) => {
                        s.phase = Phase::Done;
                        s.pending.push(event(&ApiError::from(e).body()));
                        s.pending.push(Event::default().data("[DONE]"));
                    }
                    None => {
                        s.phase = Phase::Done;
                        s.pending.push(event(
                            &ApiError::internal("generation ended without a result").body(),
                        ));
                        s.pending.push(Event::default().data("[DONE]"));
                    }
                },
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
