//! `concepts inspect FILE [--json]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use concept_format::ConceptPackage;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::files::read_capped;
use crate::render::{self, TensorJson};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The `.ycpt` package file; exit status 0 only if it is a valid package
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print JSON: `{"file": {"path", "sha256", "size", "format_version"}, "manifest": {...},
    /// "tensors": [{"name", "shape", "min", "max", "mean", "l2_norm"}]}`
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct FileJson<'a> {
    path: &'a str,
    sha256: String,
    size: u64,
    format_version: String,
}

#[derive(Serialize)]
struct InspectJson<'a> {
    file: FileJson<'a>,
    manifest: &'a concept_format::Manifest,
    tensors: Vec<TensorJson<'a>>,
}

pub fn run(args: InspectArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    let bytes = read_capped(&args.file)?;
    let context = || format!("`{}` is not a valid concept package", args.file.display());
    let package = ConceptPackage::parse(&bytes).with_context(context)?;
    // parse succeeded, so the preamble is there.
    let (major, minor) = concept_format::peek_version(&bytes).with_context(context)?;
    let path = args.file.display().to_string();
    let file = FileJson {
        path: &path,
        sha256: concepts_fs::sha256_hex(&bytes),
        size: bytes.len() as u64,
        format_version: format!("{major}.{minor}"),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let stats = package.tensors().stats();
        return render::write_json(
            &mut out,
            &InspectJson {
                file,
                manifest: package.manifest(),
                tensors: stats.iter().map(TensorJson::new).collect(),
            },
        );
    }
    writeln!(out, "file:       {}", file.path)?;
    writeln!(out, "format:     ycpt v{}", file.format_version)?;
    writeln!(out, "sha256:     {}", file.sha256)?;
    writeln!(out, "size:       {}", render::bytes(file.size))?;
    writeln!(out)?;
    render::write_package(&mut out, &package)?;
    Ok(())
}
