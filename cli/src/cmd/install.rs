//! `concepts install FILE|oci://REF [--replace] [--force] [--sha256 HEX]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use anyhow::Context;
use concept_registry::{Compatibility, Digest, InstallOptions, InstallOutcome};
use concepts_oci::ConceptRef;

use crate::ctx::{oci_client, Ctx};

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The `.ycpt` package file, or `oci://HOST[:PORT]/REPOSITORY:TAG` (or `@sha256:HEX`) to
    /// pull it from an OCI registry, every digest verified
    #[arg(value_name = "FILE|oci://REF")]
    pub file: PathBuf,
    /// Replace installed concepts that use the package's name or identifier
    #[arg(long)]
    pub replace: bool,
    /// Install even if the base-model hashes differ from the registry's pinned base model
    /// (architecture and dimensions must still match)
    #[arg(long)]
    pub force: bool,
    /// Install only if the file's SHA-256 is this (64 hex digits, as published beside the
    /// package): checks every byte, the manifest included, before anything is parsed
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
}

pub fn run(args: InstallArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let registry = ctx.registry()?;
    let options = InstallOptions {
        replace: args.replace,
        force: args.force,
    };
    // Checked before anything is read or downloaded.
    let expected = args
        .sha256
        .as_deref()
        .map(|hex| {
            Digest::parse(&hex.to_ascii_lowercase()).with_context(|| format!("--sha256 `{hex}`"))
        })
        .transpose()?;
    let mut origin = args.file.display().to_string();
    let remote = match args.file.to_str() {
        Some(text) if text.starts_with(concepts_oci::SCHEME) => {
            let reference = ConceptRef::parse(text)?;
            let pulled = oci_client()?
                .pull(&reference)
                .with_context(|| format!("installing {reference}"))?;
            origin = format!("{}{}", concepts_oci::SCHEME, pulled.pinned);
            Some(pulled.bytes)
        }
        _ => None,
    };
    let report = match (expected, remote) {
        (None, None) => registry.install_file(&args.file, &options),
        (None, Some(bytes)) => registry.install_bytes_from(&bytes, &origin, &options),
        (Some(expected), remote) => {
            let bytes = match remote {
                Some(bytes) => bytes,
                None => concepts_fs::read_bounded(&args.file, concept_format::MAX_FILE_LEN)
                    .with_context(|| format!("installing `{origin}`"))?,
            };
            let found = Digest::of(&bytes);
            if found != expected {
                bail!(
                    "`{origin}` has sha256:{found}, not the expected sha256:{expected}; \
                     the file is not the one published (nothing was installed)"
                );
            }
            registry.install_bytes_from(&bytes, &origin, &options)
        }
    }
    .with_context(|| format!("installing `{origin}`"))?;
    if let Some(Compatibility::Forced(overridden)) = &report.compatibility {
        for m in overridden {
            eprintln!("concepts: warning: forced past base-model difference: {m}");
        }
    }
    let e = &report.entry;
    let mut out = std::io::stdout().lock();
    for old in &report.replaced {
        writeln!(
            out,
            "replaced {} ({}) sha256:{}",
            old.name,
            old.identifier,
            old.sha256.short()
        )?;
    }
    match report.outcome {
        InstallOutcome::Installed => writeln!(
            out,
            "installed {} ({}) sha256:{}",
            e.name,
            e.identifier,
            e.sha256.short()
        )?,
        InstallOutcome::AlreadyInstalled => writeln!(
            out,
            "{} ({}) sha256:{} is already installed; nothing to do",
            e.name,
            e.identifier,
            e.sha256.short()
        )?,
    }
    Ok(())
}
