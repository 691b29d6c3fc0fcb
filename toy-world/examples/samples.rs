//! Prints pretraining samples as text.
//!
//! `cargo run -p toy-world --example samples -- [count] [seed]`

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use toy_world::{sample, ImageSize, TaskMix};

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .map_or(16, |s| s.parse().expect("count is an integer"));
    let seed: u64 = args
        .next()
        .map_or(1, |s| s.parse().expect("seed is an integer"));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..count {
        let s = sample(&mut rng, &TaskMix::balanced(), ImageSize::DEFAULT);
        let image = if s.image.is_some() { "[image] " } else { "" };
        println!(
            "{:?}\n  Q: {image}{}\n  A: {}",
            s.task,
            s.question.replace('\n', " | "),
            s.answer
        );
    }
}
