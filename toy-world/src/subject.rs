//! Subjects (the analogue of a user's pet) and their photos.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::attr::{random_combo, Attribute, Combo, Size};
use crate::error::{Error, Result};
use crate::math::{hash_bytes, splitmix64};
use crate::render::{compose, Scene, Wanted};
use crate::text::NAMES;

/// A named, fixed attribute combination whose photos vary in pose, size, position,
/// background and distractors. Invariant: the combo is held out from pretraining and the
/// name is 1-24 lowercase ASCII letters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SubjectRepr", into = "SubjectRepr")]
pub struct Subject {
    name: String,
    combo: Combo,
}

#[derive(Serialize, Deserialize)]
struct SubjectRepr {
    name: String,
    combo: Combo,
}

impl TryFrom<SubjectRepr> for Subject {
    type Error = Error;
    fn try_from(r: SubjectRepr) -> Result<Subject> {
        Subject::new(&r.name, r.combo)
    }
}

impl From<Subject> for SubjectRepr {
    fn from(s: Subject) -> SubjectRepr {
        SubjectRepr {
            name: s.name,
            combo: s.combo,
        }
    }
}

/// Largest `n` accepted by [`choose_subjects`].
pub const MAX_SUBJECTS: usize = 100;

impl Subject {
    /// Validates the name and that `combo` is held out.
    pub fn new(name: &str, combo: Combo) -> Result<Subject> {
        let ok = (1..=24).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase());
        if !ok {
            return Err(Error::SubjectName { name: name.into() });
        }
        if !combo.is_held_out() {
            return Err(Error::NotHeldOut {
                name: name.into(),
                key: combo.key(),
            });
        }
        Ok(Subject {
            name: name.into(),
            combo,
        })
    }

    /// The identifier, also the dataset folder name ("ziggy").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The intrinsic attributes.
    pub fn combo(&self) -> &Combo {
        &self.combo
    }

    /// The true English description: "a red star with blue dots".
    pub fn description(&self) -> String {
        self.combo.description()
    }
}

/// A ChaCha8 stream for one labelled part of a seeded job, independent of the others.
pub(crate) fn stream(seed: u64, label: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(splitmix64(seed) ^ hash_bytes(label.as_bytes()))
}

/// `n` subjects for `seed`: distinct names from [`NAMES`] (lowercased) and held-out combos
/// that differ pairwise in at least two attributes, so no subject is another's look-alike.
pub fn choose_subjects(seed: u64, n: usize) -> Result<Vec<Subject>> {
    if n > MAX_SUBJECTS {
        return Err(Error::TooManySubjects {
            requested: n,
            max: MAX_SUBJECTS,
        });
    }
    let mut rng = stream(seed, "subjects");
    let mut names: Vec<&str> = NAMES.to_vec();
    let mut out: Vec<Subject> = Vec::with_capacity(n);
    while out.len() < n {
        let name = names.swap_remove(rng.random_range(0..names.len()));
        let combo = random_combo(&mut rng, |c| {
            c.is_held_out() && out.iter().all(|s| s.combo.differences(c).len() >= 2)
        });
        out.push(Subject::new(&name.to_ascii_lowercase(), combo)?);
    }
    Ok(out)
}

fn pick_size<R: Rng + ?Sized>(rng: &mut R, sizes: &[Size]) -> Size {
    sizes[rng.random_range(0..sizes.len())]
}

/// 0-2 small or medium distractors accepted by `keep`.
fn distractors<R: Rng + ?Sized>(
    rng: &mut R,
    keep: &dyn Fn(&Combo) -> bool,
    already: &[Combo],
) -> Vec<Wanted> {
    let n = [0, 1, 1, 2, 2][rng.random_range(0..5)];
    let mut taken = already.to_vec();
    (0..n)
        .map(|_| {
            let combo = random_combo(rng, |c| keep(c) && !taken.contains(c));
            taken.push(combo);
            Wanted {
                combo,
                size: pick_size(rng, &[Size::Small, Size::Small, Size::Medium]),
            }
        })
        .collect()
}

/// A photo of `main` (object 0, medium or large, 40-70% of the side) with distractors that
/// are none of `avoid` and no look-alike of `main`.
pub fn photo_of<R: Rng + ?Sized>(rng: &mut R, main: Combo, avoid: &[Combo]) -> Scene {
    let size = pick_size(rng, &[Size::Medium, Size::Large]);
    let keep = |c: &Combo| !avoid.contains(c) && c.differences(&main).len() >= 2;
    let optional = distractors(rng, &keep, &[main]);
    compose(rng, &[Wanted { combo: main, size }], &optional)
}

/// A scene with 1-3 objects, none of them in `avoid`.
pub fn generic_scene<R: Rng + ?Sized>(rng: &mut R, avoid: &[Combo]) -> Scene {
    let first = random_combo(rng, |c| !avoid.contains(c));
    let size = pick_size(rng, Size::ALL);
    let keep = |c: &Combo| !avoid.contains(c);
    let optional = distractors(rng, &keep, &[first]);
    compose(rng, &[Wanted { combo: first, size }], &optional)
}

/// Two required objects side by side (both medium), plus up to one small distractor.
pub fn pair_photo<R: Rng + ?Sized>(rng: &mut R, a: Combo, b: Combo, avoid: &[Combo]) -> Scene {
    let required = [
        Wanted {
            combo: a,
            size: Size::Medium,
        },
        Wanted {
            combo: b,
            size: Size::Medium,
        },
    ];
    let optional: Vec<Wanted> = if rng.random_bool(0.5) {
        let combo = random_combo(rng, |c| {
            !avoid.contains(c) && c.differences(&a).len() >= 2 && c.differences(&b).len() >= 2
        });
        vec![Wanted {
            combo,
            size: Size::Small,
        }]
    } else {
        Vec::new()
    };
    compose(rng, &required, &optional)
}

/// A look-alike of `combo` differing in one attribute: hard (pattern or secondary colour)
/// two times in three, medium (shape or main colour) otherwise. Never one of `avoid`.
///
/// # Panics
///
/// If `avoid` covers every look-alike of the chosen difficulty (it never does for
/// subjects from [`choose_subjects`], which differ pairwise in two attributes).
pub fn lookalike<R: Rng + ?Sized>(
    rng: &mut R,
    combo: &Combo,
    avoid: &[Combo],
) -> (Combo, Attribute) {
    let hard = rng.random_range(0..3) < 2;
    let attrs: &[Attribute] = if hard {
        &[Attribute::Pattern, Attribute::Secondary]
    } else {
        &[Attribute::Shape, Attribute::Colour]
    };
    let pool: Vec<(Combo, Attribute)> = attrs
        .iter()
        .flat_map(|&a| combo.lookalikes(a).into_iter().map(move |c| (c, a)))
        .filter(|(c, _)| !avoid.contains(c))
        .collect();
    pool[rng.random_range(0..pool.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_held_out_distinct_and_seeded() {
        let a = choose_subjects(1, 30).unwrap();
        assert_eq!(a, choose_subjects(1, 30).unwrap());
        assert_ne!(a, choose_subjects(2, 30).unwrap());
        for (i, s) in a.iter().enumerate() {
            assert!(s.combo().is_held_out());
            for t in &a[i + 1..] {
                assert_ne!(s.name(), t.name());
                assert!(s.combo().differences(t.combo()).len() >= 2);
            }
        }
        assert!(matches!(
            choose_subjects(1, MAX_SUBJECTS + 1),
            Err(Error::TooManySubjects { .. })
        ));
    }

    #[test]
    fn subject_validation() {
        let held = Combo::all().into_iter().find(Combo::is_held_out).unwrap();
        let kept = Combo::all().into_iter().find(|c| !c.is_held_out()).unwrap();
        assert!(Subject::new("ziggy", held).is_ok());
        assert!(matches!(
            Subject::new("Ziggy", held),
            Err(Error::SubjectName { .. })
        ));
        assert!(matches!(
            Subject::new("", held),
            Err(Error::SubjectName { .. })
        ));
        assert!(matches!(
            Subject::new("ziggy", kept),
            Err(Error::NotHeldOut { .. })
        ));
    }

    #[test]
    fn photos_keep_subjects_apart() {
        let subjects = choose_subjects(4, 3).unwrap();
        let combos: Vec<Combo> = subjects.iter().map(|s| *s.combo()).collect();
        let mut rng = stream(4, "test");
        for _ in 0..50 {
            let scene = photo_of(&mut rng, combos[0], &combos);
            assert_eq!(scene.objects[0].combo, combos[0]);
            assert!(scene.objects[1..]
                .iter()
                .all(|o| !combos.contains(&o.combo)));
            let (d0, d1) = Size::Medium.diameter_range();
            let d = scene.objects[0].radius * 2.0;
            assert!(
                d >= d0 * 0.99 && d <= Size::Large.diameter_range().1,
                "{d} {d1}"
            );
            let neg = generic_scene(&mut rng, &combos);
            assert!(neg.objects.iter().all(|o| !combos.contains(&o.combo)));
            let (look, attr) = lookalike(&mut rng, &combos[1], &combos);
            assert_eq!(look.differences(&combos[1]), [attr]);
            let pair = pair_photo(&mut rng, combos[0], combos[1], &combos);
            assert!(pair.contains(&combos[0]) && pair.contains(&combos[1]));
        }
    }
}
