//! The real server over loopback (127.0.0.1, a free port) with an HTTP client, on the parity
//! fixture model: OpenAI-schema chat (streaming and not) with concepts, concept changes
//! while requests run, rejected requests, the full queue and graceful shutdown. Every loop
//! is bounded and every request has a client timeout.

mod common;

use std::time::{Duration, Instant};

use common::{fingerprint, logo_data_url, package_bytes, sse_data, TestServer};
use concepts_runtime::api::{ImageInput, RuntimeConfig, Selection};
use concepts_server::{Limits, ServerConfig};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn config() -> ServerConfig {
    ServerConfig::local(0)
}

/// Installs `names` through the upload endpoint (raw body).
async fn install(server: &TestServer, names: &[&str]) {
    let fp = fingerprint();
    for (i, name) in names.iter().enumerate() {
        let (status, body) = server
            .upload(package_bytes(name, &fp, i as u64 + 1, 1.0), false)
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["name"], *name);
    }
}

/// The server's `/health` document.
async fn health(server: &TestServer) -> Value {
    server
        .client
        .get(server.at("/health"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
}

/// Parses a finished SSE body into its JSON chunks; asserts it ends with `[DONE]`.
fn chunks(text: &str) -> Vec<Value> {
    let data = sse_data(text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chat_with_two_concepts_follows_the_openai_schema() {
    let mut server = TestServer::start(config()).await;
    install(&server, &["bo"]).await;
    // The second concept goes up as multipart, as a browser form would send it.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(package_bytes("kiki", &fingerprint(), 7, 1.0))
            .file_name("kiki.ycpt"),
    );
    let resp = server
        .client
        .post(server.at("/v1/concepts"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    let request = |stream: bool, concepts: Value, text: &str| {
        json!({
            "model": "whatever-the-client-says",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": logo_data_url()}},
                ]},
            ],
            "max_tokens": 8,
            "stream": stream,
            "stream_options": {"include_usage": true},
            "concepts": concepts,
            "personal_prompts": "all",
        })
    };
    let resp = server
        .client
        .post(server.at("/v1/chat/completions"))
        .json(&request(true, json!(["bo"]), "Is <kiki> in this photo?"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let chunks = chunks(&resp.text().await.unwrap());
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["model"], "model");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["concepts"], json!(["bo", "kiki"]));
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes.len(), 1);
    assert!(["stop", "length"].contains(&finishes[0].as_str().unwrap()));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|c| c["delta"]["content"].as_str())
        .collect();
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 576, "{usage}");

    // The same request without streaming gives the same answer (greedy).
    let (status, body) = server
        .post_json(
            "/v1/chat/completions",
            &request(false, json!(["bo"]), "Is <kiki> in this photo?"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], streamed);
    assert_eq!(&body["usage"], usage);
    assert_eq!(body["concepts"], json!(["bo", "kiki"]));

    // Both personal prompts are in the prompt: without concepts it is shorter by them.
    let (_, plain) = server
        .post_json(
            "/v1/chat/completions",
            &request(false, json!([]), "Is kiki in this photo?"),
        )
        .await;
    assert_eq!(plain["concepts"], json!([]));
    let with = usage["prompt_tokens"].as_u64().unwrap();
    let without = plain["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        with >= without + 2 * (common::K as u64 + 2),
        "{with} vs {without}"
    );

    // By default only the mentioned `<kiki>` is introduced; `bo` stays active.
    let mut mentioned = request(false, json!(["bo"]), "Is <kiki> in this photo?");
    mentioned
        .as_object_mut()
        .unwrap()
        .remove("personal_prompts");
    let (status, body) = server.post_json("/v1/chat/completions", &mentioned).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["concepts"], json!(["bo", "kiki"]));
    let one = body["usage"]["prompt_tokens"].as_u64().unwrap();
    let per_prompt = common::K as u64 + 2;
    // Shorter than with both by bo's prompt, longer than the plain-text question.
    assert!(
        one + per_prompt <= with && one > without,
        "{one}: {without}..{with}"
    );
    let mut bad = mentioned;
    bad["personal_prompts"] = json!("some");
    let (status, body) = server.post_json("/v1/chat/completions", &bad).await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concept_uploads_and_deletes_do_not_disturb_requests_in_flight() {
    let mut cfg = config();
    cfg.workers = 2;
    cfg.queue_capacity = 64;
    let server = TestServer::start(cfg).await;
    install(&server, &["bo"]).await;
    let server = std::sync::Arc::new(server);

    let mut clients = Vec::new();
    for client in 0..3 {
        let server = server.clone();
        clients.push(tokio::spawn(async move {
            let mut saw_tmp = 0;
            for i in 0..4 {
                let stream = (client + i) % 2 == 0;
                let body = json!({
                    "messages": [{"role": "user", "content": "Are <bo> and <tmp> friends?"}],
                    "max_tokens": 3,
                    "stream": stream,
                });
                let resp = server
                    .client
                    .post(server.at("/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                let concepts = if stream {
                    let chunks = chunks(&resp.text().await.unwrap());
                    assert!(
                        chunks.iter().all(|c| c.get("error").is_none()),
                        "{chunks:?}"
                    );
                    chunks[0]["concepts"].clone()
                } else {
                    resp.json::<Value>().await.unwrap()["concepts"].clone()
                };
                let names: Vec<&str> = concepts
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                match names[..] {
                    ["bo"] => {}
                    ["bo", "tmp"] => saw_tmp += 1,
                    _ => panic!("{names:?}"),
                }
            }
            saw_tmp
        }));
    }
    // Meanwhile: install, replace and delete `tmp`, six rounds.
    let fp = fingerprint();
    for round in 0..6u64 {
        let (status, body) = server
            .upload(package_bytes("tmp", &fp, 100 + round, 2.0), true)
            .await;
        assert_eq!(status, 201, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        if round % 2 == 1 {
            let resp = server
                .client
                .delete(server.at("/v1/concepts/tmp"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
    }
    let mut saw_tmp = 0;
    for c in clients {
        saw_tmp += c.await.unwrap();
    }
    println!("{saw_tmp}/12 requests saw `tmp`");
    assert!(server.registry.verify().unwrap().is_clean());
}

/// Asserts an OpenAI-style JSON error with this status.
async fn expect_error(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_rejected_with_json_errors() {
    let mut cfg = config();
    cfg.limits = Limits {
        max_body_bytes: 64 << 10,
        max_upload_bytes: 64 << 10,
        max_image_bytes: 2000,
        max_tokens: 64,
        default_max_tokens: 8,
        max_messages: 8,
    };
    let mut server = TestServer::start(cfg).await;
    install(&server, &["bo"]).await;
    let chat = |body: Value| {
        server
            .client
            .post(server.at("/v1/chat/completions"))
            .json(&body)
            .send()
    };
    let user = |content: Value| json!({"messages": [{"role": "user", "content": content}]});

    let raw = server
        .client
        .post(server.at("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let body = expect_error(raw, 400).await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    expect_error(chat(json!({"messages": "hi"})).await.unwrap(), 400).await;
    expect_error(chat(json!({"messages": []})).await.unwrap(), 400).await;
    let body = expect_error(
        chat(json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("last message"));
    expect_error(
        chat(json!({"messages": [{"role": "tool", "content": "x"}]}))
            .await
            .unwrap(),
        400,
    )
    .await;
    let mut many = user(json!("hi"));
    many["n"] = json!(2);
    expect_error(chat(many).await.unwrap(), 400).await;
    let mut unknown = user(json!("hi"));
    unknown["concepts"] = json!(["nobody"]);
    let body = expect_error(chat(unknown).await.unwrap(), 404).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`nobody`"));
    let mut long = user(json!("hi"));
    long["max_tokens"] = json!(100_000);
    let body = expect_error(chat(long).await.unwrap(), 400).await;
    assert_eq!(body["error"]["param"], "max_tokens");
    let body = expect_error(
        chat(user(json!("word ".repeat(20_000)))).await.unwrap(),
        413,
    )
    .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
    let prompt = user(json!("hello ".repeat(3000)));
    let body = expect_error(chat(prompt).await.unwrap(), 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt tokens"),
        "{body}"
    );

    let image = |url: &str| {
        user(
            json!([{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": url}}]),
        )
    };
    // logo.png is 3558 bytes, over this server's 2000.
    expect_error(chat(image(&logo_data_url())).await.unwrap(), 413).await;
    expect_error(
        chat(image("https://example.invalid/a.png")).await.unwrap(),
        400,
    )
    .await;
    expect_error(chat(image("/etc/passwd")).await.unwrap(), 403).await;
    expect_error(chat(image("data:image/png;base64,@@@")).await.unwrap(), 400).await;
    let body = expect_error(
        chat(image("data:image/png;base64,aGVsbG8gd29ybGQ="))
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image 1"),
        "{body}"
    );

    // Concept endpoints.
    let (status, body) = server.upload(b"not a package".to_vec(), false).await;
    assert_eq!(status, 400, "{body}");
    let mut other = fingerprint();
    other.lm_head_sha256 = "e".repeat(64);
    let (status, body) = server
        .upload(package_bytes("alien", &other, 1, 1.0), false)
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("base model"));
    let (status, body) = server
        .upload(package_bytes("bo", &fingerprint(), 99, 1.0), false)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = server.upload(vec![0u8; 100 << 10], false).await;
    assert_eq!(status, 413);
    let resp = server
        .client
        .delete(server.at("/v1/concepts/nobody"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404).await;
    let resp = server
        .client
        .get(server.at("/v1/nothing"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404).await;
    let resp = server
        .client
        .get(server.at("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 405).await;
    let resp = server
        .client
        .post(server.at("/v1/recognise"))
        .body("[]")
        .send()
        .await
        .unwrap();
    expect_error(resp, 400).await;

    // After all that the server still answers.
    let (status, body) = server
        .post_json("/v1/chat/completions", &user(json!("hi")))
        .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_drains_when_a_client_leaves() {
    let mut cfg = config();
    cfg.workers = 1;
    cfg.queue_capacity = 1;
    cfg.limits.max_tokens = 1800;
    let mut server = TestServer::start_unbatched(cfg).await;
    let health = || health(&server);

    // A: a long stream that holds the only worker; read its first chunk, then stop reading.
    let a_body = common::hold_a_worker(&server).await;
    assert_eq!(health().await["running"], 1);

    // B waits in the queue.
    let b = {
        let client = server.client.clone();
        let url = server.at("/v1/chat/completions");
        tokio::spawn(async move {
            let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
            let resp = client.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        })
    };
    let start = Instant::now();
    while health().await["queued"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "B never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // C finds the queue full.
    let c = server
        .client
        .post(server.at("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    let body = expect_error(c, 429).await;
    assert_eq!(body["error"]["code"], "queue_full");
    let scan = server
        .client
        .post(server.at("/v1/recognise"))
        .json(&json!({"image": logo_data_url()}))
        .send()
        .await
        .unwrap();
    expect_error(scan, 429).await;

    // A's client goes away: its generation is cancelled and B runs.
    drop(a_body);
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), b)
        .await
        .expect("B finished")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let start = Instant::now();
    loop {
        let h = health().await;
        if h["running"] == 0 && h["queued"] == 0 && h["running_generations"] == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{h}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}

/// In the decode batch a running chat holds a chat slot, not a worker: with one row, one
/// worker and one queue place, a second chat waits for the row while holding the worker, a
/// third waits in the queue, a fourth gets 429; both waiting chats finish once the first
/// client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_decode_batch_backs_up_into_the_worker_queue() {
    let mut cfg = config();
    cfg.workers = 1;
    cfg.queue_capacity = 1;
    cfg.limits.max_tokens = 1800;
    let one_row = RuntimeConfig {
        decode_batch: 1,
        ..RuntimeConfig::recommended()
    };
    let mut server = TestServer::start_with(cfg, one_row).await;
    let health = || health(&server);
    let wait_for = |key: &'static str, value: u64| {
        let health = &health;
        async move {
            let start = Instant::now();
            while health().await[key] != value {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{key} != {value}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let short_chat = || {
        let client = server.client.clone();
        let url = server.at("/v1/chat/completions");
        tokio::spawn(async move {
            let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
            let resp = client.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        })
    };

    // A decodes in the only row and has handed its worker on.
    let a_body = common::hold_a_worker(&server).await;
    let h = health().await;
    assert_eq!(
        (h["running"].as_u64(), h["running_generations"].as_u64()),
        (Some(0), Some(1))
    );
    // B takes the worker and waits for the row; C waits for the worker; D is refused.
    let b = short_chat();
    wait_for("running", 1).await;
    let c = short_chat();
    wait_for("queued", 1).await;
    let d = server
        .client
        .post(server.at("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    expect_error(d, 429).await;

    drop(a_body);
    for waiting in [b, c] {
        let (status, body) = tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("the waiting chat finished")
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    wait_for("running_generations", 0).await;
    wait_for("running", 0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_stream_in_flight() {
    let mut server = TestServer::start(config()).await;
    let body = json!({
        "messages": [{"role": "user", "content": "Count."}],
        "max_tokens": 200,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let resp = server
        .client
        .post(server.at("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    server.begin_shutdown();
    while let Some(piece) = stream.next().await {
        text.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }
    let chunks = chunks(&text);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 200, "{usage}");
    server.join().await;
    // Nothing listens any more.
    let after = server.client.get(server.at("/health")).send().await;
    assert!(after.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_local_images_and_recognise() {
    let mut cfg = config();
    cfg.image_dir = Some(common::fixture().join("images"));
    let mut server = TestServer::start(cfg).await;
    install(&server, &["bo", "kiki", "tom"]).await;

    let models: Value = server
        .client
        .get(server.at("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "model");
    let health: Value = server
        .client
        .get(server.at("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let list: Value = server
        .client
        .get(server.at("/v1/concepts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bo", "kiki", "tom"]);
    let one: Value = server
        .client
        .get(server.at("/v1/concepts/<kiki>"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["name"], "kiki");

    // A file inside the image directory, by absolute path and relative name.
    let logo = common::fixture().join("images/logo.png");
    for url in [logo.to_str().unwrap().to_string(), "logo.png".to_string()] {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}], "max_tokens": 2});
        let (status, body) = server.post_json("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 576);
    }
    let outside = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "../model/config.json"}},
    ]}]});
    let resp = server
        .client
        .post(server.at("/v1/chat/completions"))
        .json(&outside)
        .send()
        .await
        .unwrap();
    expect_error(resp, 403).await;

    // The scan endpoint gives what the runtime's scan gives.
    let (status, body) = server
        .post_json("/v1/recognise", &json!({"image": logo_data_url()}))
        .await;
    assert_eq!(status, 200, "{body}");
    let direct = server
        .runtime
        .recognise_all(ImageInput::File(logo), Selection::All)
        .await
        .unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (got, want) in data.iter().zip(&direct) {
        assert_eq!(got["name"], want.concept.name);
        // Exact: the dev-dependency turns on serde_json's `float_roundtrip`.
        assert_eq!(got["p_yes"].as_f64().unwrap(), want.p_yes);
        assert_eq!(got["present"], want.present());
    }
    let (status, body) = server
        .post_json(
            "/v1/recognise",
            &json!({"image": "logo.png", "concepts": ["tom"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["name"], "tom");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_concept_changes() {
    let mut cfg = config();
    cfg.token = Some("s3cret".into());
    let mut server = TestServer::start(cfg).await;
    let bytes = package_bytes("bo", &fingerprint(), 1, 1.0);
    let post = |auth: Option<&str>| {
        let mut req = server
            .client
            .post(server.at("/v1/concepts"))
            .body(bytes.clone());
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.send()
    };
    let body = expect_error(post(None).await.unwrap(), 401).await;
    assert_eq!(body["error"]["type"], "authentication_error");
    expect_error(post(Some("Bearer wrong")).await.unwrap(), 401).await;
    assert_eq!(
        post(Some("Bearer s3cret")).await.unwrap().status().as_u16(),
        201
    );
    let resp = server
        .client
        .delete(server.at("/v1/concepts/bo"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401).await;
    // Reading and chatting need no token.
    let list = server
        .client
        .get(server.at("/v1/concepts"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 200);
    let resp = server
        .client
        .delete(server.at("/v1/concepts/bo"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    server.stop().await;
}
