//! Text and JSON renderings shared by several subcommands.

use std::io::Write;

use concept_format::{ConceptPackage, ModelFingerprint, TensorStats};
use concept_registry::Entry;
use serde::Serialize;

/// One installed concept, as `list --json` prints it (and `show --json` under `"installed"`).
///
/// ```json
/// {
///   "name": "bo",
///   "identifier": "<bo>",
///   "display_name": "Bo",
///   "category": "pet",
///   "k": 4,
///   "d": 8,
///   "dtype": "f16",
///   "sha256": "<64 hex digits of the package file>",
///   "size": 1234,
///   "base_model": {
///     "architecture": "toy/llava-tiny",
///     "hidden_size": 8,
///     "vocab_size": 1000,
///     "tokenizer_sha256": "<64 hex>",
///     "embed_sha256": "<64 hex>",
///     "lm_head_sha256": "<64 hex>"
///   }
/// }
/// ```
#[derive(Debug, Serialize)]
pub struct EntryJson<'a> {
    pub name: &'a str,
    pub identifier: &'a str,
    pub display_name: &'a str,
    pub category: &'static str,
    pub k: u32,
    pub d: u32,
    pub dtype: &'static str,
    pub sha256: &'a str,
    pub size: u64,
    pub base_model: &'a ModelFingerprint,
}

impl<'a> EntryJson<'a> {
    pub fn new(entry: &'a Entry) -> EntryJson<'a> {
        let s = &entry.summary;
        EntryJson {
            name: &entry.name,
            identifier: &entry.identifier,
            display_name: &s.display_name,
            category: s.category.as_str(),
            k: s.k,
            d: s.d,
            dtype: s.dtype.as_str(),
            sha256: entry.sha256.as_hex(),
            size: entry.size,
            base_model: &s.base_model,
        }
    }
}

/// Statistics of one tensor, as `inspect --json` / `show --json` print them.
#[derive(Debug, Serialize)]
pub struct TensorJson<'a> {
    pub name: &'static str,
    pub shape: &'a [usize],
    pub min: f32,
    pub max: f32,
    pub mean: f32,
    pub l2_norm: f32,
}

impl<'a> TensorJson<'a> {
    pub fn new(stats: &'a TensorStats) -> TensorJson<'a> {
        TensorJson {
            name: stats.name,
            shape: &stats.shape,
            min: stats.min,
            max: stats.max,
            mean: stats.mean,
            l2_norm: stats.l2_norm,
        }
    }
}

/// Prints a package's canonical manifest TOML and a tensor statistics table.
pub fn write_package(out: &mut impl Write, package: &ConceptPackage) -> std::io::Result<()> {
    writeln!(out, "manifest:")?;
    for line in package.manifest().to_toml_string().lines() {
        if line.is_empty() {
            writeln!(out)?;
        } else {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(out)?;
    writeln!(out, "tensors ({}):", package.tensors().dtype())?;
    let stats = package.tensors().stats();
    let rows: Vec<[String; 6]> = stats
        .iter()
        .map(|s| {
            [
                s.name.to_owned(),
                format!("{:?}", s.shape),
                format!("{:.6}", s.min),
                format!("{:.6}", s.max),
                format!("{:.6}", s.mean),
                format!("{:.6}", s.l2_norm),
            ]
        })
        .collect();
    write_table(
        out,
        ["  name", "shape", "min", "max", "mean", "l2_norm"],
        rows.into_iter().map(|mut r| {
            r[0].insert_str(0, "  ");
            r
        }),
    )
}

/// Writes a left-aligned table with a header row; columns are separated by two spaces.
pub fn write_table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
) -> std::io::Result<()> {
    let rows: Vec<[String; N]> = rows.into_iter().collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Serialises `value` as pretty JSON plus a newline.
pub fn write_json(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
