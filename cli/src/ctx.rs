//! What every subcommand gets besides its own arguments.

use std::path::{Path, PathBuf};

use anyhow::Context;
use concept_registry::Registry;

/// Global options, resolved once in `main`.
#[derive(Debug)]
pub struct Ctx {
    /// `--home` / `$CONCEPTS_HOME`, if given.
    home: Option<PathBuf>,
    /// `$CONCEPTS_HOME` was set to the empty string (and `--home` not given).
    empty_home_env: bool,
}

impl Ctx {
    pub fn new(home: Option<PathBuf>, empty_home_env: bool) -> Ctx {
        Ctx {
            empty_home_env: empty_home_env && home.is_none(),
            home,
        }
    }

    /// The registry directory: `--home`, else `$CONCEPTS_HOME`, else `<data dir>/concepts`.
    pub fn home(&self) -> anyhow::Result<PathBuf> {
        match &self.home {
            Some(home) => Ok(home.clone()),
            // `main` hid an empty CONCEPTS_HOME from clap; the registry's rule reports it.
            None => Ok(concept_registry::default_home(
                self.empty_home_env.then_some(std::ffi::OsStr::new("")),
            )?),
        }
    }

    /// Opens (creating if needed) the registry. Commands that do not need it never call this, so
    /// `inspect`, `pack` and `migrate` leave the file system alone.
    pub fn registry(&self) -> anyhow::Result<Registry> {
        let home = self.home()?;
        Registry::open(&home).with_context(|| format!("opening registry `{}`", home.display()))
    }
}

/// The OCI registry client, configured from the environment (`CONCEPTS_OCI_PLAIN_HTTP`,
/// `CONCEPTS_REGISTRY_USERNAME` / `_PASSWORD`, else the docker config).
pub fn oci_client() -> anyhow::Result<concepts_oci::Client> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let credentials = concepts_oci::Credentials::from_pair(
        var("CONCEPTS_REGISTRY_USERNAME"),
        var("CONCEPTS_REGISTRY_PASSWORD"),
    )
    .context("CONCEPTS_REGISTRY_USERNAME / CONCEPTS_REGISTRY_PASSWORD")?;
    let plain_http = var("CONCEPTS_OCI_PLAIN_HTTP")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Ok(concepts_oci::Client::new(concepts_oci::ClientOptions {
        plain_http,
        credentials,
        ..concepts_oci::ClientOptions::default()
    }))
}

/// The base model folder: `--model` when given, else `$CONCEPTS_DEFAULT_MODEL`, else the toy
/// model embedded in this binary (written under the home folder on first use).
pub fn model_dir(model: Option<&Path>, ctx: &Ctx) -> anyhow::Result<PathBuf> {
    match model {
        Some(dir) => Ok(dir.to_path_buf()),
        None => {
            let from_env = std::env::var_os("CONCEPTS_DEFAULT_MODEL").map(PathBuf::from);
            Ok(concepts_runtime::default_model::default_model_dir(
                from_env.as_deref(),
                &ctx.home()?,
            )?)
        }
    }
}

/// `--device` and `--dtype`, shared by every command that loads a base model.
#[derive(Debug, Clone, clap::Args)]
pub struct ComputeArgs {
    /// Where the base model runs: cpu, or cuda (GPU 0; a binary built with `--features cuda`)
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// Compute precision of the base model: f32, f16 or bf16 [default: f32 on the CPU, f16
    /// on CUDA]. Concept tensors and logits stay f32; a quantized folder (`concepts
    /// quantize`) keeps its matrices quantized and computes the rest in this dtype
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
}

impl ComputeArgs {
    pub fn resolve(&self) -> anyhow::Result<concepts_runtime::Compute> {
        Ok(concepts_runtime::Compute::parse(
            &self.device,
            self.dtype.as_deref(),
        )?)
    }
}
