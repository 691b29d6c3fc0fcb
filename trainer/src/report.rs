//! The training report written beside the package: a JSON file and a PNG plot of loss and
//! recognition accuracy per epoch.
//!
//! The plot is drawn with `image` and a built-in 5×7 pixel font, so it renders the same on
//! every machine and needs no system fonts.

use std::path::{Path, PathBuf};

use concepts_plugin_api::EpochReport;
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::error::{Result, TrainError};

/// The report's JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingReport {
    pub name: String,
    pub identifier: String,
    /// `running`, `complete` or `interrupted`.
    pub status: String,
    pub trainer_version: String,
    pub stages: StageIds,
    pub seed: u64,
    pub init: String,
    pub k: usize,
    pub learning_rate: f32,
    pub batch_size: u32,
    pub counts: Counts,
    pub pool: PoolSummary,
    pub best_epoch: Option<u32>,
    /// Weighted recognition of the best epoch (`Recognition::weighted`), as the plot and the
    /// package show it.
    pub best_accuracy: Option<f32>,
    pub epochs: Vec<EpochReport>,
    /// Training loss of every optimiser step, in order.
    pub step_losses: Vec<f32>,
    pub timings: Timings,
}

/// The plugin ids of the three stages.
#[derive(Debug, Clone, Serialize)]
pub struct StageIds {
    pub miner: String,
    pub trainer: String,
    pub linker: String,
}

/// What the concept was trained on.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub positives: usize,
    pub hard_negatives: usize,
    pub easy_negatives: usize,
    pub conversations: usize,
    /// Crowded views of the photos (positives), and as many of hard negatives.
    pub crowded_views: usize,
}

/// How the pool was embedded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolSummary {
    pub source: String,
    pub listed: usize,
    pub usable: usize,
    pub cache_hits: usize,
    pub embedded: usize,
    pub skipped: usize,
}

/// Wall-clock seconds per stage.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    pub mining_secs: f64,
    pub data_secs: f64,
    pub training_secs: f64,
    /// Mean seconds per optimiser step of this run (replayed steps excluded).
    pub seconds_per_step: Option<f64>,
    /// Of `training_secs`: the engine's steps, recognition read-outs and prompt prefixes.
    pub engine: crate::engine::EngineTimings,
    /// Of `training_secs`: writing the best package and the report after each epoch.
    pub checkpoint_secs: f64,
}

/// `bo.ycpt` → `bo.training.json` and `bo.training.png` in the same folder.
pub fn report_paths(output: &Path) -> (PathBuf, PathBuf) {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "concept".to_string());
    let dir = output.parent().unwrap_or(Path::new(""));
    (
        dir.join(format!("{stem}.training.json")),
        dir.join(format!("{stem}.training.png")),
    )
}

/// Writes both report files (atomically).
pub fn write_report(report: &TrainingReport, json: &Path, png: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(|e| TrainError::File {
        path: json.to_path_buf(),
        msg: e.to_string(),
    })?;
    concepts_fs::write_atomic(json, text.as_bytes())?;
    let img = plot(&report.epochs, report.best_epoch);
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| TrainError::File {
        path: png.to_path_buf(),
        msg: e.to_string(),
    })?;
    Ok(concepts_fs::write_atomic(png, &bytes)?)
}

const WIDTH: u32 = 960;
const HEIGHT: u32 = 420;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([20, 20, 20]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const BEST: Rgb<u8> = Rgb([150, 150, 150]);
/// Train loss, evaluation loss.
const LOSS_COLOURS: [Rgb<u8>; 2] = [Rgb([31, 119, 180]), Rgb([255, 127, 14])];
/// Accuracy, positives, negatives.
const ACC_COLOURS: [Rgb<u8>; 3] = [Rgb([44, 160, 44]), Rgb([148, 103, 189]), Rgb([214, 39, 40])];

/// The plot: loss per epoch on the left, recognition accuracy on the right, the best epoch
/// marked by a grey vertical line.
pub fn plot(epochs: &[EpochReport], best: Option<u32>) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    let xs: Vec<f64> = epochs.iter().map(|e| f64::from(e.epoch)).collect();
    let loss: Vec<f64> = epochs.iter().map(|e| f64::from(e.mean_loss)).collect();
    let eval_loss: Vec<f64> = epochs
        .iter()
        .map(|e| f64::from(e.validation.loss))
        .collect();
    let max_loss = loss
        .iter()
        .chain(&eval_loss)
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let panel = |img: &mut RgbImage,
                 x0: u32,
                 title: &str,
                 y_max: f64,
                 series: &[(&[f64], Rgb<u8>, &str)]| {
        let (left, top, w, h) = (x0 + 70, 40u32, WIDTH / 2 - 100, HEIGHT - 110);
        text(img, x0 + 70, 12, title, BLACK, 2);
        let x_max = xs.last().copied().unwrap_or(1.0).max(1.0);
        let px = |x: f64| left as f64 + (x - 1.0) / (x_max - 1.0).max(1.0) * f64::from(w);
        let py = |y: f64| f64::from(top + h) - (y / y_max).clamp(0.0, 1.0) * f64::from(h);
        for i in 0..=4 {
            let v = y_max * f64::from(i) / 4.0;
            let y = py(v) as i64;
            line(
                img,
                left as f64,
                y as f64,
                f64::from(left + w),
                y as f64,
                GRID,
            );
            let label = format!("{v:.2}");
            text(
                img,
                left.saturating_sub(8 + 12 * label.len() as u32),
                (y - 7).max(0) as u32,
                &label,
                BLACK,
                2,
            );
        }
        if let Some(b) = best {
            let x = px(f64::from(b));
            line(img, x, f64::from(top), x, f64::from(top + h), BEST);
        }
        let step = (x_max as u32).div_ceil(10).max(1);
        for e in (1..=x_max as u32).filter(|e| (e - 1) % step == 0 || *e == x_max as u32) {
            let x = px(f64::from(e));
            line(img, x, f64::from(top + h), x, f64::from(top + h + 5), BLACK);
            let label = e.to_string();
            text(
                img,
                (x as u32).saturating_sub(6 * label.len() as u32),
                top + h + 10,
                &label,
                BLACK,
                2,
            );
        }
        line(
            img,
            f64::from(left),
            f64::from(top),
            f64::from(left),
            f64::from(top + h),
            BLACK,
        );
        line(
            img,
            f64::from(left),
            f64::from(top + h),
            f64::from(left + w),
            f64::from(top + h),
            BLACK,
        );
        text(img, left + w / 2 - 30, top + h + 30, "EPOCH", BLACK, 2);
        for (i, (ys, colour, name)) in series.iter().enumerate() {
            for j in 1..ys.len() {
                line(
                    img,
                    px(xs[j - 1]),
                    py(ys[j - 1]),
                    px(xs[j]),
                    py(ys[j]),
                    *colour,
                );
            }
            for j in 0..ys.len() {
                dot(img, px(xs[j]), py(ys[j]), *colour);
            }
            let lx = left + 10 + 150 * i as u32;
            let ly = HEIGHT - 22;
            for dx in 0..16 {
                for dy in 0..3 {
                    put(img, i64::from(lx + dx), i64::from(ly + 5 + dy), *colour);
                }
            }
            text(img, lx + 22, ly, name, BLACK, 2);
        }
    };
    panel(
        &mut img,
        0,
        "LOSS",
        max_loss * 1.1,
        &[
            (&loss, LOSS_COLOURS[0], "TRAIN"),
            (&eval_loss, LOSS_COLOURS[1], "EVAL"),
        ],
    );
    let acc: Vec<f64> = epochs
        .iter()
        .map(|e| f64::from(e.validation.weighted()))
        .collect();
    let pos: Vec<f64> = epochs
        .iter()
        .map(|e| f64::from(e.validation.positive_accuracy))
        .collect();
    let neg: Vec<f64> = epochs
        .iter()
        .map(|e| f64::from(e.validation.negative_accuracy))
        .collect();
    panel(
        &mut img,
        WIDTH / 2,
        "RECOGNITION ACCURACY",
        1.0,
        &[
            (&acc, ACC_COLOURS[0], "WEIGHTED"),
            (&pos, ACC_COLOURS[1], "POS"),
            (&neg, ACC_COLOURS[2], "NEG"),
        ],
    );
    img
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn dot(img: &mut RgbImage, x: f64, y: f64, c: Rgb<u8>) {
    for dx in -2..=2 {
        for dy in -2..=2 {
            put(img, x.round() as i64 + dx, y.round() as i64 + dy, c);
        }
    }
}

/// A 2-pixel-wide line.
fn line(img: &mut RgbImage, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb<u8>) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as i64;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        put(img, x.round() as i64, y.round() as i64, c);
        put(img, x.round() as i64 + 1, y.round() as i64, c);
        put(img, x.round() as i64, y.round() as i64 + 1, c);
    }
}

/// Draws `s` (upper-cased) at `(x, y)` with the built-in font, each font pixel `scale`²
/// image pixels. Characters without a glyph are drawn as blanks.
pub fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, c: Rgb<u8>, scale: u32) {
    for (i, ch) in s.chars().enumerate() {
        let rows = glyph(ch.to_ascii_uppercase());
        let gx = x + i as u32 * 6 * scale;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for sx in 0..scale {
                        for sy in 0..scale {
                            put(
                                img,
                                i64::from(gx + col * scale + sx),
                                i64::from(y + r as u32 * scale + sy),
                                c,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// 5×7 glyphs: seven rows, bit 4 is the leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concepts_plugin_api::Recognition;

    fn epoch(e: u32, loss: f32, acc: f32) -> EpochReport {
        EpochReport {
            epoch: e,
            learning_rate: 1e-3,
            mean_loss: loss,
            validation: Recognition {
                accuracy: acc,
                positive_accuracy: acc * 0.5,
                negative_accuracy: 1.0,
                loss: loss / 2.0,
                examples: 10,
            },
            is_best: e == 2,
        }
    }

    #[test]
    fn plot_draws_series_text_and_the_best_epoch() {
        let img = plot(
            &[epoch(1, 2.0, 0.5), epoch(2, 1.0, 0.9), epoch(3, 0.5, 0.8)],
            Some(2),
        );
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(LOSS_COLOURS[0]) > 100);
        assert!(count(ACC_COLOURS[0]) > 100);
        assert!(count(BEST) > 100, "{}", count(BEST));
        // Titles and tick labels are drawn in black.
        assert!(count(BLACK) > 2000, "{}", count(BLACK));
        // Text is readable glyphs, not blocks: an "L" has a lit corner and an unlit centre.
        let mut t = RgbImage::from_pixel(12, 14, WHITE);
        text(&mut t, 0, 0, "l", BLACK, 2);
        assert_eq!(*t.get_pixel(0, 13), BLACK);
        assert_eq!(*t.get_pixel(6, 6), WHITE);
    }

    #[test]
    fn report_files_sit_beside_the_package() {
        let (j, p) = report_paths(Path::new("out/bo.ycpt"));
        assert_eq!(j, Path::new("out/bo.training.json"));
        assert_eq!(p, Path::new("out/bo.training.png"));
    }
}
