//! `concepts plugin install|list|remove|info`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use concepts_plugin_host::{builtin, HostConfig, PluginHost, PluginStore};

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Install a plugin package (a folder or a .tar archive with plugin.toml and its file)
    Install {
        /// Package folder or archive
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Allow installing a native (unsandboxed) plugin library
        #[arg(long)]
        allow_native: bool,
    },
    /// List installed plugins: id, version, role, kind
    List,
    /// Remove an installed plugin
    Remove {
        /// Plugin id
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Show an installed or built-in plugin's manifest
    Info {
        /// Plugin id
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// The plugin store of the concepts home, and a host configured for it.
pub fn store_and_host(ctx: &Ctx, allow_native: bool) -> anyhow::Result<(PluginStore, PluginHost)> {
    let store = PluginStore::new(&ctx.home()?.join("plugins"));
    let mut config = HostConfig::sandboxed();
    config.cache_dir = Some(store.cache_dir());
    config.data_dir = Some(store.data_dir());
    config.allow_native = allow_native;
    Ok((store, PluginHost::new(config)))
}

pub fn run(args: PluginArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match args.command {
        PluginCommand::Install { path, allow_native } => {
            let (store, host) = store_and_host(ctx, allow_native)?;
            let installed = store
                .install(&host, &path)
                .with_context(|| format!("installing plugin `{}`", path.display()))?;
            let m = installed.manifest();
            writeln!(
                out,
                "installed {} {} ({}, {})",
                m.id(),
                m.version(),
                m.role(),
                m.kind().as_str()
            )?;
        }
        PluginCommand::List => {
            // Installed plugins first (they win over a built-in of the same id), then the
            // built-in stages compiled into this binary, which are in use unless overridden.
            let (store, _) = store_and_host(ctx, false)?;
            let plugins = store.list().context("listing plugins")?;
            for p in &plugins {
                let m = p.manifest();
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    m.id(),
                    m.version(),
                    m.role(),
                    m.kind().as_str()
                )?;
            }
            for (id, role) in concepts_plugin_host::builtin::BUILTINS {
                let overridden = plugins.iter().any(|p| p.manifest().id() == id);
                writeln!(
                    out,
                    "{id}\t{}\t{role}\tbuilt-in{}",
                    concepts_plugin_host::builtin::BUILTIN_VERSION,
                    if overridden {
                        " (overridden by the installed plugin)"
                    } else {
                        ""
                    }
                )?;
            }
        }
        PluginCommand::Remove { id } => {
            let (store, _) = store_and_host(ctx, false)?;
            let removed = store
                .remove(&id)
                .with_context(|| format!("removing plugin `{id}`"))?;
            writeln!(
                out,
                "removed {} {}",
                removed.manifest().id(),
                removed.manifest().version()
            )?;
        }
        PluginCommand::Info { id } => {
            let (store, _) = store_and_host(ctx, false)?;
            match store
                .get(&id)
                .with_context(|| format!("reading plugin `{id}`"))?
            {
                Some(p) => {
                    writeln!(out, "# {}", p.dir().display())?;
                    write!(out, "{}", p.manifest().to_toml())?;
                }
                None => match builtin::builtin_role(&id) {
                    Some(role) => writeln!(
                        out,
                        "{id} {} ({role}, built in: compiled into concepts, runs in-process)",
                        builtin::BUILTIN_VERSION
                    )?,
                    None => anyhow::bail!("no plugin `{id}` is installed or built in"),
                },
            }
        }
    }
    Ok(())
}
