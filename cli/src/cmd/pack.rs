//! `concepts pack --tensors T.safetensors --manifest M.toml -o OUT.ycpt`
//!
//! Also the import path for concepts trained by the reference Python code: it writes a safetensors
//! file with `identifier` `[d]`, `latents` `[k, d]` and `head` `[d]`, and a manifest TOML.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use concept_format::{ConceptPackage, ConceptTensors, Manifest};

use crate::ctx::Ctx;
use crate::files::read_capped;

#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// Safetensors file holding `identifier` `[d]`, `latents` `[k, d]` and `head` `[d]`
    #[arg(long, value_name = "T.safetensors")]
    pub tensors: PathBuf,
    /// Manifest TOML; `k`, `d`, `dtype` may be left out (taken from the tensors) and
    /// `body_sha256` is always computed
    #[arg(long, value_name = "M.toml")]
    pub manifest: PathBuf,
    /// Where to write the package (atomically)
    #[arg(short, long, value_name = "OUT.ycpt")]
    pub output: PathBuf,
}

pub fn run(args: PackArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let tensor_bytes = read_capped(&args.tensors)?;
    let tensors = ConceptTensors::from_safetensors_bytes(&tensor_bytes)
        .with_context(|| format!("reading tensors from `{}`", args.tensors.display()))?;

    let manifest_bytes = read_capped(&args.manifest)?;
    let manifest_context = || format!("reading manifest `{}`", args.manifest.display());
    let text = String::from_utf8(manifest_bytes)
        .context("manifest is not UTF-8")
        .with_context(manifest_context)?;
    let manifest = complete_manifest(&text, &tensors).with_context(manifest_context)?;

    let package = ConceptPackage::new(manifest, tensors).with_context(|| {
        format!(
            "manifest `{}` does not fit tensors `{}`",
            args.manifest.display(),
            args.tensors.display()
        )
    })?;
    crate::files::check_output(&args.output, ctx)?;
    package
        .write_file_atomic(&args.output)
        .with_context(|| format!("writing `{}`", args.output.display()))?;
    let m = package.manifest();
    writeln!(
        std::io::stdout().lock(),
        "packed {} ({}) k={} d={} {} -> {} sha256:{}",
        m.name,
        m.identifier,
        m.k,
        m.d,
        m.dtype,
        args.output.display(),
        concepts_fs::sha256_hex(&package.to_bytes())
    )?;
    Ok(())
}

/// Parses the manifest after filling in what the tensors determine: `k`, `d` and `dtype` when
/// missing (a value that is present is kept, so a disagreement is reported by
/// `ConceptPackage::new`), and `body_sha256` always.
fn complete_manifest(text: &str, tensors: &ConceptTensors) -> anyhow::Result<Manifest> {
    let mut table: toml::Table = text.parse().context("manifest is not valid TOML")?;
    let fill = [
        ("k", toml::Value::Integer(tensors.k() as i64)),
        ("d", toml::Value::Integer(tensors.d() as i64)),
        ("dtype", toml::Value::String(tensors.dtype().to_string())),
    ];
    for (key, value) in fill {
        table.entry(key).or_insert(value);
    }
    table.insert(
        "body_sha256".to_owned(),
        toml::Value::String(concepts_fs::sha256_hex(tensors.safetensors_bytes())),
    );
    let completed = toml::to_string(&table).context("re-serialising manifest")?;
    Ok(Manifest::from_toml_str(&completed)?)
}
