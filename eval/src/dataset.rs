//! Reading an evaluation dataset in either supported folder layout.
//!
//! **Toy-world layout** (written by `concepts toy dataset`, see `toy-world/src/dataset.rs`):
//!
//! ```text
//! subjects.json                 {"format": "concepts-toy-dataset", "version": 1 or 2, "subjects":
//!                               [{"name", "description", "train": [..], "test": [..],
//!                                 "twins": [..] (version 2)}, ..]}
//! <subject>/train/*.png         training photos (the paths listed in subjects.json)
//! <subject>/test/*.png          test photos
//! qa/<subject>.json             optional: {"text": [..], "visual": [..]} A/B questions
//! negatives/                    optional: the negative pool for training
//! twins/<subject>/*.png         version 2: photos of the subject's twins (the paths in "twins")
//! multi/labels.json             optional: [{"image", "subjects": [..], "lookalikes": [{"of"}],
//!                               "twins": [..]}] photos with two or three subjects or impostors
//! ```
//!
//! **Yo'LLaVA layout** (the paper's dataset):
//!
//! ```text
//! train/<subject>/*.png|jpg     training photos
//! test/<subject>/*.png|jpg      test photos
//! negatives/                    optional: the negative pool
//! ```
//!
//! The Yo'LLaVA layout has no descriptions and no questions, so the description condition and
//! the A/B questions are reported as absent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{EvalError, Result};

/// The `format` of a toy-world `subjects.json`.
pub const TOY_FORMAT: &str = "concepts-toy-dataset";
/// The layout versions of `subjects.json` this reader understands (2 added twins and
/// three-subject photos).
pub const TOY_VERSIONS: [u32; 2] = [1, 2];
/// The placeholder for the subject in question prompts.
pub const SKS: &str = "<sks>";

/// Which folder layout a dataset is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `subjects.json` plus `<subject>/{train,test}/` (the toy world's writer).
    Toy,
    /// `train/<subject>/` and `test/<subject>/`.
    Yollava,
}

/// "A" or "B".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Letter {
    /// The first option.
    A,
    /// The second option.
    B,
}

/// A multiple-choice question whose prompt names the subject as [`SKS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// What it asks about (`colour`, `position`, ...).
    pub about: String,
    /// The full A/B prompt, with [`SKS`] for the subject.
    pub prompt: String,
    /// The correct letter.
    pub answer: Letter,
}

/// A multiple-choice question about a photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisualQuestion {
    /// The photo.
    pub image: PathBuf,
    /// The question.
    pub question: Question,
}

/// The A/B questions about one subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QaSet {
    /// Text-only questions (intrinsic attributes).
    pub text: Vec<Question>,
    /// Questions about a test photo of the subject.
    pub visual: Vec<VisualQuestion>,
}

/// One subject of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalSubject {
    /// The folder name (`ziggy`).
    pub name: String,
    /// The true description (`a red star with blue dots`), when the dataset has one.
    pub description: Option<String>,
    /// The folder the trainer reads the subject's photos from.
    pub train_dir: PathBuf,
    /// The training photos, sorted.
    pub train: Vec<PathBuf>,
    /// The test photos, sorted.
    pub test: Vec<PathBuf>,
    /// Photos of its twins: the same description, another identity detail (toy layout 2;
    /// empty otherwise).
    pub twins: Vec<PathBuf>,
    /// Its A/B questions, when the dataset has them.
    pub qa: Option<QaSet>,
}

impl EvalSubject {
    /// The name as written in text prompts: capitalised, as the toy world's names are
    /// ("Ziggy").
    pub fn text_name(&self) -> String {
        toy_world::text::capitalise(&self.name)
    }
}

/// A photo of two or three subjects, or of subjects next to an impostor of another (a
/// look-alike or a twin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiPhoto {
    /// The photo.
    pub image: PathBuf,
    /// Who is in it.
    pub subjects: Vec<String>,
    /// Subjects that are *not* in it although a look-alike of theirs is.
    pub lookalikes: Vec<String>,
    /// Subjects that are *not* in it although a twin of theirs is.
    pub twins: Vec<String>,
}

impl MultiPhoto {
    /// The subjects an impostor stands for: not in the photo, but something like them is.
    pub fn impostors(&self) -> impl Iterator<Item = &String> {
        self.lookalikes.iter().chain(&self.twins)
    }
}

/// A dataset read and checked by [`read_dataset`]. Invariant: at least one subject; names are
/// unique; every listed file exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalDataset {
    /// The dataset folder.
    pub root: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// The subjects in file order (toy) or sorted by name (Yo'LLaVA).
    pub subjects: Vec<EvalSubject>,
    /// The `negatives/` folder, if there is one with at least one image.
    pub negatives: Option<PathBuf>,
    /// Multi-subject photos (toy layout only).
    pub multi: Vec<MultiPhoto>,
}

impl EvalDataset {
    /// Keeps the first `n` subjects (and the multi photos among them).
    pub fn truncate_subjects(&mut self, n: usize) {
        self.subjects.truncate(n.max(1));
        let names: BTreeSet<&str> = self.subjects.iter().map(|s| s.name.as_str()).collect();
        self.multi.retain(|m| {
            m.subjects
                .iter()
                .chain(m.impostors())
                .all(|s| names.contains(s.as_str()))
        });
    }

    /// Keeps at most `n` test photos per subject (and the visual questions about them).
    pub fn truncate_test_photos(&mut self, n: usize) {
        for s in &mut self.subjects {
            s.test.truncate(n.max(1));
            s.twins.truncate(n.max(1));
            let kept: BTreeSet<PathBuf> = s.test.iter().cloned().collect();
            if let Some(qa) = &mut s.qa {
                qa.visual.retain(|v| kept.contains(&v.image));
            }
        }
    }

    /// Whether every subject has photos of its twins.
    pub fn has_twins(&self) -> bool {
        self.subjects.iter().all(|s| !s.twins.is_empty())
    }

    /// Whether every subject has a description.
    pub fn has_descriptions(&self) -> bool {
        self.subjects.iter().all(|s| s.description.is_some())
    }
}

/// Reads the dataset in `dir`, detecting its layout: `subjects.json` means the toy-world
/// layout, `train/` and `test/` folders the Yo'LLaVA layout.
pub fn read_dataset(dir: &Path) -> Result<EvalDataset> {
    if !dir.is_dir() {
        return Err(EvalError::Layout {
            path: dir.to_path_buf(),
            msg: "not a folder".into(),
        });
    }
    let dataset = if dir.join("subjects.json").is_file() {
        read_toy(dir)?
    } else if dir.join("train").is_dir() && dir.join("test").is_dir() {
        read_yollava(dir)?
    } else {
        return Err(EvalError::Layout {
            path: dir.to_path_buf(),
            msg: "expected `subjects.json` (toy-world layout) or `train/` and `test/` folders \
                  (Yo'LLaVA layout)"
                .into(),
        });
    };
    let mut seen = BTreeSet::new();
    for s in &dataset.subjects {
        if !seen.insert(s.name.as_str()) {
            return Err(EvalError::dataset(
                dir,
                format!("subject `{}` appears twice", s.name),
            ));
        }
    }
    Ok(dataset)
}

#[derive(Deserialize)]
struct SubjectsFile {
    format: String,
    version: u32,
    subjects: Vec<SubjectEntry>,
}

#[derive(Deserialize)]
struct SubjectEntry {
    name: String,
    #[serde(default)]
    description: Option<String>,
    train: Vec<String>,
    test: Vec<String>,
    #[serde(default)]
    twins: Vec<String>,
}

#[derive(Deserialize)]
struct QaFile {
    #[serde(default)]
    text: Vec<ChoiceEntry>,
    #[serde(default)]
    visual: Vec<VisualEntry>,
}

#[derive(Deserialize)]
struct ChoiceEntry {
    #[serde(default)]
    about: String,
    prompt: String,
    answer: String,
}

#[derive(Deserialize)]
struct VisualEntry {
    image: String,
    #[serde(default)]
    split: Option<String>,
    #[serde(flatten)]
    choice: ChoiceEntry,
}

#[derive(Deserialize)]
struct MultiEntry {
    image: String,
    subjects: Vec<String>,
    #[serde(default)]
    lookalikes: Vec<LookalikeEntry>,
    #[serde(default)]
    twins: Vec<String>,
}

#[derive(Deserialize)]
struct LookalikeEntry {
    of: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io("reading", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| EvalError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A file named in a JSON file, relative to `root`; it must exist and stay inside `root`.
fn listed_file(root: &Path, listed_in: &Path, rel: &str) -> Result<PathBuf> {
    let rel_path = Path::new(rel);
    let escapes = rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes {
        return Err(EvalError::dataset(
            listed_in,
            format!("`{rel}` must be a path inside the dataset folder"),
        ));
    }
    let path = root.join(rel_path);
    if !path.is_file() {
        return Err(EvalError::dataset(
            listed_in,
            format!("lists `{rel}`, but `{}` does not exist", path.display()),
        ));
    }
    Ok(path)
}

fn check_name(path: &Path, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(EvalError::dataset(
            path,
            format!(
                "subject name `{name}`: expected 1 to 64 characters from a-z, 0-9, `_`, `-` \
                 (it becomes the concept name)"
            ),
        ))
    }
}

fn letter(path: &Path, answer: &str) -> Result<Letter> {
    match answer {
        "A" => Ok(Letter::A),
        "B" => Ok(Letter::B),
        other => Err(EvalError::dataset(
            path,
            format!("answer `{other}`: expected `A` or `B`"),
        )),
    }
}

fn question(path: &Path, c: ChoiceEntry) -> Result<Question> {
    if !c.prompt.contains(SKS) {
        return Err(EvalError::dataset(
            path,
            format!(
                "question `{}` does not name the subject as `{SKS}`",
                c.prompt
            ),
        ));
    }
    Ok(Question {
        about: c.about,
        answer: letter(path, &c.answer)?,
        prompt: c.prompt,
    })
}

fn read_toy(root: &Path) -> Result<EvalDataset> {
    let index = root.join("subjects.json");
    let file: SubjectsFile = read_json(&index)?;
    if file.format != TOY_FORMAT {
        return Err(EvalError::dataset(
            &index,
            format!("format `{}`, expected `{TOY_FORMAT}`", file.format),
        ));
    }
    if !TOY_VERSIONS.contains(&file.version) {
        return Err(EvalError::dataset(
            &index,
            format!(
                "layout version {}, this reader understands {TOY_VERSIONS:?}",
                file.version
            ),
        ));
    }
    if file.subjects.is_empty() {
        return Err(EvalError::dataset(&index, "lists no subjects"));
    }
    let mut subjects = Vec::with_capacity(file.subjects.len());
    for entry in file.subjects {
        check_name(&index, &entry.name)?;
        if entry.test.is_empty() {
            return Err(EvalError::dataset(
                &index,
                format!("subject `{}` has no test photos", entry.name),
            ));
        }
        let files = |list: &[String]| -> Result<Vec<PathBuf>> {
            list.iter().map(|r| listed_file(root, &index, r)).collect()
        };
        let train = files(&entry.train)?;
        let test = files(&entry.test)?;
        let twins = files(&entry.twins)?;
        let train_dir = root.join(&entry.name).join("train");
        if let Some(stray) = train
            .iter()
            .find(|p| p.parent() != Some(train_dir.as_path()))
        {
            return Err(EvalError::dataset(
                &index,
                format!(
                    "training photo `{}` of `{}` is outside `{}` (the trainer reads that folder)",
                    stray.display(),
                    entry.name,
                    train_dir.display()
                ),
            ));
        }
        let qa_path = root.join("qa").join(format!("{}.json", entry.name));
        let qa = if qa_path.is_file() {
            Some(read_qa(root, &qa_path, &test)?)
        } else {
            None
        };
        subjects.push(EvalSubject {
            name: entry.name,
            description: entry.description.filter(|d| !d.trim().is_empty()),
            train_dir,
            train,
            test,
            twins,
            qa,
        });
    }
    let labels = root.join("multi").join("labels.json");
    let multi = if labels.is_file() {
        let entries: Vec<MultiEntry> = read_json(&labels)?;
        let multi_root = root.join("multi");
        entries
            .into_iter()
            .map(|m| {
                Ok(MultiPhoto {
                    image: listed_file(&multi_root, &labels, &m.image)?,
                    subjects: m.subjects,
                    lookalikes: m.lookalikes.into_iter().map(|l| l.of).collect(),
                    twins: m.twins,
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(EvalDataset {
        root: root.to_path_buf(),
        layout: Layout::Toy,
        subjects,
        negatives: negatives(root)?,
        multi,
    })
}

/// Reads `qa/<subject>.json`; visual questions about training photos are dropped (the learned
/// concept has seen them).
fn read_qa(root: &Path, path: &Path, test: &[PathBuf]) -> Result<QaSet> {
    let file: QaFile = read_json(path)?;
    let text = file
        .text
        .into_iter()
        .map(|c| question(path, c))
        .collect::<Result<Vec<_>>>()?;
    let mut visual = Vec::new();
    for v in file.visual {
        if v.split.as_deref().is_some_and(|s| s != "test") {
            continue;
        }
        let image = listed_file(root, path, &v.image)?;
        if !test.contains(&image) {
            continue;
        }
        visual.push(VisualQuestion {
            image,
            question: question(path, v.choice)?,
        });
    }
    Ok(QaSet { text, visual })
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    concepts_trainer::images::list_images(dir, false).map_err(|e| match e {
        concepts_trainer::TrainError::Io {
            action,
            path,
            source,
        } => EvalError::Io {
            action,
            path,
            source,
        },
        other => EvalError::dataset(dir, other.to_string()),
    })
}

fn negatives(root: &Path) -> Result<Option<PathBuf>> {
    let dir = root.join("negatives");
    if !dir.is_dir() {
        return Ok(None);
    }
    let any = concepts_trainer::images::list_images(&dir, true)
        .map_err(|e| EvalError::dataset(&dir, e.to_string()))?;
    Ok((!any.is_empty()).then_some(dir))
}

fn read_yollava(root: &Path) -> Result<EvalDataset> {
    let train_root = root.join("train");
    let test_root = root.join("test");
    let mut names = Vec::new();
    for entry in
        std::fs::read_dir(&train_root).map_err(|e| EvalError::io("reading", &train_root, e))?
    {
        let entry = entry.map_err(|e| EvalError::io("reading", &train_root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(EvalError::dataset(&train_root, "holds no subject folders"));
    }
    let mut subjects = Vec::with_capacity(names.len());
    for name in names {
        let train_dir = train_root.join(&name);
        check_name(&train_dir, &name)?;
        let test_dir = test_root.join(&name);
        if !test_dir.is_dir() {
            return Err(EvalError::dataset(
                &test_dir,
                format!("subject `{name}` has training photos but no test folder"),
            ));
        }
        let train = images_in(&train_dir)?;
        let test = images_in(&test_dir)?;
        if test.is_empty() {
            return Err(EvalError::dataset(
                &test_dir,
                "holds no .png, .jpg, .jpeg or .webp photos",
            ));
        }
        subjects.push(EvalSubject {
            name,
            description: None,
            train_dir,
            train,
            test,
            twins: Vec::new(),
            qa: None,
        });
    }
    Ok(EvalDataset {
        root: root.to_path_buf(),
        layout: Layout::Yollava,
        subjects,
        negatives: negatives(root)?,
        multi: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"not decoded by the reader").unwrap();
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A two-subject toy-layout dataset with a QA file for `bo`.
    fn toy(dir: &Path) {
        for s in ["bo", "kiki"] {
            for split in ["train", "test"] {
                for i in 0..3 {
                    touch(&dir.join(format!("{s}/{split}/{i:03}.png")));
                }
            }
        }
        write(
            &dir.join("subjects.json"),
            r#"{"format": "concepts-toy-dataset", "version": 1, "subjects": [
              {"name": "bo", "description": "a red star", "train": ["bo/train/000.png", "bo/train/001.png", "bo/train/002.png"],
               "test": ["bo/test/000.png", "bo/test/001.png"]},
              {"name": "kiki", "description": "a blue heart", "train": ["kiki/train/000.png"],
               "test": ["kiki/test/000.png", "kiki/test/001.png", "kiki/test/002.png"]}]}"#,
        );
        write(
            &dir.join("qa/bo.json"),
            r#"{"subject": "bo", "placeholder": "<sks>",
              "text": [{"about": "colour", "question": "q", "option_a": "red", "option_b": "blue", "answer": "A",
                        "prompt": "What colour is <sks>?\nA: red\nB: blue\nAnswer with the option's letter from the given choices directly."}],
              "visual": [
                {"image": "bo/test/000.png", "split": "test", "about": "size", "question": "q", "option_a": "small", "option_b": "large", "answer": "B", "prompt": "How big is <sks> in this photo?\nA: small\nB: large"},
                {"image": "bo/train/000.png", "split": "train", "about": "size", "question": "q", "option_a": "small", "option_b": "large", "answer": "B", "prompt": "How big is <sks> in this photo?\nA: small\nB: large"}]}"#,
        );
        touch(&dir.join("negatives/000.png"));
        touch(&dir.join("multi/000.png"));
        write(
            &dir.join("multi/labels.json"),
            r#"[{"image": "000.png", "subjects": ["bo", "kiki"]},
                {"image": "000.png", "subjects": ["bo"], "lookalikes": [{"of": "kiki", "differs_in": "pattern"}]}]"#,
        );
    }

    #[test]
    fn reads_the_toy_layout() {
        let tmp = tempfile::tempdir().unwrap();
        toy(tmp.path());
        let d = read_dataset(tmp.path()).unwrap();
        assert_eq!(d.layout, Layout::Toy);
        assert_eq!(d.subjects.len(), 2);
        let bo = &d.subjects[0];
        assert_eq!(bo.name, "bo");
        assert_eq!(bo.text_name(), "Bo");
        assert_eq!(bo.description.as_deref(), Some("a red star"));
        assert_eq!((bo.train.len(), bo.test.len()), (3, 2));
        assert_eq!(bo.train_dir, tmp.path().join("bo/train"));
        let qa = bo.qa.as_ref().unwrap();
        assert_eq!(qa.text.len(), 1);
        assert_eq!(qa.text[0].answer, Letter::A);
        assert_eq!(
            qa.visual.len(),
            1,
            "the question about a training photo is dropped"
        );
        assert_eq!(qa.visual[0].question.answer, Letter::B);
        assert!(d.subjects[1].qa.is_none());
        assert_eq!(d.negatives, Some(tmp.path().join("negatives")));
        assert_eq!(d.multi.len(), 2);
        assert_eq!(d.multi[1].lookalikes, ["kiki"]);
        assert_eq!(d.multi[0].image, tmp.path().join("multi/000.png"));
        assert!(d.has_descriptions());
    }

    #[test]
    fn truncation_keeps_the_first_subjects_and_photos() {
        let tmp = tempfile::tempdir().unwrap();
        toy(tmp.path());
        let mut d = read_dataset(tmp.path()).unwrap();
        d.truncate_test_photos(1);
        assert!(d.subjects.iter().all(|s| s.test.len() == 1));
        assert_eq!(d.subjects[0].qa.as_ref().unwrap().visual.len(), 1);
        d.truncate_subjects(1);
        assert_eq!(d.subjects.len(), 1);
        assert!(d.multi.is_empty(), "the multi photo needs kiki");
    }

    #[test]
    fn reads_the_yollava_layout() {
        let tmp = tempfile::tempdir().unwrap();
        for s in ["mam", "bo"] {
            for i in 0..3 {
                touch(&tmp.path().join(format!("train/{s}/{i}.jpg")));
                touch(&tmp.path().join(format!("test/{s}/{i}.png")));
            }
        }
        touch(&tmp.path().join("test/bo/notes.txt"));
        let d = read_dataset(tmp.path()).unwrap();
        assert_eq!(d.layout, Layout::Yollava);
        let names: Vec<&str> = d.subjects.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["bo", "mam"]);
        assert_eq!(d.subjects[0].test.len(), 3, "only image files count");
        assert_eq!(d.subjects[0].train_dir, tmp.path().join("train/bo"));
        assert!(!d.has_descriptions());
        assert!(d.negatives.is_none());
        assert!(d.multi.is_empty());
    }

    fn error_of(dir: &Path) -> String {
        read_dataset(dir).unwrap_err().to_string()
    }

    #[test]
    fn bad_input_is_rejected_naming_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();

        let e = error_of(&root.join("missing"));
        assert!(e.contains("missing") && e.contains("not a folder"), "{e}");

        let e = error_of(root);
        assert!(e.contains("subjects.json") && e.contains("train/"), "{e}");

        // A listed photo that does not exist.
        toy(root);
        std::fs::remove_file(root.join("bo/test/001.png")).unwrap();
        let e = error_of(root);
        assert!(
            e.contains("subjects.json") && e.contains("bo/test/001.png"),
            "{e}"
        );

        // Wrong format tag and version.
        write(
            &root.join("subjects.json"),
            r#"{"format": "x", "version": 1, "subjects": []}"#,
        );
        let e = error_of(root);
        assert!(e.contains("format `x`"), "{e}");
        write(
            &root.join("subjects.json"),
            r#"{"format": "concepts-toy-dataset", "version": 9, "subjects": []}"#,
        );
        assert!(error_of(root).contains("layout version 9"));

        // A training photo outside `<subject>/train/`.
        toy(root);
        let text = std::fs::read_to_string(root.join("subjects.json")).unwrap();
        write(
            &root.join("subjects.json"),
            &text.replace("\"bo/train/000.png\"", "\"bo/test/001.png\""),
        );
        assert!(error_of(root).contains("is outside"));

        // Not JSON.
        write(&root.join("subjects.json"), "{");
        assert!(error_of(root).contains("subjects.json"));

        // A path escaping the dataset.
        write(
            &root.join("subjects.json"),
            r#"{"format": "concepts-toy-dataset", "version": 1, "subjects": [
              {"name": "bo", "train": [], "test": ["../x.png"]}]}"#,
        );
        assert!(error_of(root).contains("inside the dataset folder"));

        // A bad answer letter in a QA file.
        toy(root);
        write(
            &root.join("qa/bo.json"),
            r#"{"text": [{"prompt": "What colour is <sks>?", "answer": "C"}]}"#,
        );
        let e = error_of(root);
        assert!(e.contains("qa/bo.json") && e.contains("answer `C`"), "{e}");

        // A subject name that cannot be a concept name.
        let y = tempfile::tempdir().unwrap();
        touch(&y.path().join("train/Big Dog/0.png"));
        touch(&y.path().join("test/Big Dog/0.png"));
        assert!(error_of(y.path()).contains("subject name `Big Dog`"));

        // A Yo'LLaVA subject without a test folder.
        let y = tempfile::tempdir().unwrap();
        touch(&y.path().join("train/bo/0.png"));
        std::fs::create_dir_all(y.path().join("test")).unwrap();
        let e = error_of(y.path());
        assert!(e.contains("test/bo") && e.contains("no test folder"), "{e}");
    }
}
