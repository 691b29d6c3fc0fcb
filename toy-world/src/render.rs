//! Scenes and the anti-aliased software rasteriser.
//!
//! Every shape is a signed distance function in the object's unit frame, and every pixel
//! averages a 4x4 grid of point samples. Only IEEE-exact operations touch pixel values
//! (see `math`), so a scene renders to the same bytes on every machine.

use std::sync::OnceLock;

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::attr::{Colour, Combo, Pattern, Shape, Size, Tone};
use crate::error::{Error, Result};
use crate::math::{hash_point, sin_cos};

/// Side of a square image in pixels, within [`ImageSize::MIN`]..=[`ImageSize::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct ImageSize(u32);

impl ImageSize {
    /// Smallest supported side.
    pub const MIN: u32 = 48;
    /// Largest supported side.
    pub const MAX: u32 = 64;
    /// The default, 48 px.
    pub const DEFAULT: ImageSize = ImageSize(48);

    /// Validates a side length.
    pub fn new(px: u32) -> Result<ImageSize> {
        if (Self::MIN..=Self::MAX).contains(&px) {
            Ok(ImageSize(px))
        } else {
            Err(Error::ImageSize {
                px,
                min: Self::MIN,
                max: Self::MAX,
            })
        }
    }

    /// The side in pixels.
    pub fn px(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for ImageSize {
    type Error = Error;
    fn try_from(px: u32) -> Result<ImageSize> {
        ImageSize::new(px)
    }
}

impl From<ImageSize> for u32 {
    fn from(s: ImageSize) -> u32 {
        s.0
    }
}

/// One drawn object. Coordinates are fractions of the image side, so a scene renders at
/// any [`ImageSize`].
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Intrinsic attributes.
    pub combo: Combo,
    /// The size class `radius` was drawn from.
    pub size: Size,
    /// Centre `[x, y]`, `y` pointing down.
    pub centre: [f32; 2],
    /// Radius of the disc the shape fits in.
    pub radius: f32,
    /// Clockwise rotation in degrees (the object's pose).
    pub rotation_deg: i32,
    /// Brightness offset added to both colours (a little lighting variation).
    pub shade: i8,
    /// Which shade of its main colour it is drawn in (the identity detail words miss).
    pub tone: Tone,
}

impl Object {
    /// Whether this object is exactly that instance: the combo in that tone.
    pub fn is(&self, combo: &Combo, tone: Tone) -> bool {
        self.combo == *combo && self.tone == tone
    }
}

/// Horizontal placement of an object, for position questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Centre left of 42% of the width.
    Left,
    /// Centre right of 58% of the width.
    Right,
}

impl Side {
    /// "left" or "right".
    pub fn name(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }
}

impl Object {
    /// Which side the object clearly sits on, if any.
    pub fn side(&self) -> Option<Side> {
        if self.centre[0] < 0.42 {
            Some(Side::Left)
        } else if self.centre[0] > 0.58 {
            Some(Side::Right)
        } else {
            None
        }
    }
}

/// Direction of a [`Background::Gradient`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Left to right.
    Horizontal,
    /// Top to bottom.
    Vertical,
    /// Top-left to bottom-right.
    Diagonal,
    /// Bottom-left to top-right.
    Antidiagonal,
}

/// What lies behind the objects.
#[derive(Clone, Debug, PartialEq)]
pub enum Background {
    /// One colour.
    Solid([u8; 3]),
    /// A linear blend between two colours.
    Gradient {
        /// Colour at the start.
        from: [u8; 3],
        /// Colour at the end.
        to: [u8; 3],
        /// Blend direction.
        direction: Direction,
    },
    /// A base colour with soft two-octave value noise on its brightness.
    Noise {
        /// Mean colour.
        base: [u8; 3],
        /// Peak brightness offset.
        amplitude: u8,
        /// Noise lattice seed.
        seed: u64,
    },
}

/// A background plus objects, drawn in order (later objects on top).
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    /// The backdrop.
    pub background: Background,
    /// The objects; placement keeps their bounding discs apart.
    pub objects: Vec<Object>,
}

impl Scene {
    /// Whether any object has exactly this combo (in any tone).
    pub fn contains(&self, combo: &Combo) -> bool {
        self.objects.iter().any(|o| o.combo == *combo)
    }

    /// Whether any object is this combo in this tone.
    pub fn contains_instance(&self, combo: &Combo, tone: Tone) -> bool {
        self.objects.iter().any(|o| o.is(combo, tone))
    }
}

/// Renders a scene to an RGB image.
pub fn render(scene: &Scene, size: ImageSize) -> RgbImage {
    const SS: u32 = 4;
    let px = size.px();
    let n = px as f32;
    let prepared: Vec<Prepared> = scene.objects.iter().map(|o| Prepared::new(o, n)).collect();
    let mut img = RgbImage::new(px, px);
    for y in 0..px {
        for x in 0..px {
            let mut sum = [0u32; 3];
            for sy in 0..SS {
                for sx in 0..SS {
                    let fx = (x as f32 + (sx as f32 + 0.5) / SS as f32) / n;
                    let fy = (y as f32 + (sy as f32 + 0.5) / SS as f32) / n;
                    let mut c = background_at(&scene.background, fx, fy);
                    for p in &prepared {
                        if let Some(oc) = p.colour_at(fx, fy) {
                            c = oc;
                        }
                    }
                    for k in 0..3 {
                        sum[k] += u32::from(c[k]);
                    }
                }
            }
            let d = SS * SS;
            let pixel = sum.map(|s| ((s + d / 2) / d) as u8);
            img.put_pixel(x, y, image::Rgb(pixel));
        }
    }
    img
}

/// Encodes an image as PNG with fixed settings, so equal images give equal bytes.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding an in-memory RGB8 image cannot fail");
    out
}

fn background_at(bg: &Background, fx: f32, fy: f32) -> [u8; 3] {
    match *bg {
        Background::Solid(c) => c,
        Background::Gradient {
            from,
            to,
            direction,
        } => {
            let t = match direction {
                Direction::Horizontal => fx,
                Direction::Vertical => fy,
                Direction::Diagonal => (fx + fy) * 0.5,
                Direction::Antidiagonal => (fx + 1.0 - fy) * 0.5,
            }
            .clamp(0.0, 1.0);
            [0, 1, 2].map(|k| {
                let (a, b) = (f32::from(from[k]), f32::from(to[k]));
                (a + (b - a) * t).round() as u8
            })
        }
        Background::Noise {
            base,
            amplitude,
            seed,
        } => {
            let v = 0.65 * value_noise(seed, fx * 4.0, fy * 4.0)
                + 0.35 * value_noise(seed ^ 0x5bd1_e995, fx * 11.0, fy * 11.0);
            let off = v * f32::from(amplitude);
            base.map(|c| (f32::from(c) + off).round().clamp(0.0, 255.0) as u8)
        }
    }
}

/// Smooth value noise in [-1, 1] on an integer lattice.
fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (tx, ty) = (x - x0, y - y0);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let (ix, iy) = (x0 as i32, y0 as i32);
    let h = |dx: i32, dy: i32| {
        let v = hash_point(seed, ix + dx, iy + dy) >> 40;
        (v as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let top = h(0, 0) + (h(1, 0) - h(0, 0)) * sx;
    let bottom = h(0, 1) + (h(1, 1) - h(0, 1)) * sx;
    top + (bottom - top) * sy
}

/// Shape geometry in the object's unit frame (`y` down), as a signed distance function.
enum Geometry {
    Disc(f32),
    Annulus {
        outer: f32,
        inner: f32,
    },
    Crescent {
        outer: f32,
        cut_centre: [f32; 2],
        cut: f32,
    },
    Polygon(Vec<[f32; 2]>),
}

impl Geometry {
    fn sdf(&self, q: [f32; 2]) -> f32 {
        let len = |v: [f32; 2]| (v[0] * v[0] + v[1] * v[1]).sqrt();
        match self {
            Geometry::Disc(r) => len(q) - r,
            Geometry::Annulus { outer, inner } => {
                let l = len(q);
                (l - outer).max(inner - l)
            }
            Geometry::Crescent {
                outer,
                cut_centre,
                cut,
            } => {
                let a = len(q) - outer;
                let b = cut - len([q[0] - cut_centre[0], q[1] - cut_centre[1]]);
                a.max(b)
            }
            Geometry::Polygon(v) => polygon_sdf(v, q),
        }
    }

    /// Distance used by [`Pattern::Border`]: a ring's border follows its outer edge only.
    fn border_sdf(&self, q: [f32; 2]) -> f32 {
        match self {
            Geometry::Annulus { outer, .. } => (q[0] * q[0] + q[1] * q[1]).sqrt() - outer,
            _ => self.sdf(q),
        }
    }
}

fn polygon_sdf(v: &[[f32; 2]], p: [f32; 2]) -> f32 {
    let mut d2 = f32::MAX;
    let mut inside = false;
    for i in 0..v.len() {
        let a = v[i];
        let b = v[(i + 1) % v.len()];
        let e = [b[0] - a[0], b[1] - a[1]];
        let w = [p[0] - a[0], p[1] - a[1]];
        let t = ((w[0] * e[0] + w[1] * e[1]) / (e[0] * e[0] + e[1] * e[1])).clamp(0.0, 1.0);
        let dd = [w[0] - e[0] * t, w[1] - e[1] * t];
        d2 = d2.min(dd[0] * dd[0] + dd[1] * dd[1]);
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1]);
            if p[0] < x {
                inside = !inside;
            }
        }
    }
    let d = d2.sqrt();
    if inside {
        -d
    } else {
        d
    }
}

fn regular(n: usize, radius: f64, phase_deg: f64, dy: f64) -> Vec<[f32; 2]> {
    (0..n)
        .map(|i| {
            let a = (phase_deg + 360.0 * i as f64 / n as f64).to_radians();
            let (s, c) = sin_cos(a);
            [(radius * c) as f32, (radius * s + dy) as f32]
        })
        .collect()
}

fn geometry(shape: Shape) -> &'static Geometry {
    static ALL: OnceLock<Vec<Geometry>> = OnceLock::new();
    let all = ALL.get_or_init(|| Shape::ALL.iter().map(|&s| build_geometry(s)).collect());
    &all[shape as usize]
}

fn build_geometry(shape: Shape) -> Geometry {
    match shape {
        Shape::Circle => Geometry::Disc(0.94),
        Shape::Square => {
            let h = 0.76;
            Geometry::Polygon(vec![[-h, -h], [h, -h], [h, h], [-h, h]])
        }
        Shape::Triangle => Geometry::Polygon(vec![[0.0, -0.9], [0.98, 0.78], [-0.98, 0.78]]),
        Shape::Star => {
            let outer = regular(5, 1.0, -90.0, 0.08);
            let inner = regular(5, 0.46, -54.0, 0.08);
            Geometry::Polygon(
                outer
                    .into_iter()
                    .zip(inner)
                    .flat_map(|(a, b)| [a, b])
                    .collect(),
            )
        }
        Shape::Heart => {
            let n = 72;
            let pts = (0..n)
                .map(|i| {
                    let t = 2.0 * std::f64::consts::PI * i as f64 / n as f64;
                    let (s1, c1) = sin_cos(t);
                    let (_, c2) = sin_cos(2.0 * t);
                    let (_, c3) = sin_cos(3.0 * t);
                    let (_, c4) = sin_cos(4.0 * t);
                    let x = 16.0 * s1 * s1 * s1;
                    let y = 13.0 * c1 - 5.0 * c2 - 2.0 * c3 - c4;
                    [(x / 17.0) as f32, (-(y + 2.5) / 17.5) as f32]
                })
                .collect();
            Geometry::Polygon(pts)
        }
        Shape::Diamond => {
            Geometry::Polygon(vec![[0.0, -1.0], [0.68, 0.0], [0.0, 1.0], [-0.68, 0.0]])
        }
        Shape::Cross => {
            let (a, l) = (0.34, 0.92);
            Geometry::Polygon(vec![
                [-a, -l],
                [a, -l],
                [a, -a],
                [l, -a],
                [l, a],
                [a, a],
                [a, l],
                [-a, l],
                [-a, a],
                [-l, a],
                [-l, -a],
                [-a, -a],
            ])
        }
        Shape::Hexagon => Geometry::Polygon(regular(6, 0.92, 0.0, 0.0)),
        Shape::Ring => Geometry::Annulus {
            outer: 0.95,
            inner: 0.44,
        },
        Shape::Moon => Geometry::Crescent {
            outer: 0.95,
            cut_centre: [0.5, -0.22],
            cut: 0.72,
        },
    }
}

/// An object with its per-render constants worked out.
struct Prepared {
    geometry: &'static Geometry,
    pattern: Pattern,
    main: [u8; 3],
    secondary: [u8; 3],
    centre: [f32; 2],
    radius: f32,
    sin: f32,
    cos: f32,
    /// Pattern scales in unit-frame units, floored so patterns stay visible when small.
    stripe: f32,
    dot: f32,
    check: f32,
    border: f32,
}

impl Prepared {
    fn new(object: &Object, side_px: f32) -> Prepared {
        let shade = |rgb: [u8; 3]| {
            rgb.map(|v| (i16::from(v) + i16::from(object.shade)).clamp(0, 255) as u8)
        };
        let (s, c) = sin_cos(f64::from(object.rotation_deg).to_radians());
        let r_px = (object.radius * side_px).max(1.0);
        // Narrow shapes get a finer pattern so more than one dot or stripe fits.
        let k = match object.combo.shape() {
            Shape::Star | Shape::Moon => 0.8f32,
            Shape::Diamond | Shape::Cross => 0.88,
            _ => 1.0,
        };
        Prepared {
            geometry: geometry(object.combo.shape()),
            pattern: object.combo.pattern(),
            main: shade(object.combo.colour().toned_rgb(object.tone)),
            secondary: object.combo.secondary().map_or([0; 3], |c| shade(c.rgb())),
            centre: object.centre,
            radius: object.radius,
            sin: s as f32,
            cos: c as f32,
            stripe: (0.5 * k).max(5.0 / r_px),
            dot: (0.62 * k).max(5.6 / r_px),
            check: (0.46 * k).max(4.2 / r_px),
            border: (0.28f32).max(2.6 / r_px),
        }
    }

    fn colour_at(&self, fx: f32, fy: f32) -> Option<[u8; 3]> {
        let dx = (fx - self.centre[0]) / self.radius;
        let dy = (fy - self.centre[1]) / self.radius;
        if dx * dx + dy * dy > 1.3 {
            return None;
        }
        // Undo the clockwise rotation to get into the unit frame.
        let q = [
            self.cos * dx + self.sin * dy,
            -self.sin * dx + self.cos * dy,
        ];
        if self.geometry.sdf(q) > 0.0 {
            return None;
        }
        let frac = |v: f32| v - v.floor();
        let secondary = match self.pattern {
            Pattern::Solid => false,
            Pattern::Stripes => frac(q[1] / self.stripe + 0.25) < 0.5,
            Pattern::Dots => {
                let row_h = self.dot * 0.866;
                let row = (q[1] / row_h).round();
                let shift = if (row as i32) & 1 == 0 { 0.0 } else { 0.5 };
                let col = (q[0] / self.dot - shift).round();
                let (cx, cy) = ((col + shift) * self.dot, row * row_h);
                let (ex, ey) = (q[0] - cx, q[1] - cy);
                let rr = 0.3 * self.dot;
                ex * ex + ey * ey < rr * rr
            }
            Pattern::Checks => {
                let i = (q[0] / self.check + 0.5).floor() as i32;
                let j = (q[1] / self.check + 0.5).floor() as i32;
                (i + j) & 1 == 1
            }
            Pattern::Border => self.geometry.border_sdf(q) > -self.border,
        };
        Some(if secondary { self.secondary } else { self.main })
    }
}

/// What a scene must hold, for [`compose`].
pub(crate) struct Wanted {
    pub combo: Combo,
    pub size: Size,
    /// The tone to draw; `None` draws one at random.
    pub tone: Option<Tone>,
}

impl Wanted {
    /// `combo` at `size`, in a random tone.
    pub fn any_tone(combo: Combo, size: Size) -> Wanted {
        Wanted {
            combo,
            size,
            tone: None,
        }
    }

    /// `combo` at `size`, in `tone`.
    pub fn toned(combo: Combo, size: Size, tone: Tone) -> Wanted {
        Wanted {
            combo,
            size,
            tone: Some(tone),
        }
    }
}

/// Places `required` objects (always, in order), then as many `optional` ones as fit,
/// then picks a background that contrasts with every object colour.
///
/// Callers keep required objects small enough to fit together (two required objects
/// are at most [`Size::Medium`]).
pub(crate) fn compose<R: Rng + ?Sized>(
    rng: &mut R,
    required: &[Wanted],
    optional: &[Wanted],
) -> Scene {
    let mut objects: Vec<Object> = Vec::new();
    for w in required {
        let mut placed = None;
        let mut scale = 1.0;
        while placed.is_none() {
            placed = try_place(rng, w, &objects, scale, 400);
            scale *= 0.93;
        }
        objects.extend(placed);
    }
    for w in optional {
        objects.extend(try_place(rng, w, &objects, 1.0, 100));
    }
    let mut avoid: Vec<[u8; 3]> = Vec::new();
    for o in &objects {
        avoid.push(o.combo.colour().toned_rgb(o.tone));
        avoid.extend(o.combo.secondary().map(Colour::rgb));
    }
    let background = random_background(rng, &avoid);
    Scene {
        background,
        objects,
    }
}

fn try_place<R: Rng + ?Sized>(
    rng: &mut R,
    w: &Wanted,
    placed: &[Object],
    scale: f32,
    tries: usize,
) -> Option<Object> {
    let (lo, hi) = w.size.diameter_range();
    let radius = rng.random_range(lo..=hi) * 0.5 * scale;
    let rotation_deg = rng.random_range(-30..=30);
    let shade = rng.random_range(-10i8..=10);
    let tone = w.tone.unwrap_or_else(|| Tone::random(rng));
    let margin = 0.01;
    let (min, max) = (radius + margin, 1.0 - radius - margin);
    for _ in 0..tries {
        let centre = if min < max {
            [rng.random_range(min..=max), rng.random_range(min..=max)]
        } else {
            [0.5, 0.5]
        };
        let clear = placed.iter().all(|o| {
            let (dx, dy) = (o.centre[0] - centre[0], o.centre[1] - centre[1]);
            let gap = o.radius + radius + 0.03;
            dx * dx + dy * dy >= gap * gap
        });
        if clear {
            return Some(Object {
                combo: w.combo,
                // A shrunk object is labelled by the size it ended up with.
                size: if scale < 1.0 {
                    Size::of_diameter(radius * 2.0)
                } else {
                    w.size
                },
                centre,
                radius,
                rotation_deg,
                shade,
                tone,
            });
        }
    }
    None
}

fn dist2(a: [u8; 3], b: [u8; 3]) -> i32 {
    (0..3)
        .map(|k| {
            let d = i32::from(a[k]) - i32::from(b[k]);
            d * d
        })
        .sum()
}

fn hsv(h: f32, s: f32, v: f32) -> [u8; 3] {
    let h6 = (h / 60.0).rem_euclid(6.0);
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r, g, b].map(|c| (c * 255.0).round().clamp(0.0, 255.0) as u8)
}

/// A muted background whose colours all stay at least a fixed RGB distance from `avoid`.
pub(crate) fn random_background<R: Rng + ?Sized>(rng: &mut R, avoid: &[[u8; 3]]) -> Background {
    const MIN_DIST2: i32 = 105 * 105;
    let score = |cs: &[[u8; 3]]| {
        cs.iter()
            .flat_map(|&c| avoid.iter().map(move |&a| dist2(a, c)))
            .min()
            .unwrap_or(i32::MAX)
    };
    let mut best: Option<(i32, Background)> = None;
    for _ in 0..300 {
        let h = rng.random_range(0.0f32..360.0);
        let s = rng.random_range(0.05f32..0.5);
        let v = rng.random_range(0.3f32..0.9);
        let base = hsv(h, s, v);
        let kind = rng.random_range(0..10);
        let (bg, colours) = if kind < 4 {
            (Background::Solid(base), vec![base])
        } else if kind < 7 {
            let other = hsv(
                h + rng.random_range(-50.0f32..50.0),
                (s + rng.random_range(-0.15f32..0.15)).clamp(0.0, 0.6),
                (v + rng.random_range(-0.3f32..0.3)).clamp(0.25, 0.95),
            );
            let direction = [
                Direction::Horizontal,
                Direction::Vertical,
                Direction::Diagonal,
                Direction::Antidiagonal,
            ][rng.random_range(0..4)];
            let bg = Background::Gradient {
                from: base,
                to: other,
                direction,
            };
            (bg, vec![base, other])
        } else {
            let amplitude = rng.random_range(8u8..=22);
            let a = i16::from(amplitude);
            let shifted = |d: i16| base.map(|c| (i16::from(c) + d).clamp(0, 255) as u8);
            let bg = Background::Noise {
                base,
                amplitude,
                seed: rng.random(),
            };
            (bg, vec![shifted(-a), base, shifted(a)])
        };
        let sc = score(&colours);
        if sc >= MIN_DIST2 {
            return bg;
        }
        if best.as_ref().is_none_or(|(b, _)| sc > *b) {
            best = Some((sc, bg));
        }
    }
    best.map(|(_, bg)| bg).expect("300 candidates were scored")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::Colour;

    fn silhouette(shape: Shape) -> Vec<bool> {
        let scene = Scene {
            background: Background::Solid([0, 0, 0]),
            objects: vec![Object {
                combo: Combo::solid(shape, Colour::White),
                size: Size::Large,
                centre: [0.5, 0.5],
                radius: 0.32,
                rotation_deg: 0,
                shade: 0,
                tone: Tone::default(),
            }],
        };
        render(&scene, ImageSize::DEFAULT)
            .pixels()
            .map(|p| p.0[0] > 127)
            .collect()
    }

    #[test]
    fn shapes_are_visually_distinct() {
        let masks: Vec<_> = Shape::ALL.iter().map(|&s| (s, silhouette(s))).collect();
        let mut worst = (f64::MAX, String::new());
        for (i, (sa, a)) in masks.iter().enumerate() {
            let area = a.iter().filter(|&&b| b).count();
            assert!(area > 200, "{sa} covers only {area} px");
            for (sb, b) in &masks[i + 1..] {
                let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
                let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
                let frac = differ as f64 / union as f64;
                if frac < worst.0 {
                    worst = (frac, format!("{sa} vs {sb}: {differ} of {union} px differ"));
                }
            }
        }
        // The closest pair (square vs hexagon) differs in about 17% of the pixels either
        // covers.
        assert!(worst.0 >= 0.12, "{}", worst.1);
    }

    #[test]
    fn image_size_is_validated() {
        assert!(ImageSize::new(47).is_err());
        assert!(ImageSize::new(65).is_err());
        assert_eq!(ImageSize::new(64).unwrap().px(), 64);
        assert_eq!(
            ImageSize::new(20).unwrap_err().to_string(),
            "image size 20 px is outside 48..=64"
        );
    }

    #[test]
    fn patterns_use_both_colours() {
        for &pattern in &Pattern::ALL[1..] {
            let combo =
                Combo::new(Shape::Square, Colour::Red, pattern, Some(Colour::Blue)).unwrap();
            let scene = Scene {
                background: Background::Solid([128, 128, 128]),
                objects: vec![Object {
                    combo,
                    size: Size::Medium,
                    centre: [0.5, 0.5],
                    radius: 0.22,
                    rotation_deg: 10,
                    shade: 0,
                    tone: Tone::default(),
                }],
            };
            let img = render(&scene, ImageSize::DEFAULT);
            let count = |rgb: [u8; 3]| img.pixels().filter(|p| dist2(p.0, rgb) < 400).count();
            let (red, blue) = (count(Colour::Red.rgb()), count(Colour::Blue.rgb()));
            // Both colours must cover a visible share of a 21 px object.
            assert!(red >= 40 && blue >= 30, "{pattern}: red {red}, blue {blue}");
        }
    }

    #[test]
    fn background_contrasts_with_objects() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let avoid = [
            Colour::White.rgb(),
            Colour::Black.rgb(),
            Colour::Yellow.rgb(),
        ];
        for _ in 0..50 {
            let bg = random_background(&mut rng, &avoid);
            let base = match bg {
                Background::Solid(c) => c,
                Background::Gradient { from, .. } => from,
                Background::Noise { base, .. } => base,
            };
            for a in avoid {
                assert!(dist2(a, base) >= 90 * 90, "{base:?} too close to {a:?}");
            }
        }
    }
}
