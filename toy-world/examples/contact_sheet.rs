//! Renders a contact sheet of the toy world for eyeballing.
//!
//! `cargo run -p toy-world --example contact_sheet -- /tmp/sheet.png [seed] [px]`
//!
//! Rows: every shape in every pattern; every colour as a secondary colour on red and
//! on blue; random pretraining samples; two subjects' photos and look-alikes; the two
//! subjects together. Tiles are
//! shown at 3x (nearest neighbour) with a 2 px gap.

use image::{imageops, Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use toy_world::{
    choose_subjects, lookalike, pair_photo, photo_of, render, sample, Background, Colour, Combo,
    ImageSize, Object, Pattern, Scene, Shape, Size, TaskMix,
};

fn single(combo: Combo, bg: [u8; 3], rotation_deg: i32) -> Scene {
    Scene {
        background: Background::Solid(bg),
        objects: vec![Object {
            combo,
            size: Size::Large,
            centre: [0.5, 0.5],
            radius: 0.3,
            rotation_deg,
            shade: 0,
            tone: Default::default(),
        }],
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "contact_sheet.png".into());
    let seed: u64 = args
        .next()
        .map_or(1, |s| s.parse().expect("seed is an integer"));
    let px: u32 = args
        .next()
        .map_or(48, |s| s.parse().expect("px is an integer"));
    let size = ImageSize::new(px).expect("px within 48..=64");

    let mut rows: Vec<Vec<RgbImage>> = Vec::new();
    let colours = Colour::ALL;
    for (i, &shape) in Shape::ALL.iter().enumerate() {
        let main = colours[i % colours.len()];
        let sec = colours[(i + 4) % colours.len()];
        assert!(main.contrasts_with(sec), "{main} on {sec}");
        let mut row = Vec::new();
        for &pattern in Pattern::ALL {
            let secondary = (pattern != Pattern::Solid).then_some(sec);
            let combo = Combo::new(shape, main, pattern, secondary).expect("distinct colours");
            row.push(render(
                &single(combo, [120, 130, 140], (i as i32 * 7) % 30 - 15),
                size,
            ));
        }
        rows.push(row);
    }
    for main in [Colour::Red, Colour::Blue] {
        let row = colours
            .iter()
            .filter_map(|&c| Combo::new(Shape::Square, main, Pattern::Stripes, Some(c)).ok())
            .map(|combo| render(&single(combo, [110, 150, 130], 0), size))
            .collect();
        rows.push(row);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mix = TaskMix::balanced();
    for _ in 0..3 {
        let mut row = Vec::new();
        while row.len() < 10 {
            if let Some(img) = sample(&mut rng, &mix, size).image {
                row.push(img);
            }
        }
        rows.push(row);
    }
    let subjects = choose_subjects(seed, 2).expect("two subjects");
    let avoid: Vec<Combo> = subjects.iter().map(|s| *s.combo()).collect();
    for s in &subjects {
        eprintln!("subject {}: {}", s.name(), s.description());
        let mut row: Vec<RgbImage> = (0..6)
            .map(|_| render(&photo_of(&mut rng, *s.combo(), &avoid), size))
            .collect();
        for _ in 0..4 {
            let (look, attr) = lookalike(&mut rng, s.combo(), &avoid);
            eprintln!("  look-alike ({attr}): {}", look.description());
            row.push(render(&photo_of(&mut rng, look, &avoid), size));
        }
        rows.push(row);
    }
    let pairs = (0..10)
        .map(|_| render(&pair_photo(&mut rng, avoid[0], avoid[1], &avoid), size))
        .collect();
    rows.push(pairs);

    let scale = 3;
    let tile = px * scale + 2;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let mut sheet =
        RgbImage::from_pixel(cols * tile, rows.len() as u32 * tile, Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let big = imageops::resize(img, px * scale, px * scale, imageops::FilterType::Nearest);
            imageops::replace(
                &mut sheet,
                &big,
                (c as u32 * tile) as i64,
                (r as u32 * tile) as i64,
            );
        }
    }
    sheet.save(&out).expect("write the contact sheet");
    eprintln!("wrote {out}");
}
