//! Subjects (the analogue of a user's pet) and their photos.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::attr::{random_combo, Attribute, Combo, Size, Tone};
use crate::error::{Error, Result};
use crate::math::{hash_bytes, splitmix64};
use crate::render::{compose, Scene, Wanted};
use crate::text::NAMES;

/// A named, fixed attribute combination in a fixed [`Tone`], whose photos vary in pose,
/// size, position, background and distractors. The tone is the subject's identity detail:
/// its *twins* have the same combo (the same description) in another tone. Invariant: the
/// combo is held out from pretraining and the name is 1-24 lowercase ASCII letters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SubjectRepr", into = "SubjectRepr")]
pub struct Subject {
    name: String,
    combo: Combo,
    tone: Tone,
}

#[derive(Serialize, Deserialize)]
struct SubjectRepr {
    name: String,
    combo: Combo,
    #[serde(default)]
    tone: Tone,
}

impl TryFrom<SubjectRepr> for Subject {
    type Error = Error;
    fn try_from(r: SubjectRepr) -> Result<Subject> {
        Ok(Subject::new(&r.name, r.combo)?.with_tone(r.tone))
    }
}

impl From<Subject> for SubjectRepr {
    fn from(s: Subject) -> SubjectRepr {
        SubjectRepr {
            name: s.name,
            combo: s.combo,
            tone: s.tone,
        }
    }
}

/// Largest `n` accepted by [`choose_subjects`].
pub const MAX_SUBJECTS: usize = 100;

impl Subject {
    /// Validates the name and that `combo` is held out; the tone is 0 (see [`Subject::with_tone`]).
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
            tone: Tone::default(),
        })
    }

    /// The same subject in `tone`.
    pub fn with_tone(self, tone: Tone) -> Subject {
        Subject { tone, ..self }
    }

    /// The shade of the main colour that this subject, and no twin of it, has.
    pub fn tone(&self) -> Tone {
        self.tone
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
    // Tones come from a stream of their own, so names and combos are those of layout v1.
    let mut tones = stream(seed, "tones");
    Ok(out
        .into_iter()
        .map(|s| s.with_tone(Tone::random(&mut tones)))
        .collect())
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
            Wanted::any_tone(
                combo,
                pick_size(rng, &[Size::Small, Size::Small, Size::Medium]),
            )
        })
        .collect()
}

/// A photo of `main` in a random tone (object 0, medium or large, 40-70% of the side) with
/// distractors that are none of `avoid` (in any tone) and no look-alike of `main`.
pub fn photo_of<R: Rng + ?Sized>(rng: &mut R, main: Combo, avoid: &[Combo]) -> Scene {
    main_object_photo(rng, main, None, avoid)
}

/// [`photo_of`] with the main object in `tone`: a photo of a subject (its own tone) or of one
/// of its twins (another tone).
pub fn photo_in_tone<R: Rng + ?Sized>(
    rng: &mut R,
    main: Combo,
    tone: Tone,
    avoid: &[Combo],
) -> Scene {
    main_object_photo(rng, main, Some(tone), avoid)
}

fn main_object_photo<R: Rng + ?Sized>(
    rng: &mut R,
    main: Combo,
    tone: Option<Tone>,
    avoid: &[Combo],
) -> Scene {
    let size = pick_size(rng, &[Size::Medium, Size::Large]);
    let keep = |c: &Combo| !avoid.contains(c) && c.differences(&main).len() >= 2;
    let optional = distractors(rng, &keep, &[main]);
    compose(
        rng,
        &[Wanted {
            combo: main,
            size,
            tone,
        }],
        &optional,
    )
}

/// A scene with 1-3 objects, none of them in `avoid`.
pub fn generic_scene<R: Rng + ?Sized>(rng: &mut R, avoid: &[Combo]) -> Scene {
    let first = random_combo(rng, |c| !avoid.contains(c));
    let size = pick_size(rng, Size::ALL);
    let keep = |c: &Combo| !avoid.contains(c);
    let optional = distractors(rng, &keep, &[first]);
    compose(rng, &[Wanted::any_tone(first, size)], &optional)
}

/// One object a [`group_photo`] must hold: a combo in a tone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The combo.
    pub combo: Combo,
    /// Its tone.
    pub tone: Tone,
}

/// How the members of a [`group_photo`] are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// All the same size class: medium for two members, small for three.
    Equal,
    /// One member (drawn at random, not always the first) is a class larger than the others.
    Unequal,
}

/// Two or three required objects (`members`, in order) sized by `sizing`, plus up to one
/// small distractor that is none of `avoid` and no look-alike of a member.
///
/// # Panics
///
/// If `members` has fewer than two or more than three entries.
pub fn group_photo<R: Rng + ?Sized>(
    rng: &mut R,
    members: &[Member],
    sizing: Sizing,
    avoid: &[Combo],
) -> Scene {
    assert!(
        (2..=3).contains(&members.len()),
        "a group photo has 2 or 3 members"
    );
    let equal = if members.len() == 2 {
        Size::Medium
    } else {
        Size::Small
    };
    let big = rng.random_range(0..members.len());
    let sizes: Vec<Size> = (0..members.len())
        .map(|i| match sizing {
            Sizing::Equal => equal,
            Sizing::Unequal if i == big => Size::Medium,
            Sizing::Unequal => Size::Small,
        })
        .collect();
    let required: Vec<Wanted> = members
        .iter()
        .zip(&sizes)
        .map(|(m, &size)| Wanted::toned(m.combo, size, m.tone))
        .collect();
    let optional = if members.len() == 2 {
        let combos: Vec<Combo> = members.iter().map(|m| m.combo).collect();
        small_distractor(rng, &combos, avoid)
    } else {
        Vec::new()
    };
    compose(rng, &required, &optional)
}

/// Two required objects side by side (both medium, random tones), plus up to one small
/// distractor.
pub fn pair_photo<R: Rng + ?Sized>(rng: &mut R, a: Combo, b: Combo, avoid: &[Combo]) -> Scene {
    let required = [
        Wanted::any_tone(a, Size::Medium),
        Wanted::any_tone(b, Size::Medium),
    ];
    let optional = small_distractor(rng, &[a, b], avoid);
    compose(rng, &required, &optional)
}

/// Half the time one small distractor that is none of `avoid` and no look-alike of `members`.
fn small_distractor<R: Rng + ?Sized>(
    rng: &mut R,
    members: &[Combo],
    avoid: &[Combo],
) -> Vec<Wanted> {
    if rng.random_bool(0.5) {
        let combo = random_combo(rng, |c| {
            !avoid.contains(c) && members.iter().all(|m| c.differences(m).len() >= 2)
        });
        vec![Wanted::any_tone(combo, Size::Small)]
    } else {
        Vec::new()
    }
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
