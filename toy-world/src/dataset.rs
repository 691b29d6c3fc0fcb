//! The Yo'LLaVA-style dataset writer behind `concepts toy dataset`.
//!
//! Layout under `DIR` (documented in `toy-world/README.md`):
//!
//! ```text
//! subjects.json                 names, descriptions, attributes, tone, category, file lists
//! <subject>/train/NNN.png       training photos of the subject
//! <subject>/test/NNN.png        held-back photos of the subject
//! twins/<subject>/NNN.png       held-back photos of the subject's twins (same combo, other tone)
//! qa/<subject>.json             text and visual A/B questions
//! negatives/NNN.png             pool without any subject: generic scenes, look-alikes, twins
//! negatives/index.json          what each negative shows
//! multi/NNN.png                 photos with two or three subjects, or subjects with a
//!                               look-alike or a twin of another subject
//! multi/labels.json             who is in each multi photo, and who only seems to be
//! ```
//!
//! Layout 2 added tones (the identity detail), twins and three-subject photos; a layout-1
//! reader that ignores unknown fields still reads everything it knew.

use std::fs;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::Serialize;

use crate::attr::{Attribute, Combo, Difficulty, Tone};
use crate::error::{Error, Result};
use crate::render::{encode_png, render, ImageSize, Scene};
use crate::subject::{
    choose_subjects, generic_scene, group_photo, lookalike, photo_in_tone, photo_of, stream,
    Member, Sizing, Subject,
};
use crate::tasks::{intrinsic_choices, visual_choice, Choice, Letter};
use crate::text::SKS;

/// Version of the folder layout, written to `subjects.json`.
pub const LAYOUT_VERSION: u32 = 2;

/// How much to write. Counts are validated by [`write_dataset`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetConfig {
    /// Side of every image.
    pub image_size: ImageSize,
    /// Photos in `<subject>/train/` (1-100).
    pub train_per_subject: usize,
    /// Photos in `<subject>/test/` (1-100).
    pub test_per_subject: usize,
    /// Generic scenes in `negatives/` (0-10000).
    pub generic_negatives: usize,
    /// Look-alike scenes per subject in `negatives/` (0-1000).
    pub lookalikes_per_subject: usize,
    /// Photos of each subject's twins in `negatives/` (0-1000); the held-back twins in
    /// `twins/<subject>/` are as many as its test photos.
    pub twins_per_subject: usize,
    /// Photos in `multi/` (0-10000); none are written for fewer than two subjects.
    pub multi_photos: usize,
    /// Replace a non-empty `DIR`; otherwise such a `DIR` is an error.
    pub overwrite: bool,
}

impl DatasetConfig {
    /// The sizes `concepts toy dataset` uses: 5 train and 10 test photos per subject,
    /// 100 generic negatives, 20 look-alikes and 10 twins per subject and 40 multi photos at
    /// 48 px.
    pub fn standard() -> DatasetConfig {
        DatasetConfig {
            image_size: ImageSize::DEFAULT,
            train_per_subject: 5,
            test_per_subject: 10,
            generic_negatives: 100,
            lookalikes_per_subject: 20,
            twins_per_subject: 10,
            multi_photos: 40,
            overwrite: false,
        }
    }

    fn validate(&self) -> Result<()> {
        let checks: [(&'static str, usize, usize, usize, &'static str); 6] = [
            (
                "train_per_subject",
                self.train_per_subject,
                1,
                100,
                "1..=100",
            ),
            ("test_per_subject", self.test_per_subject, 1, 100, "1..=100"),
            (
                "generic_negatives",
                self.generic_negatives,
                0,
                10_000,
                "0..=10000",
            ),
            (
                "lookalikes_per_subject",
                self.lookalikes_per_subject,
                0,
                1000,
                "0..=1000",
            ),
            (
                "twins_per_subject",
                self.twins_per_subject,
                0,
                1000,
                "0..=1000",
            ),
            ("multi_photos", self.multi_photos, 0, 10_000, "0..=10000"),
        ];
        for (field, value, lo, hi, expected) in checks {
            if !(lo..=hi).contains(&value) {
                return Err(Error::DatasetConfig {
                    field,
                    value,
                    expected,
                });
            }
        }
        Ok(())
    }
}

/// What [`write_dataset`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSummary {
    /// The final directory.
    pub dir: PathBuf,
    /// The seed.
    pub seed: u64,
    /// The subjects, in `subjects.json` order.
    pub subjects: Vec<Subject>,
    /// PNG files written.
    pub images: usize,
    /// A/B questions written across `qa/`.
    pub questions: usize,
}

#[derive(Serialize)]
struct SubjectsFile<'a> {
    format: &'static str,
    version: u32,
    seed: u64,
    image_size: u32,
    held_out_rule: &'static str,
    subjects: Vec<SubjectEntry<'a>>,
}

#[derive(Serialize)]
struct SubjectEntry<'a> {
    name: &'a str,
    category: &'static str,
    description: String,
    attributes: &'a Combo,
    tone: Tone,
    train: Vec<String>,
    test: Vec<String>,
    twins: Vec<String>,
}

#[derive(Serialize)]
struct QaFile<'a> {
    subject: &'a str,
    /// The placeholder the runtime replaces with the subject's concept marker.
    placeholder: &'static str,
    text: Vec<Choice>,
    visual: Vec<VisualChoice>,
}

#[derive(Serialize)]
struct VisualChoice {
    image: String,
    split: &'static str,
    #[serde(flatten)]
    choice: Choice,
}

#[derive(Serialize)]
struct ObjectLabel {
    description: String,
    attributes: Combo,
    tone: Tone,
}

#[derive(Serialize)]
struct NegativeEntry<'a> {
    image: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lookalike_of: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    twin_of: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    differs_in: Option<Attribute>,
    #[serde(skip_serializing_if = "Option::is_none")]
    difficulty: Option<Difficulty>,
    objects: Vec<ObjectLabel>,
}

#[derive(Serialize)]
struct MultiEntry<'a> {
    image: String,
    subjects: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lookalikes: Vec<LookalikeLabel<'a>>,
    /// Subjects whose twin (same description, another tone) is in the photo, not they.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    twins: Vec<&'a str>,
    /// "equal" or "unequal" sizes of the required objects.
    sizing: &'static str,
}

#[derive(Serialize)]
struct LookalikeLabel<'a> {
    of: &'a str,
    differs_in: Attribute,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn labels(scene: &Scene) -> Vec<ObjectLabel> {
    scene
        .objects
        .iter()
        .map(|o| ObjectLabel {
            description: o.combo.description(),
            attributes: o.combo,
            tone: o.tone,
        })
        .collect()
}

/// Accumulates files under the temporary root.
struct Writer {
    root: PathBuf,
    size: ImageSize,
    images: usize,
}

impl Writer {
    fn png(&mut self, rel: &str, scene: &Scene) -> Result<()> {
        let path = self.root.join(rel);
        let bytes = encode_png(&render(scene, self.size));
        fs::write(&path, bytes).map_err(io("write", &path))?;
        self.images += 1;
        Ok(())
    }

    fn json<T: Serialize>(&self, rel: &str, value: &T) -> Result<()> {
        let path = self.root.join(rel);
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        fs::write(&path, bytes).map_err(io("write", &path))
    }

    fn dir(&self, rel: &str) -> Result<()> {
        let path = self.root.join(rel);
        fs::create_dir_all(&path).map_err(io("create", &path))
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(Error::Io {
            op: "read",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Writes a dataset of `n_subjects` held-out subjects for `seed` into `dir`.
///
/// Output depends only on `(seed, n_subjects, cfg)`: the same arguments give byte-identical
/// files. Everything is written into a hidden sibling `.<name>.tmp-<pid>` and renamed into
/// place at the end, so `dir` never holds a half-written dataset. A non-empty `dir` is
/// refused unless `cfg.overwrite` is set.
pub fn write_dataset(
    dir: &Path,
    seed: u64,
    n_subjects: usize,
    cfg: &DatasetConfig,
) -> Result<DatasetSummary> {
    cfg.validate()?;
    if n_subjects == 0 {
        return Err(Error::DatasetConfig {
            field: "n_subjects",
            value: 0,
            expected: "1..=100",
        });
    }
    let subjects = choose_subjects(seed, n_subjects)?;
    if !cfg.overwrite && !is_empty_dir(dir)? {
        return Err(Error::NotEmpty {
            path: dir.to_path_buf(),
        });
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io("create", parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
    }
    fs::create_dir(&tmp).map_err(io("create", &tmp))?;
    let mut writer = Writer {
        root: tmp.clone(),
        size: cfg.image_size,
        images: 0,
    };
    let written = write_contents(&mut writer, seed, &subjects, cfg);
    let questions = match written {
        Ok(q) => q,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let publish = || -> Result<()> {
        if dir.exists() {
            if is_empty_dir(dir)? {
                fs::remove_dir(dir).map_err(io("remove", dir))?;
            } else if cfg.overwrite {
                fs::remove_dir_all(dir).map_err(io("remove", dir))?;
            } else {
                return Err(Error::NotEmpty {
                    path: dir.to_path_buf(),
                });
            }
        }
        fs::rename(&tmp, dir).map_err(io("rename", &tmp))
    };
    if let Err(e) = publish() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(DatasetSummary {
        dir: dir.to_path_buf(),
        seed,
        subjects,
        images: writer.images,
        questions,
    })
}

/// Writes everything into `w.root`; returns the number of A/B questions.
fn write_contents<'a>(
    w: &mut Writer,
    seed: u64,
    subjects: &'a [Subject],
    cfg: &DatasetConfig,
) -> Result<usize> {
    let avoid: Vec<Combo> = subjects.iter().map(|s| *s.combo()).collect();
    let mut entries = Vec::new();
    let mut questions = 0;
    w.dir("qa")?;
    for s in subjects {
        let name = s.name();
        let mut qa = QaFile {
            subject: name,
            placeholder: SKS,
            text: Vec::new(),
            visual: Vec::new(),
        };
        let mut lists = [Vec::new(), Vec::new()];
        for (k, (split, count)) in [
            ("train", cfg.train_per_subject),
            ("test", cfg.test_per_subject),
        ]
        .into_iter()
        .enumerate()
        {
            w.dir(&format!("{name}/{split}"))?;
            for i in 0..count {
                let mut rng = stream(seed, &format!("{name}/{split}/{i}"));
                let scene = photo_in_tone(&mut rng, *s.combo(), s.tone(), &avoid);
                let rel = format!("{name}/{split}/{i:03}.png");
                w.png(&rel, &scene)?;
                if let Some(choice) = visual_choice(&mut rng, SKS, &scene, 0) {
                    qa.visual.push(VisualChoice {
                        image: rel.clone(),
                        split,
                        choice,
                    });
                }
                lists[k].push(rel);
            }
        }
        // Every text question about each attribute: the right value against each wrong one, on
        // both sides. A couple of drawn questions per attribute left text QA at the mercy of
        // which wrong option was drawn (one question moved a topic's accuracy by 8 points).
        for &attr in Attribute::ALL {
            qa.text.extend(
                intrinsic_choices(SKS, s.combo(), attr)
                    .into_iter()
                    .filter(|choice| {
                        let wrong = match choice.answer {
                            Letter::A => &choice.option_b,
                            Letter::B => &choice.option_a,
                        };
                        attr != Attribute::Colour || !main_colour_is_unseeable(s.combo(), wrong)
                    }),
            );
        }
        questions += qa.text.len() + qa.visual.len();
        w.json(&format!("qa/{name}.json"), &qa)?;
        w.dir(&format!("twins/{name}"))?;
        let mut twins = Vec::new();
        for i in 0..cfg.test_per_subject {
            let mut rng = stream(seed, &format!("twins/{name}/{i}"));
            let tone = s.tone().other(&mut rng);
            let rel = format!("twins/{name}/{i:03}.png");
            w.png(&rel, &photo_in_tone(&mut rng, *s.combo(), tone, &avoid))?;
            twins.push(rel);
        }
        let [train, test] = lists;
        entries.push(SubjectEntry {
            name,
            category: "object",
            description: s.description(),
            attributes: s.combo(),
            tone: s.tone(),
            train,
            test,
            twins,
        });
    }
    w.json(
        "subjects.json",
        &SubjectsFile {
            format: "concepts-toy-dataset",
            version: LAYOUT_VERSION,
            seed,
            image_size: cfg.image_size.px(),
            held_out_rule: "fnv1a64+splitmix64(shape/colour/pattern[/secondary]) % 1000 < 150",
            subjects: entries,
        },
    )?;

    w.dir("negatives")?;
    let mut negatives = Vec::new();
    // Writes the next negative, numbered in order, and its index entry.
    let mut negative = |w: &mut Writer, scene: &Scene, entry: NegativeEntry<'a>| -> Result<()> {
        let rel = format!("{:03}.png", negatives.len());
        w.png(&format!("negatives/{rel}"), scene)?;
        negatives.push(NegativeEntry {
            image: rel,
            objects: labels(scene),
            ..entry
        });
        Ok(())
    };
    let plain = |kind| NegativeEntry {
        image: String::new(),
        kind,
        lookalike_of: None,
        twin_of: None,
        differs_in: None,
        difficulty: None,
        objects: Vec::new(),
    };
    for i in 0..cfg.generic_negatives {
        let mut rng = stream(seed, &format!("negatives/generic/{i}"));
        negative(w, &generic_scene(&mut rng, &avoid), plain("generic"))?;
    }
    for s in subjects {
        for i in 0..cfg.lookalikes_per_subject {
            let mut rng = stream(seed, &format!("negatives/{}/{i}", s.name()));
            let (look, attr) = lookalike(&mut rng, s.combo(), &avoid);
            let entry = NegativeEntry {
                lookalike_of: Some(s.name()),
                differs_in: Some(attr),
                difficulty: Some(attr.difficulty()),
                ..plain("lookalike")
            };
            negative(w, &photo_of(&mut rng, look, &avoid), entry)?;
        }
    }
    for s in subjects {
        for i in 0..cfg.twins_per_subject {
            let mut rng = stream(seed, &format!("negatives/{}/twin/{i}", s.name()));
            let tone = s.tone().other(&mut rng);
            let scene = photo_in_tone(&mut rng, *s.combo(), tone, &avoid);
            let entry = NegativeEntry {
                twin_of: Some(s.name()),
                ..plain("twin")
            };
            negative(w, &scene, entry)?;
        }
    }
    w.json("negatives/index.json", &negatives)?;

    w.dir("multi")?;
    let mut multi = Vec::new();
    if subjects.len() >= 2 {
        for i in 0..cfg.multi_photos {
            let mut rng = stream(seed, &format!("multi/{i}"));
            let entry = multi_photo(&mut rng, subjects, &avoid);
            let rel = format!("{i:03}.png");
            w.png(&format!("multi/{rel}"), &entry.scene)?;
            multi.push(MultiEntry {
                image: rel,
                subjects: entry.present.iter().map(|&k| subjects[k].name()).collect(),
                lookalikes: entry.lookalikes,
                twins: entry.twins,
                sizing: match entry.sizing {
                    Sizing::Equal => "equal",
                    Sizing::Unequal => "unequal",
                },
            });
        }
    }
    w.json("multi/labels.json", &multi)?;
    Ok(questions)
}

/// One drawn multi photo and its labels.
struct MultiDraw<'a> {
    scene: Scene,
    present: Vec<usize>,
    lookalikes: Vec<LookalikeLabel<'a>>,
    twins: Vec<&'a str>,
    sizing: Sizing,
}

/// Four in ten photos show two subjects, three in ten three subjects (two when there are
/// only two), and three in ten show one or two subjects beside an impostor of another: its
/// twin or a look-alike, half each. Sizes are equal or unequal half the time each, and the
/// larger object is drawn at random, so a subject is not always the largest.
fn multi_photo<'a, R: Rng + ?Sized>(
    rng: &mut R,
    subjects: &'a [Subject],
    avoid: &[Combo],
) -> MultiDraw<'a> {
    let n = subjects.len();
    let mut order: Vec<usize> = (0..n).collect();
    for k in 0..n.min(3) {
        let j = rng.random_range(k..n);
        order.swap(k, j);
    }
    let sizing = if rng.random_bool(0.5) {
        Sizing::Equal
    } else {
        Sizing::Unequal
    };
    let kind = rng.random_range(0..10);
    let member = |s: &Subject| Member {
        combo: *s.combo(),
        tone: s.tone(),
    };
    let (present, mut members, lookalikes, twins) = if kind < 7 {
        let count = if kind >= 4 && n >= 3 { 3 } else { 2 };
        let present = order[..count].to_vec();
        let members = present.iter().map(|&k| member(&subjects[k])).collect();
        (present, members, Vec::new(), Vec::new())
    } else {
        let count = if n >= 3 && rng.random_bool(0.5) { 2 } else { 1 };
        let present = order[..count].to_vec();
        let target = &subjects[order[count]];
        let mut members: Vec<Member> = present.iter().map(|&k| member(&subjects[k])).collect();
        if rng.random_bool(0.5) {
            members.push(Member {
                combo: *target.combo(),
                tone: target.tone().other(rng),
            });
            (present, members, Vec::new(), vec![target.name()])
        } else {
            let (look, attr) = lookalike(rng, target.combo(), avoid);
            members.push(Member {
                combo: look,
                tone: Tone::random(rng),
            });
            let label = LookalikeLabel {
                of: target.name(),
                differs_in: attr,
            };
            (present, members, vec![label], Vec::new())
        }
    };
    // The impostor is not always last (drawn last, it would always be placed last).
    let last = members.len() - 1;
    members.swap(rng.random_range(0..=last), last);
    let scene = group_photo(rng, &members, sizing, avoid);
    MultiDraw {
        scene,
        present,
        lookalikes,
        twins,
        sizing,
    }
}

/// Whether "What colour is it?" with `wrong` as the other option has no answer a viewer can
/// see: `wrong` is the subject's own secondary colour and its pattern shows both colours over
/// equal areas. Such a question tests the world's naming convention, not the concept, so the
/// held-out question sets leave it out (the secondary colour has its own question).
fn main_colour_is_unseeable(combo: &Combo, wrong: &str) -> bool {
    combo.pattern().is_balanced() && combo.secondary().is_some_and(|c| c.name() == wrong)
}
