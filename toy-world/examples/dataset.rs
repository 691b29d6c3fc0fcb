//! Writes a toy dataset with the standard config, as `concepts toy dataset` will.
//!
//! `cargo run -p toy-world --example dataset -- DIR [seed] [subjects]`

use std::path::PathBuf;

use toy_world::{write_dataset, DatasetConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: dataset DIR [seed] [subjects]"));
    let seed: u64 = args
        .next()
        .map_or(1, |s| s.parse().expect("seed is an integer"));
    let n: usize = args
        .next()
        .map_or(3, |s| s.parse().expect("subjects is an integer"));
    match write_dataset(&dir, seed, n, &DatasetConfig::standard()) {
        Ok(summary) => {
            for s in &summary.subjects {
                println!("{}: {}", s.name(), s.description());
            }
            println!(
                "{} images, {} questions in {}",
                summary.images,
                summary.questions,
                summary.dir.display()
            );
        }
        Err(e) => {
            eprintln!("toy-world: {e}");
            std::process::exit(1);
        }
    }
}
