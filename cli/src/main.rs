//! concepts: the command-line front end of the `concepts` runtime.
//!
//! Its one job is to turn command lines into calls on the library crates and their results into
//! text. Key design choice: this file is only the clap `Command` enum and a dispatcher; each
//! subcommand lives in `cmd/<name>.rs` as `XArgs` (clap) plus `run(args, &Ctx)`.
//!
//! This is the only crate that reads the environment (`CONCEPTS_HOME`, `RUST_LOG`) or prints.
//! Errors go to stderr as `concepts: error: <context chain>` with exit status 1; clap reports usage
//! errors with status 2.

mod cmd;
mod ctx;
mod files;
mod render;

/// candle allocates every op's output afresh; glibc's malloc serves the large ones from new
/// mmapped pages each time (page faults and zeroing by the kernel), which made a toy-model
/// training step about a third slower. mimalloc reuses freed memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ctx::Ctx;

/// Personalise a vision-language model with installable concept packages.
#[derive(Debug, Parser)]
#[command(name = "concepts", version, propagate_version = true)]
struct Cli {
    /// Registry directory [default: the platform data dir + `concepts`, e.g. ~/.local/share/concepts]
    #[arg(long, global = true, env = "CONCEPTS_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Log more to stderr (-v info, -vv debug, -vvv trace); RUST_LOG, when set, takes precedence
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install a concept package (a file, or `oci://REF` from an OCI registry) into the registry
    Install(cmd::install::InstallArgs),
    /// Publish an installed concept to an OCI registry
    Push(cmd::push::PushArgs),
    /// Download a concept package from an OCI registry to a file, every digest verified
    Pull(cmd::pull::PullArgs),
    /// List installed concepts
    List(cmd::list::ListArgs),
    /// Show an installed concept's manifest and tensor statistics
    Show(cmd::show::ShowArgs),
    /// Remove an installed concept (by name or identifier)
    Remove(cmd::remove::RemoveArgs),
    /// Re-hash and re-parse every installed package; exit non-zero if anything is damaged
    Verify(cmd::verify::VerifyArgs),
    /// Delete unreferenced blobs and stale temp files from the registry
    Gc(cmd::gc::GcArgs),
    /// Write an installed concept's package file to a path
    Export(cmd::export::ExportArgs),
    /// Print a package file's manifest and tensor statistics without installing it
    Inspect(cmd::inspect::InspectArgs),
    /// Build a package from a safetensors file and a manifest TOML
    Pack(cmd::pack::PackArgs),
    /// Rewrite a package file at the current format version
    Migrate(cmd::migrate::MigrateArgs),
    /// Show, set or clear the base model the registry is pinned to
    Pin(cmd::pin::PinArgs),
    /// Answer a prompt (optionally about an image, with installed concepts active)
    Run(cmd::run::RunArgs),
    /// Serve the model over HTTP: OpenAI-compatible chat, concept upload and recognition
    Serve(cmd::serve::ServeArgs),
    /// Which installed concepts are in this photo?
    Scan(cmd::scan::ScanArgs),
    /// Install, list, remove or describe training-stage plugins (miner, trainer, linker)
    Plugin(cmd::plugin::PluginArgs),
    /// Learn a concept from a handful of photos and write it as a package
    Train(Box<cmd::train::TrainArgs>),
    /// The procedurally generated toy world: datasets of held-out subjects
    Toy(cmd::toy::ToyArgs),
    /// The base model: pretrain the toy LLaVA (`base build-toy`)
    Base(cmd::base::BaseArgs),
    /// Write a copy of a base model with its linear layers quantized (q8_0 or q4k)
    Quantize(cmd::quantize::QuantizeArgs),
    /// Evaluate recognition and A/B questions on a dataset: vanilla, true and model-written description, learned
    Eval(Box<cmd::eval::EvalArgs>),
    /// Train `<bo>` on a generated toy subject, install it and ask it questions (a few minutes)
    Demo(cmd::demo::DemoArgs),
}

fn dispatch(command: Command, ctx: &Ctx) -> anyhow::Result<()> {
    match command {
        Command::Install(args) => cmd::install::run(args, ctx),
        Command::Push(args) => cmd::push::run(args, ctx),
        Command::Pull(args) => cmd::pull::run(args, ctx),
        Command::List(args) => cmd::list::run(args, ctx),
        Command::Show(args) => cmd::show::run(args, ctx),
        Command::Remove(args) => cmd::remove::run(args, ctx),
        Command::Verify(args) => cmd::verify::run(args, ctx),
        Command::Gc(args) => cmd::gc::run(args, ctx),
        Command::Export(args) => cmd::export::run(args, ctx),
        Command::Inspect(args) => cmd::inspect::run(args, ctx),
        Command::Pack(args) => cmd::pack::run(args, ctx),
        Command::Migrate(args) => cmd::migrate::run(args, ctx),
        Command::Pin(args) => cmd::pin::run(args, ctx),
        Command::Run(args) => cmd::run::run(args, ctx),
        Command::Serve(args) => cmd::serve::run(args, ctx),
        Command::Scan(args) => cmd::scan::run(args, ctx),
        Command::Plugin(args) => cmd::plugin::run(args, ctx),
        Command::Train(args) => cmd::train::run(*args, ctx),
        Command::Toy(args) => cmd::toy::run(args, ctx),
        Command::Base(args) => cmd::base::run(args, ctx),
        Command::Quantize(args) => cmd::quantize::run(args, ctx),
        Command::Eval(args) => cmd::eval::run(*args, ctx),
        Command::Demo(args) => cmd::demo::run(args, ctx),
    }
}

/// Without `RAYON_NUM_THREADS`, candle works out its thread count again on every matrix
/// product by reading `/proc/cpuinfo`: about 5% of a toy-model training run, and 44% of the
/// CPU time of a server decoding a small model's batch (docs/serving.md). Working it out once
/// and setting the variable, before any thread exists, keeps the same count. A variable the
/// user set is kept.
///
/// Training on a CPU model as narrow as the toy one gets one thread: its second thread gains
/// nothing on a quiet machine, and candle's spinning thread pool makes a run twice as slow
/// when another process holds a core (docs/training.md, "Threads when the cores are shared").
fn pin_thread_count(command: &Command, ctx: &Ctx) {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let threads = if trains_a_narrow_model(command, ctx) {
        1
    } else {
        candle_core::utils::get_num_threads()
    };
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

/// The widest text model (`text_config.hidden_size`) [`pin_thread_count`] trains on one
/// thread: the width where one thread was measured as fast as two (the toy base model).
const ONE_THREAD_MAX_WIDTH: usize = 128;

/// Whether `command` trains concepts on the CPU for a base model no wider than
/// [`ONE_THREAD_MAX_WIDTH`]. Anything unreadable counts as wide: the command itself reports it.
fn trains_a_narrow_model(command: &Command, ctx: &Ctx) -> bool {
    let (model, device) = match command {
        Command::Train(a) => (a.model.as_deref(), a.compute.device.as_str()),
        Command::Eval(a) => (a.base_model.as_deref(), a.compute.device.as_str()),
        Command::Demo(a) => (a.model.as_deref(), "cpu"),
        _ => return false,
    };
    if device != "cpu" {
        return false;
    }
    let Ok(dir) = ctx::model_dir(model, ctx) else {
        return false;
    };
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|text| concepts_runtime::config::LlavaConfig::from_json_str(&text).ok())
        .is_some_and(|config| config.text.hidden_size <= ONE_THREAD_MAX_WIDTH)
}

fn main() -> ExitCode {
    // clap would take an empty `CONCEPTS_HOME=` for a missing `--home` value and report a
    // usage error naming the flag; the registry folder reports it instead, naming the variable,
    // and only for commands that use the registry.
    let empty_home_env = std::env::var_os("CONCEPTS_HOME").is_some_and(|v| v.is_empty());
    if empty_home_env {
        std::env::remove_var("CONCEPTS_HOME");
    }
    // `exit` prints help/version (status 0) or the usage error (status 2).
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    init_logging(cli.verbose);
    let ctx = Ctx::new(cli.home, empty_home_env);
    // Before any thread exists (nothing above starts one).
    pin_thread_count(&cli.command, &ctx);
    // `CONCEPTS_AMX=0`: prefills of quantized layers off the AMX tiles (docs/real-llava.md).
    if std::env::var("CONCEPTS_AMX").is_ok_and(|v| v == "0") {
        concepts_runtime::model::disable_amx_tiles();
    }
    match dispatch(cli.command, &ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concepts: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// `concepts list | head` closes our stdout early; that is not an error worth reporting.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
