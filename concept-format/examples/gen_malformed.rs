//! Writes the golden file and the malformed corpus from `tests/support/corpus.rs`
//!
//! Run `cargo run -p concept-format --example gen_malformed` after changing the
//! format or the corpus; `cargo test` fails until the committed files match.

#[path = "../tests/support/corpus.rs"]
mod corpus;

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let golden_dir = crate_dir.join("../spec/golden");
    let corpus_dir = crate_dir.join("tests/malformed");
    fs::create_dir_all(&golden_dir)?;
    fs::create_dir_all(&corpus_dir)?;

    let golden = corpus::golden_package();
    fs::write(golden_dir.join("bo-v1.0.ycpt"), golden.to_bytes())?;
    fs::write(
        golden_dir.join("bo-v1.0.manifest.toml"),
        golden.manifest().to_toml_string(),
    )?;

    let cases = corpus::cases();
    for stale in fs::read_dir(&corpus_dir)? {
        let path = stale?.path();
        if path.extension().is_some_and(|e| e == "ycpt") {
            fs::remove_file(path)?;
        }
    }
    for case in &cases {
        fs::write(corpus_dir.join(case.file), &case.bytes)?;
    }
    fs::write(
        corpus_dir.join("EXPECTED.toml"),
        corpus::expected_toml(&cases),
    )?;
    println!(
        "wrote spec/golden/bo-v1.0.ycpt ({} bytes) and {} malformed files",
        golden.to_bytes().len(),
        cases.len()
    );
    Ok(())
}
