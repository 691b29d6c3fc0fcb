//! `include/concepts.h` is what cbindgen makes of `src/lib.rs`: a stale header fails here.
//! Regenerate it with `CONCEPTS_BLESS=1 cargo test -p concepts-c --test header`.

use std::path::Path;

#[test]
fn the_committed_header_is_the_generated_one() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let path = crate_dir.join("include/concepts.h");
    if std::env::var_os("CONCEPTS_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "`{}` is stale; run CONCEPTS_BLESS=1 cargo test -p concepts-c --test header",
        path.display()
    );
}
