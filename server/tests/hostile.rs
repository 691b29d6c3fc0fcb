//! Hostile clients against the real server on loopback: each test is named after the attack
//! it guards against, and checks a clear refusal (status and JSON error) and that the server
//! still answers afterwards. Raw TCP where an HTTP client would be too polite (stalled
//! headers, bodies never sent). Every wait is bounded.

mod common;

use std::io::Cursor;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::TestServer;
use concepts_server::{ServerConfig, ServerError};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(server: &TestServer) -> SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// Sends `head` (and no more) on a fresh connection; returns the stream.
async fn send_raw(server: &TestServer, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr(server)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The status code of the response on `stream`, or `None` when the server closed it first.
async fn read_status(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, stream.read(&mut buf))
        .await
        .expect("the server answered or closed in time")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

async fn health_ok(server: &TestServer) {
    let resp = server
        .client
        .get(server.at("/health"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("/health answers");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

fn png_data_url(width: u32, height: u32) -> String {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([10, 200, 30]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(out.into_inner())
    )
}

#[test]
fn an_empty_or_blank_token_is_refused_at_start_up() {
    for token in ["", "   ", "\t"] {
        let mut cfg = ServerConfig::local(0);
        cfg.token = Some(token.into());
        assert!(
            matches!(cfg.check(), Err(ServerError::EmptyToken)),
            "{token:?}"
        );
    }
    let mut cfg = ServerConfig::local(0);
    cfg.token = Some("two words".into());
    assert!(matches!(cfg.check(), Err(ServerError::InvalidToken)));
    cfg.token = Some("s3cret-token".into());
    assert!(cfg.check().is_ok());
}

#[test]
fn listening_beyond_loopback_without_a_token_is_refused_unless_explicitly_allowed() {
    let mut cfg = ServerConfig::local(0);
    cfg.addr = ([0, 0, 0, 0], 0).into();
    let err = cfg.check().unwrap_err();
    assert!(matches!(err, ServerError::NoTokenBeyondLoopback { .. }));
    assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
    cfg.allow_no_auth = true;
    assert!(cfg.check().is_ok());
    cfg.allow_no_auth = false;
    cfg.token = Some("s3cret".into());
    assert!(cfg.check().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thin_image_gets_413_and_the_server_lives() {
    let mut server = TestServer::start(ServerConfig::local(0)).await;
    // 1 × 1,000,000 pixels in a few KB: once a 6.9 GB allocation and an abort.
    for url in [png_data_url(1, 1_000_000), png_data_url(1, 120_000)] {
        let body = json!({
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ]}],
            "max_tokens": 2,
        });
        let (status, body) = server.post_json("/v1/chat/completions", &body).await;
        assert_eq!(status, 413, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("side after resizing"), "{message}");
        let (status, _) = server
            .post_json("/v1/recognise", &json!({"image": url}))
            .await;
        assert_eq!(status, 413);
    }
    health_ok(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
    let mut server = TestServer::start(ServerConfig::local(0)).await;
    for path in ["/v1/chat/completions", "/v1/recognise", "/v1/concepts"] {
        // 1 GB declared, nothing sent: the answer must come without waiting for the body.
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 1000000000\r\n\r\n"
        );
        let mut stream = send_raw(&server, &head).await;
        let status = read_status(&mut stream, Duration::from_secs(10)).await;
        assert_eq!(status, Some(413), "{path}");
    }
    health_ok(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_a_body_before_reading_it() {
    let mut cfg = ServerConfig::local(0);
    cfg.workers = 1;
    cfg.queue_capacity = 0;
    cfg.limits.max_tokens = 1800;
    let mut server = TestServer::start_unbatched(cfg).await;
    // A long stream holds the only worker.
    let a_body = common::hold_a_worker(&server).await;
    // 15 MiB declared, not one byte of it sent: 429 at once.
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\
                content-type: application/json\r\ncontent-length: 15728640\r\n\r\n";
    let mut stream = send_raw(&server, head).await;
    assert_eq!(
        read_status(&mut stream, Duration::from_secs(10)).await,
        Some(429)
    );
    drop(a_body);
    health_ok(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_are_dropped_after_the_header_timeout() {
    let mut cfg = ServerConfig::local(0);
    cfg.header_timeout = Duration::from_millis(300);
    let mut server = TestServer::start(cfg).await;
    let start = Instant::now();
    let mut stream = send_raw(&server, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await;
    // hyper closes the connection (it may answer 408 first); either way it is gone.
    let mut buf = vec![0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the stalled connection was closed in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
    }
    assert!(start.elapsed() >= Duration::from_millis(250));
    health_ok(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408() {
    let mut cfg = ServerConfig::local(0);
    cfg.body_timeout = Duration::from_millis(300);
    let mut server = TestServer::start(cfg).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\
                content-type: application/json\r\ncontent-length: 100\r\n\r\n{";
    let mut stream = send_raw(&server, head).await;
    assert_eq!(
        read_status(&mut stream, Duration::from_secs(10)).await,
        Some(408)
    );
    health_ok(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_beyond_the_cap_cannot_starve_health() {
    let mut cfg = ServerConfig::local(0);
    cfg.max_connections = 8;
    cfg.header_timeout = Duration::from_millis(500);
    cfg.body_timeout = Duration::from_millis(500);
    let mut server = TestServer::start(cfg).await;
    // 40 connections that send headers and `{` and then nothing, and 40 that send half a
    // request line: five times the cap.
    let mut stalled = Vec::new();
    for i in 0..80 {
        let head = if i % 2 == 0 {
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"
        } else {
            "POST /v1/chat/comp"
        };
        stalled.push(send_raw(&server, head).await);
    }
    let start = Instant::now();
    health_ok(&server).await;
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    drop(stalled);
    server.stop().await;
}
