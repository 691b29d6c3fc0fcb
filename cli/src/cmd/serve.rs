//! `concepts serve [--model DIR] [--host ADDR] [--port N] [--token TOKEN] [--insecure-no-auth]
//! [--image-dir DIR] [--workers N] [--batch N] [--queue N] [--max-connections N]
//! [--max-tokens N] [--max-resident-mb N] [--concepts-from oci://REPO]`
//!
//! The command line `concepts serve [--model DIR] [--host ADDR] [--port N]` is a contract:
//! outside checks run it. Without `--model` the embedded default base model is served
//! (`$CONCEPTS_DEFAULT_MODEL` overrides its location). The server reads concepts from the
//! registry (`--home` / `$CONCEPTS_HOME`) and runs until Ctrl-C or SIGTERM, then finishes
//! the requests in flight. With `--concepts-from oci://REPO`, a request that names a concept
//! the registry lacks pulls `REPO:NAME` into it first (docs/scaling.md): any number of such
//! servers behind a load balancer serve the same concepts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use concepts_oci::RepositoryRef;
use concepts_runtime::api::{Runtime, RuntimeConfig};
use concepts_server::{RegistrySource, RemoteRepository, Server, ServerConfig};

use crate::ctx::{oci_client, Ctx};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// llava-hf model directory [default: $CONCEPTS_DEFAULT_MODEL, else the embedded toy model]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Address to listen on; beyond loopback a --token is required (or --insecure-no-auth)
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one)
    #[arg(long, value_name = "N", default_value_t = 8080)]
    pub port: u16,
    /// Bearer token required to upload or delete concepts
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CONCEPTS_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Listen beyond loopback without a token: chat and recognition are open to anyone who
    /// can reach the port (concept upload and delete stay disabled)
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Directory whose images requests may name by path (otherwise only data URLs)
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// Inference requests run at once (a chat in the decode batch needs a worker only
    /// while its body is read and its prompt prepared)
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub workers: usize,
    /// Chats decoded together in one forward pass, each with its own concepts (continuous
    /// batching); 0 decodes each chat alone in its worker
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub batch: usize,
    /// Inference requests that may wait for a worker; more get 429
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub queue: usize,
    /// Open connections at most; more wait until one closes
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_connections: usize,
    /// Most tokens a request may generate
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_tokens: usize,
    /// Memory for concepts kept loaded between requests, in MiB
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub max_resident_mb: usize,
    /// An OCI repository (`oci://HOST[:PORT]/REPOSITORY`) whose tags are concept names: a
    /// request naming a concept this registry lacks pulls it from there first
    #[arg(long, value_name = "oci://REPO")]
    pub concepts_from: Option<String>,
    #[command(flatten)]
    pub compute: crate::ctx::ComputeArgs,
}

pub fn run(args: ServeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut config = ServerConfig::local(args.port);
    config.addr = SocketAddr::new(args.host, args.port);
    config.token = args.token;
    config.allow_no_auth = args.insecure_no_auth;
    config.image_dir = args.image_dir;
    config.workers = args.workers.max(1);
    config.queue_capacity = args.queue;
    config.max_connections = args.max_connections.max(1);
    config.limits.max_tokens = args.max_tokens;
    config.limits.default_max_tokens = config.limits.default_max_tokens.min(args.max_tokens);
    // Before the model loads: a bad token or an open bind is refused at once.
    config.check()?;
    let remote = args
        .concepts_from
        .as_deref()
        .map(|repo| -> anyhow::Result<RemoteRepository> {
            let text = repo.strip_prefix(concepts_oci::SCHEME).with_context(|| {
                format!("--concepts-from `{repo}`: expected oci://HOST[:PORT]/REPOSITORY")
            })?;
            let remote = RemoteRepository::new(RepositoryRef::parse(text)?, oci_client()?);
            remote
                .check()
                .with_context(|| format!("--concepts-from {repo}"))?;
            Ok(remote)
        })
        .transpose()?;
    let model = crate::ctx::model_dir(args.model.as_deref(), ctx)?;
    let registry = ctx.registry()?;
    let mut runtime_config = RuntimeConfig::recommended();
    runtime_config.max_resident_bytes = args.max_resident_mb << 20;
    runtime_config.compute = args.compute.resolve()?;
    runtime_config.decode_batch = args.batch;
    let source = Arc::new(match remote {
        Some(remote) => RegistrySource::with_remote(registry.clone(), remote),
        None => RegistrySource::new(registry.clone()),
    });
    let runtime = Runtime::load(&model, source, runtime_config)
        .with_context(|| format!("loading model `{}`", model.display()))?;
    let model_id = runtime.model_id().to_string();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    tokio.block_on(async move {
        let server = Server::bind(runtime, registry, config).await?;
        eprintln!(
            "concepts: serving `{model_id}` on http://{} (Ctrl-C to stop)",
            server.local_addr()
        );
        server.run(shutdown_signal()).await?;
        eprintln!("concepts: stopped");
        anyhow::Ok(())
    })
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
