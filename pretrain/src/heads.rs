//! The stage-0 heads of the vision tower: what each predicts about a scene, and the labels.

use image::RgbImage;
use rand::Rng;
use toy_world::{Colour, ImageSize, Pattern, Scene, Shape, TaskKind, TaskMix, Tone};

/// How many stage-0 heads there are.
pub const HEADS: usize = 6;

/// The stage-0 labels of one scene, in head order.
pub type Labels = [u32; HEADS];

/// Stage-0 class counts, in head order: shape, colour, pattern, secondary colour (or
/// none), number of objects (1-3), and the tone of the largest object. The tone is the
/// identity detail no word says: the head makes the tower's pooled embedding (what the
/// negative miner compares) and its tokens (what a concept's soft tokens are matched against)
/// carry it.
pub fn head_classes() -> [usize; HEADS] {
    [
        Shape::ALL.len(),
        Colour::ALL.len(),
        Pattern::ALL.len(),
        Colour::ALL.len() + 1,
        3,
        usize::from(Tone::COUNT),
    ]
}

/// Names of the stage-0 heads.
pub const HEAD_NAMES: [&str; HEADS] = ["shape", "colour", "pattern", "secondary", "count", "tone"];

/// Stage-0 labels of a scene: attributes of its largest object and the object count.
pub fn scene_labels(scene: &Scene) -> Labels {
    let main = scene
        .objects
        .iter()
        .reduce(|a, b| if b.radius > a.radius { b } else { a })
        .expect("scenes have an object");
    let c = main.combo;
    let idx = |found: Option<usize>| found.unwrap_or(0) as u32;
    [
        idx(Shape::ALL.iter().position(|&s| s == c.shape())),
        idx(Colour::ALL.iter().position(|&s| s == c.colour())),
        idx(Pattern::ALL.iter().position(|&s| s == c.pattern())),
        match c.secondary() {
            Some(s) => idx(Colour::ALL.iter().position(|&x| x == s)),
            None => Colour::ALL.len() as u32,
        },
        (scene.objects.len().clamp(1, 3) - 1) as u32,
        u32::from(main.tone.index()),
    ]
}

/// `n` stage-0 scenes drawn from `rng` (the caption task's scenes): their images and labels
pub fn labelled_scenes(
    rng: &mut impl Rng,
    n: usize,
    size: ImageSize,
) -> (Vec<RgbImage>, Vec<Labels>) {
    let mix = TaskMix::only(TaskKind::Caption);
    (0..n)
        .filter_map(|_| {
            let sample = toy_world::sample(rng, &mix, size);
            Some((sample.image?, scene_labels(sample.scene.as_ref()?)))
        })
        .unzip()
}
