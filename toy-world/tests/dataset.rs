//! `write_dataset`: layout, determinism, JSON contents and overwrite rules.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use toy_world::{write_dataset, Attribute, Combo, DatasetConfig, Error, ImageSize, Tone};

fn small_config() -> DatasetConfig {
    DatasetConfig {
        image_size: ImageSize::DEFAULT,
        train_per_subject: 2,
        test_per_subject: 3,
        generic_negatives: 2,
        lookalikes_per_subject: 2,
        twins_per_subject: 2,
        multi_photos: 3,
        overwrite: false,
    }
}

/// Every file under `dir`, relative and sorted, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Writes a dataset and compares its file list with `expect`, with subject names replaced
/// by `S0`, `S1`, ... in `subjects.json` order.
fn check(seed: u64, n_subjects: usize, expect: &str) -> BTreeMap<String, Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    let summary = write_dataset(&dir, seed, n_subjects, &small_config()).unwrap();
    let files = snapshot(&dir);
    let mut listing: Vec<String> = files.keys().cloned().collect();
    for (i, s) in summary.subjects.iter().enumerate() {
        for f in &mut listing {
            let generic = f
                .replacen(&format!("{}/", s.name()), &format!("S{i}/"), 1)
                .replace(&format!("qa/{}.json", s.name()), &format!("qa/S{i}.json"));
            *f = generic;
        }
    }
    listing.sort();
    assert_eq!(listing.join("\n"), expect.trim());
    let pngs = files.keys().filter(|k| k.ends_with(".png")).count();
    assert_eq!(summary.images, pngs);
    // No temporary directory is left next to the dataset.
    let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1);
    files
}

#[test]
fn layout_two_subjects() {
    check(7, 2, LAYOUT_2);
}

#[test]
fn same_seed_same_bytes_different_seed_different_bytes() {
    let a = check(11, 2, LAYOUT_2);
    let b = check(11, 2, LAYOUT_2);
    assert_eq!(a, b);
    let c = check(12, 2, LAYOUT_2);
    assert_ne!(a.get("subjects.json"), c.get("subjects.json"));
    assert_ne!(a.get("negatives/000.png"), c.get("negatives/000.png"));
}

const LAYOUT_2: &str = "
S0/test/000.png
S0/test/001.png
S0/test/002.png
S0/train/000.png
S0/train/001.png
S1/test/000.png
S1/test/001.png
S1/test/002.png
S1/train/000.png
S1/train/001.png
multi/000.png
multi/001.png
multi/002.png
multi/labels.json
negatives/000.png
negatives/001.png
negatives/002.png
negatives/003.png
negatives/004.png
negatives/005.png
negatives/006.png
negatives/007.png
negatives/008.png
negatives/009.png
negatives/index.json
qa/S0.json
qa/S1.json
subjects.json
twins/S0/000.png
twins/S0/001.png
twins/S0/002.png
twins/S1/000.png
twins/S1/001.png
twins/S1/002.png
";

#[test]
fn one_subject_has_no_multi_photos() {
    let files = check(
        3,
        1,
        "
S0/test/000.png
S0/test/001.png
S0/test/002.png
S0/train/000.png
S0/train/001.png
multi/labels.json
negatives/000.png
negatives/001.png
negatives/002.png
negatives/003.png
negatives/004.png
negatives/005.png
negatives/index.json
qa/S0.json
subjects.json
twins/S0/000.png
twins/S0/001.png
twins/S0/002.png
",
    );
    assert_eq!(files["multi/labels.json"], b"[]\n");
}

#[test]
fn images_decode_at_the_configured_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    let cfg = DatasetConfig {
        image_size: ImageSize::new(64).unwrap(),
        ..small_config()
    };
    write_dataset(&dir, 5, 2, &cfg).unwrap();
    for (rel, bytes) in snapshot(&dir) {
        if rel.ends_with(".png") {
            let img = image::load_from_memory(&bytes).unwrap();
            assert_eq!((img.width(), img.height()), (64, 64), "{rel}");
            assert_eq!(img.color(), image::ColorType::Rgb8, "{rel}");
        }
    }
}

#[test]
fn json_files_describe_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    let summary = write_dataset(&dir, 21, 3, &small_config()).unwrap();
    let read = |rel: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(dir.join(rel)).unwrap()).unwrap()
    };

    let subjects = read("subjects.json");
    assert_eq!(subjects["format"], "concepts-toy-dataset");
    assert_eq!(subjects["version"], 2);
    assert_eq!(subjects["seed"], 21);
    assert_eq!(subjects["image_size"], 48);
    let list = subjects["subjects"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let mut combos = Vec::new();
    let mut instances = Vec::new();
    for (entry, s) in list.iter().zip(&summary.subjects) {
        assert_eq!(entry["name"], s.name());
        assert_eq!(entry["category"], "object");
        assert_eq!(entry["description"], s.description());
        let combo: Combo = serde_json::from_value(entry["attributes"].clone()).unwrap();
        assert_eq!(&combo, s.combo());
        assert!(combo.is_held_out(), "subjects are always held-out combos");
        let tone: Tone = serde_json::from_value(entry["tone"].clone()).unwrap();
        assert_eq!(tone, s.tone());
        combos.push(combo);
        instances.push((combo, tone));
        assert_eq!(entry["twins"].as_array().unwrap().len(), 3);
        for split in ["train", "test", "twins"] {
            for f in entry[split].as_array().unwrap() {
                assert!(dir.join(f.as_str().unwrap()).is_file());
            }
        }

        let qa = read(&format!("qa/{}.json", s.name()));
        assert_eq!(qa["placeholder"], "<sks>");
        let text = qa["text"].as_array().unwrap();
        // Every wrong option of every attribute on both sides (no secondary colour for solid
        // subjects; no main-colour question offering the secondary colour of stripes or checks).
        let per_attribute: usize = Attribute::ALL
            .iter()
            .map(|&a| toy_world::intrinsic_choices("<sks>", s.combo(), a).len())
            .sum();
        let unseeable = if s.combo().pattern().is_balanced() {
            2
        } else {
            0
        };
        assert_eq!(text.len(), per_attribute - unseeable);
        assert!(text.len() >= 18 + 16 + 8, "{}", text.len());
        for about in ["shape", "colour", "pattern"] {
            let (mut a, mut b) = (0, 0);
            for q in text.iter().filter(|q| q["about"] == about) {
                if q["answer"] == "A" {
                    a += 1
                } else {
                    b += 1
                }
            }
            assert_eq!(a, b, "{about}: the right option as often first as second");
        }
        for (i, q) in text.iter().enumerate() {
            assert!(!text[i + 1..].contains(q), "duplicate question {q}");
        }
        for q in text.iter().chain(qa["visual"].as_array().unwrap()) {
            let letter = q["answer"].as_str().unwrap();
            let right = &q[if letter == "A" {
                "option_a"
            } else {
                "option_b"
            }];
            assert!(q["prompt"].as_str().unwrap().contains("<sks>"));
            if q["about"] == "shape" {
                assert_eq!(right, s.combo().shape().name());
            }
            if q["about"] == "colour" {
                assert_eq!(right, s.combo().colour().name());
            }
            if let Some(img) = q.get("image") {
                assert!(dir.join(img.as_str().unwrap()).is_file());
            }
        }
    }

    // Negatives never contain a subject; look-alikes differ from theirs in one attribute,
    // twins in tone alone.
    let negatives = read("negatives/index.json");
    let negatives = negatives.as_array().unwrap();
    assert_eq!(negatives.len(), 2 + 3 * 2 + 3 * 2);
    for n in negatives {
        let objects: Vec<(Combo, Tone)> = n["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let combo = serde_json::from_value(o["attributes"].clone()).unwrap();
                (combo, serde_json::from_value(o["tone"].clone()).unwrap())
            })
            .collect();
        assert!(objects.iter().all(|o| !instances.contains(o)), "{n}");
        let subject = |field: &str| summary.subjects.iter().find(|s| n[field] == s.name());
        if n["kind"] == "twin" {
            let of = subject("twin_of").unwrap();
            assert_eq!(&objects[0].0, of.combo());
            assert_ne!(objects[0].1, of.tone());
        } else {
            assert!(objects.iter().all(|(c, _)| !combos.contains(c)));
        }
        if n["kind"] == "lookalike" {
            let diff = objects[0]
                .0
                .differences(subject("lookalike_of").unwrap().combo());
            assert_eq!(diff.len(), 1);
            assert_eq!(n["differs_in"], diff[0].name());
        }
    }

    let multi = read("multi/labels.json");
    for m in multi.as_array().unwrap() {
        let who = m["subjects"].as_array().unwrap();
        assert!(!who.is_empty() && who.len() <= 3);
        let impostors = m
            .get("lookalikes")
            .map_or(0, |l| l.as_array().unwrap().len())
            + m.get("twins").map_or(0, |t| t.as_array().unwrap().len());
        assert!(impostors <= 1, "{m}");
        assert!(who.len() + impostors >= 2, "{m}");
        assert!(m["sizing"] == "equal" || m["sizing"] == "unequal");
    }
}

#[test]
fn colour_questions_about_balanced_patterns_never_offer_the_secondary_colour() {
    // Stripes and checks show both colours over equal areas, so "white or black?" about a
    // white cross with black stripes has no answer a viewer could see.
    let tmp = tempfile::tempdir().unwrap();
    let mut balanced_colour_questions = 0;
    for seed in 0..6 {
        let dir = tmp.path().join(format!("ds{seed}"));
        let summary = write_dataset(&dir, seed, 6, &small_config()).unwrap();
        for s in &summary.subjects {
            let (combo, name) = (s.combo(), s.name());
            if !combo.pattern().is_balanced() {
                continue;
            }
            let secondary = combo.secondary().unwrap().name();
            let qa: serde_json::Value =
                serde_json::from_slice(&fs::read(dir.join(format!("qa/{name}.json"))).unwrap())
                    .unwrap();
            for q in qa["text"].as_array().unwrap() {
                if q["about"] == "colour" {
                    balanced_colour_questions += 1;
                    assert_ne!(q["option_a"], secondary, "{q}");
                    assert_ne!(q["option_b"], secondary, "{q}");
                }
            }
        }
    }
    assert!(
        balanced_colour_questions >= 4,
        "too few striped or checked subjects to check ({balanced_colour_questions} questions)"
    );
}

#[test]
fn refuses_non_empty_dir_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    fs::create_dir(&dir).unwrap();
    // An empty directory is fine.
    write_dataset(&dir, 1, 1, &small_config()).unwrap();
    let before = snapshot(&dir);
    let err = write_dataset(&dir, 2, 1, &small_config()).unwrap_err();
    assert!(matches!(err, Error::NotEmpty { .. }), "{err}");
    assert!(err
        .to_string()
        .starts_with("refusing to overwrite non-empty directory"));
    assert_eq!(
        snapshot(&dir),
        before,
        "a refused write leaves the directory alone"
    );
    let cfg = DatasetConfig {
        overwrite: true,
        ..small_config()
    };
    write_dataset(&dir, 2, 1, &cfg).unwrap();
    assert_ne!(snapshot(&dir), before);
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn invalid_config_is_rejected_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    let cfg = DatasetConfig {
        train_per_subject: 0,
        ..small_config()
    };
    let err = write_dataset(&dir, 1, 1, &cfg).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dataset config: `train_per_subject` is 0, expected 1..=100"
    );
    assert!(write_dataset(&dir, 1, 0, &small_config()).is_err());
    assert!(write_dataset(&dir, 1, 101, &small_config()).is_err());
    assert!(!dir.exists());
}
