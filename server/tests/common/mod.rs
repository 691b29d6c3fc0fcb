//! Shared by the HTTP tests and the serving benchmark: concept packages for the parity
//! fixture model (random weights) and a real server on a loopback port.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use concept_format::ModelFingerprint;
use concept_registry::Registry;
use concepts_runtime::api::{Runtime, RuntimeConfig};
use concepts_server::{RegistrySource, Server, ServerConfig, ServerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Latent tokens per test concept.
pub const K: usize = 4;

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures/parity")
}

pub fn model_dir() -> PathBuf {
    fixture().join("model")
}

pub fn fingerprint() -> ModelFingerprint {
    concepts_runtime::fingerprint(&model_dir()).unwrap()
}

/// The `.ycpt` bytes of a concept `<name>` for `fp` with seeded random tensors.
pub fn package_bytes(name: &str, fp: &ModelFingerprint, seed: u64, scale: f32) -> Vec<u8> {
    concepts_runtime::testing::random_concept_package(name, fp, K, seed, scale)
        .unwrap()
        .to_bytes()
}

/// A file as a `data:` URL.
pub fn data_url(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub fn logo_data_url() -> String {
    data_url(&fixture().join("images/logo.png"))
}

/// A running server over a fresh registry.
pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    pub runtime: Runtime,
    pub registry: Registry,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    _home: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` with `config` (its address is replaced).
    pub async fn start(config: ServerConfig) -> TestServer {
        TestServer::start_with(config, RuntimeConfig::recommended()).await
    }

    /// [`TestServer::start`] with chats decoded alone, each in its worker slot (no decode
    /// batch): a running chat holds a worker, as [`hold_a_worker`] needs.
    pub async fn start_unbatched(config: ServerConfig) -> TestServer {
        let runtime_config = RuntimeConfig {
            decode_batch: 0,
            ..RuntimeConfig::recommended()
        };
        TestServer::start_with(config, runtime_config).await
    }

    /// [`TestServer::start`] with a runtime configured as given.
    pub async fn start_with(mut config: ServerConfig, runtime_config: RuntimeConfig) -> TestServer {
        let home = tempfile::tempdir().unwrap();
        let registry = Registry::open(home.path()).unwrap();
        let source = Arc::new(RegistrySource::new(registry.clone()));
        let runtime = tokio::task::spawn_blocking(move || {
            Runtime::load(&model_dir(), source, runtime_config).unwrap()
        })
        .await
        .unwrap();
        config.addr = ([127, 0, 0, 1], 0).into();
        let server = Server::bind(runtime.clone(), registry.clone(), config)
            .await
            .unwrap();
        let url = format!("http://{}", server.local_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            url,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .unwrap(),
            runtime,
            registry,
            shutdown: Some(tx),
            task: Some(task),
            _home: home,
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Uploads a package as a raw body; returns the status and JSON body.
    pub async fn upload(&self, bytes: Vec<u8>, replace: bool) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(self.at(&format!("/v1/concepts?replace={replace}")))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// POSTs JSON; returns the status and JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(self.at(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Asks the server to stop without waiting; [`TestServer::join`] waits.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Starts a long streamed generation (1800 tokens, `ignore_eos`) and reads its first chunk,
/// so it holds a worker (on a [`TestServer::start_unbatched`] server; in the decode batch, a
/// chat slot) until the returned body is dropped (which cancels it). The server needs
/// `limits.max_tokens` ≥ 1800.
pub async fn hold_a_worker(
    server: &TestServer,
) -> impl futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> {
    use futures_util::StreamExt;
    let long = serde_json::json!({
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 1800,
        "ignore_eos": true,
        "stream": true,
    });
    let resp = server
        .client
        .post(server.at("/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = Box::pin(resp.bytes_stream());
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    body
}

/// The `data:` payloads of a server-sent event stream, in order.
pub fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect()
}
