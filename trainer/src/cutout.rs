//! A photo's main object cut from its background, for crowded views that look like one scene
//! rather than a photo pasted into another.
//!
//! The background is what can be reached from the photo's edge by small steps between
//! neighbouring pixels that also stay near a plane fitted to the edge's colours: a smooth
//! backdrop, a gradient or a light texture is crossed; an object's outline is a jump and stops
//! the fill. Everything the fill does not reach is foreground, and the main object is its
//! largest 4-connected region (holes inside it included). Photos where that region is tiny
//! or covers most of the frame have no clear main object; the caller then falls back to
//! pasting the whole photo.

use image::{GrayImage, Luma, RgbImage};

/// Largest colour step (any channel, 0–255) between neighbouring background pixels.
const STEP: i32 = 14;

/// Largest distance (any channel) of a background pixel from the plane fitted to the edge.
const FROM_PLANE: f64 = 60.0;

/// Width in pixels of the edge band the plane is fitted to.
const EDGE: u32 = 2;

/// The main object's share of the photo must lie in this range to be cut out.
const AREA: (f64, f64) = (0.01, 0.6);

/// The main object of a photo: its bounding box's pixels and a mask (255 inside the object).
#[derive(Debug, Clone)]
pub struct CutOut {
    pub pixels: RgbImage,
    pub mask: GrayImage,
}

/// Which pixels of `image` are background (row-major, `true` for background).
pub fn background(image: &RgbImage) -> Vec<bool> {
    let (w, h) = image.dimensions();
    let plane = edge_plane(image);
    let px = |x: u32, y: u32| image.get_pixel(x, y).0;
    let near_plane = |x: u32, y: u32| {
        let p = px(x, y);
        (0..3).all(|c| (f64::from(p[c]) - plane[c].at(x, y)).abs() <= FROM_PLANE)
    };
    let mut bg = vec![false; (w * h) as usize];
    let mut stack = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let edge = x == 0 || y == 0 || x + 1 == w || y + 1 == h;
            if edge && near_plane(x, y) {
                bg[(y * w + x) as usize] = true;
                stack.push((x, y));
            }
        }
    }
    while let Some((x, y)) = stack.pop() {
        let here = px(x, y);
        for (nx, ny) in neighbours(x, y, w, h) {
            let i = (ny * w + nx) as usize;
            if bg[i] || !near_plane(nx, ny) {
                continue;
            }
            let there = px(nx, ny);
            let step = (0..3)
                .map(|c| (i32::from(here[c]) - i32::from(there[c])).abs())
                .max()
                .unwrap_or(0);
            if step <= STEP {
                bg[i] = true;
                stack.push((nx, ny));
            }
        }
    }
    bg
}

/// The largest foreground region of `image`, cropped to its bounding box; `None` when it
/// covers less than 1 % or more than 60 % of the photo.
pub fn main_object(image: &RgbImage) -> Option<CutOut> {
    let (w, h) = image.dimensions();
    let bg = background(image);
    let mut label = vec![0u32; bg.len()];
    let mut best: Option<(usize, u32)> = None;
    let mut next = 0;
    let mut stack = Vec::new();
    for start in 0..bg.len() {
        if bg[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = ((i as u32) % w, (i as u32) / w);
            for (nx, ny) in neighbours(x, y, w, h) {
                let j = (ny * w + nx) as usize;
                if !bg[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            }
        }
        if best.is_none_or(|(s, _)| size > s) {
            best = Some((size, next));
        }
    }
    let (size, id) = best?;
    let share = size as f64 / bg.len() as f64;
    if !(AREA.0..=AREA.1).contains(&share) {
        return None;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, _) in label.iter().enumerate().filter(|(_, &l)| l == id) {
        let (x, y) = ((i as u32) % w, (i as u32) / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let pixels = image::imageops::crop_imm(image, x0, y0, cw, ch).to_image();
    let mask = GrayImage::from_fn(cw, ch, |x, y| {
        let inside = label[((y + y0) * w + x + x0) as usize] == id;
        Luma([if inside { 255 } else { 0 }])
    });
    Some(CutOut { pixels, mask })
}

/// The 4-neighbours of `(x, y)` inside a `w`×`h` frame.
fn neighbours(x: u32, y: u32, w: u32, h: u32) -> impl Iterator<Item = (u32, u32)> {
    [
        (x.wrapping_sub(1), y),
        (x + 1, y),
        (x, y.wrapping_sub(1)),
        (x, y + 1),
    ]
    .into_iter()
    .filter(move |&(nx, ny)| nx < w && ny < h)
}

/// `a + b·x + c·y`: one channel of the backdrop.
#[derive(Debug, Clone, Copy, Default)]
struct Plane([f64; 3]);

impl Plane {
    fn at(self, x: u32, y: u32) -> f64 {
        self.0[0] + self.0[1] * f64::from(x) + self.0[2] * f64::from(y)
    }
}

/// Per channel, the least-squares plane through the pixels of the photo's edge band.
fn edge_plane(image: &RgbImage) -> [Plane; 3] {
    let (w, h) = image.dimensions();
    // Normal equations: (AᵀA) p = Aᵀv with rows (1, x, y), one right-hand side per channel.
    let mut ata = [[0.0f64; 3]; 3];
    let mut atv = [[0.0f64; 3]; 3];
    for y in 0..h {
        for x in 0..w {
            let edge = x < EDGE || y < EDGE || x + EDGE >= w || y + EDGE >= h;
            if !edge {
                continue;
            }
            let row = [1.0, f64::from(x), f64::from(y)];
            let p = image.get_pixel(x, y).0;
            for i in 0..3 {
                for j in 0..3 {
                    ata[i][j] += row[i] * row[j];
                }
                for (c, &v) in p.iter().enumerate() {
                    atv[c][i] += row[i] * f64::from(v);
                }
            }
        }
    }
    let mut planes = [Plane::default(); 3];
    for (c, plane) in planes.iter_mut().enumerate() {
        // A one-pixel-wide photo makes the system singular: a flat backdrop at the mean.
        *plane = solve3(ata, atv[c]).map(Plane).unwrap_or(Plane([
            atv[c][0] / ata[0][0].max(1.0),
            0.0,
            0.0,
        ]));
    }
    planes
}

/// Solves the 3×3 system `m · p = v` by Cramer's rule; `None` when it is singular.
fn solve3(m: [[f64; 3]; 3], v: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(m);
    if d.abs() < 1e-9 {
        return None;
    }
    let mut p = [0.0; 3];
    for (k, out) in p.iter_mut().enumerate() {
        let mut mk = m;
        for r in 0..3 {
            mk[r][k] = v[r];
        }
        *out = det(mk) / d;
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A horizontal gradient with a disc of `radius` at `(cx, cy)`, and a smaller square.
    fn scene(radius: f64, cx: f64, cy: f64) -> RgbImage {
        RgbImage::from_fn(48, 48, |x, y| {
            let (fx, fy) = (f64::from(x), f64::from(y));
            if (fx - cx).hypot(fy - cy) <= radius {
                Rgb([220, 30, 30])
            } else if (40..44).contains(&x) && (4..8).contains(&y) {
                Rgb([20, 20, 200])
            } else {
                let g = 90 + (x * 2) as u8;
                Rgb([g, 140, 90])
            }
        })
    }

    #[test]
    fn cuts_the_largest_object_off_a_gradient() {
        let cut = main_object(&scene(10.0, 20.0, 26.0)).expect("a clear main object");
        let (w, h) = cut.pixels.dimensions();
        assert!((19..=22).contains(&w) && (19..=22).contains(&h), "{w}x{h}");
        let inside = cut.mask.pixels().filter(|p| p.0[0] == 255).count() as f64;
        let disc = std::f64::consts::PI * 100.0;
        assert!(
            (inside / disc - 1.0).abs() < 0.1,
            "{inside} pixels vs {disc}"
        );
        // Every masked pixel is the disc's red, none of the backdrop or the square.
        for (p, m) in cut.pixels.pixels().zip(cut.mask.pixels()) {
            assert_eq!(m.0[0] == 255, p.0 == [220, 30, 30]);
        }
        let bg = background(&scene(10.0, 20.0, 26.0));
        assert!(!bg[5 * 48 + 41], "the small square is foreground too");
        assert!(bg[47 * 48], "the gradient is background");
    }

    #[test]
    fn refuses_photos_without_a_clear_main_object() {
        let flat = RgbImage::from_pixel(48, 48, Rgb([100, 100, 100]));
        assert!(main_object(&flat).is_none(), "nothing in front");
        // A disc over the whole frame is backdrop; what is left is the 4x4 square, 0.7 %.
        assert!(
            main_object(&scene(40.0, 24.0, 24.0)).is_none(),
            "too small a main object"
        );
        // A red block inside a 3-pixel grey frame: 42 x 42 of 48 x 48 is 77 %.
        let filled = RgbImage::from_fn(48, 48, |x, y| {
            if (3..45).contains(&x) && (3..45).contains(&y) {
                Rgb([220, 30, 30])
            } else {
                Rgb([100, 100, 100])
            }
        });
        assert!(main_object(&filled).is_none(), "the object fills the frame");
        // The same block at 24 x 24 (25 %) is cut.
        let half = RgbImage::from_fn(48, 48, |x, y| {
            if (12..36).contains(&x) && (12..36).contains(&y) {
                Rgb([220, 30, 30])
            } else {
                Rgb([100, 100, 100])
            }
        });
        let cut = main_object(&half).expect("a clear main object");
        assert_eq!(cut.pixels.dimensions(), (24, 24));
    }
}
