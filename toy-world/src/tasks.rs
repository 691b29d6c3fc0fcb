//! Pretraining task generators: pure data, no model code.
//!
//! Each [`Sample`] is an optional image plus a plain-text question and answer; the runtime
//! adds the chat template and the `<image>` token. Every scene here is drawn from
//! pretraining combos only: no held-out [`Combo`] is ever drawn, not even as a distractor
//! or a negative, and not named in text.

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::attr::{random_combo, Attribute, Colour, Combo, Pattern, Shape, Size};
use crate::error::{Error, Result};
use crate::render::{compose, render, ImageSize, Object, Scene, Side, Wanted};
use crate::text::{
    answer_word, attribute_value, capitalise, choice_question, fill, format_choice, join_and,
    pattern_part, sized_phrase, with_article, CAPTION_QUESTIONS, DESCRIBE_NAME_QUESTIONS, NAMES,
    RECOGNITION_QUESTIONS, SHORT_ANSWER,
};

/// The kinds of pretraining sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// "Describe the image." → "A large red star with blue dots and a small green circle."
    Caption,
    /// "What colour is the star?" → "Red"
    Attribute,
    /// "Is there a green heart in this photo?" → "Yes"/"No"
    Existence,
    /// "How many objects are there?" → "2"
    Counting,
    /// "Ziggy is a red star with blue dots. Is Ziggy in this photo?" → "Yes"/"No";
    /// about half the negatives hold a look-alike.
    NameRecognition,
    /// Text only: "Ziggy is a red star with blue dots. What colour is Ziggy?" → "Red"
    NameAttribute,
    /// Text only A/B: "… What shape is Ziggy?\nA: star\nB: heart\n…" → "A"
    NameChoice,
    /// A/B about a named object in a photo (position, size, neighbour) → "B"
    NameVisualChoice,
    /// Name recognition among two or three subjects of similar size: "Ziggy is … Momo is
    /// …. Is Momo in this photo?" → "Yes"/"No". The one asked about is not always the
    /// largest, and is sometimes small; the others' names are bound half the time.
    CrowdedRecognition,
}

impl TaskKind {
    /// Every kind, in declaration order.
    pub const ALL: [TaskKind; 9] = [
        TaskKind::Caption,
        TaskKind::Attribute,
        TaskKind::Existence,
        TaskKind::Counting,
        TaskKind::NameRecognition,
        TaskKind::NameAttribute,
        TaskKind::NameChoice,
        TaskKind::NameVisualChoice,
        TaskKind::CrowdedRecognition,
    ];

    /// Whether samples of this kind carry an image.
    pub fn has_image(self) -> bool {
        !matches!(self, TaskKind::NameAttribute | TaskKind::NameChoice)
    }
}

/// Relative weights of the task kinds. Invariant: at least one weight is positive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMix {
    weights: [u32; TaskKind::ALL.len()],
}

impl TaskMix {
    /// Builds a mix from `(kind, weight)` pairs; unlisted kinds get weight 0.
    pub fn new(weights: &[(TaskKind, u32)]) -> Result<TaskMix> {
        let mut w = [0; TaskKind::ALL.len()];
        for &(kind, weight) in weights {
            w[kind as usize] = weight;
        }
        if w.iter().all(|&x| x == 0) {
            return Err(Error::EmptyTaskMix);
        }
        Ok(TaskMix { weights: w })
    }

    /// The mix used for the base model: grounding tasks and name binding in equal parts.
    pub fn balanced() -> TaskMix {
        TaskMix {
            weights: [3, 3, 2, 1, 4, 2, 2, 2, 3],
        }
    }

    /// Only one kind.
    pub fn only(kind: TaskKind) -> TaskMix {
        let mut weights = [0; TaskKind::ALL.len()];
        weights[kind as usize] = 1;
        TaskMix { weights }
    }

    /// The weight of `kind`.
    pub fn weight(&self, kind: TaskKind) -> u32 {
        self.weights[kind as usize]
    }

    fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> TaskKind {
        let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        let mut x = rng.random_range(0..total);
        for (i, &w) in self.weights.iter().enumerate() {
            if x < u64::from(w) {
                return TaskKind::ALL[i];
            }
            x -= u64::from(w);
        }
        unreachable!("x < total")
    }
}

/// One pretraining example.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Which generator made it.
    pub task: TaskKind,
    /// The scene behind `image`, for inspection and tests.
    pub scene: Option<Scene>,
    /// The rendered scene; `None` for text-only tasks.
    pub image: Option<RgbImage>,
    /// Plain-text question (no chat template, no `<image>` token).
    pub question: String,
    /// Plain-text answer.
    pub answer: String,
}

/// "A" or "B".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Letter {
    /// First option.
    A,
    /// Second option.
    B,
}

impl Letter {
    /// "A" or "B".
    pub fn as_str(self) -> &'static str {
        match self {
            Letter::A => "A",
            Letter::B => "B",
        }
    }
}

/// An A/B question with its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// What the question is about (`shape`, `colour`, `position`, ...).
    pub about: String,
    /// The question alone.
    pub question: String,
    /// Option A.
    pub option_a: String,
    /// Option B.
    pub option_b: String,
    /// The correct letter.
    pub answer: Letter,
    /// The full prompt, [`format_choice`] of the above.
    pub prompt: String,
}

impl Choice {
    fn new<R: Rng + ?Sized>(
        rng: &mut R,
        about: &str,
        question: String,
        right: &str,
        wrong: &str,
    ) -> Choice {
        let answer = if rng.random_bool(0.5) {
            Letter::A
        } else {
            Letter::B
        };
        Choice::with_answer(about, question, right, wrong, answer)
    }

    /// The question with `right` as option `answer` and `wrong` as the other.
    fn with_answer(
        about: &str,
        question: String,
        right: &str,
        wrong: &str,
        answer: Letter,
    ) -> Choice {
        let (a, b) = match answer {
            Letter::A => (right, wrong),
            Letter::B => (wrong, right),
        };
        Choice {
            about: about.into(),
            prompt: format_choice(&question, a, b),
            question,
            option_a: a.into(),
            option_b: b.into(),
            answer,
        }
    }
}

pub(crate) const EXISTENCE_QUESTIONS: &[&str] = &[
    "Is there {} in this photo?",
    "Is there {} in this image?",
    "Does this picture contain {}?",
    "Can you see {} in this photo?",
];

pub(crate) const COUNT_ALL_QUESTIONS: &[&str] = &[
    "How many objects are there?",
    "How many objects are in this photo?",
    "How many things can you see in this image?",
];

fn pick<'a, R: Rng + ?Sized, T>(rng: &mut R, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

fn pretraining(c: &Combo) -> bool {
    !c.is_held_out()
}

/// Draws one sample.
pub fn sample<R: Rng + ?Sized>(rng: &mut R, mix: &TaskMix, size: ImageSize) -> Sample {
    let task = mix.pick(rng);
    // Some generators need a scene property that a random scene may lack; they return
    // `None` and we redraw (a handful of times at most in practice).
    loop {
        if let Some(s) = generate(rng, task, size) {
            return s;
        }
    }
}

fn generate<R: Rng + ?Sized>(rng: &mut R, task: TaskKind, size: ImageSize) -> Option<Sample> {
    let (scene, question, answer) = match task {
        TaskKind::Caption => caption(rng),
        TaskKind::Attribute => attribute(rng)?,
        TaskKind::Existence => existence(rng)?,
        TaskKind::Counting => counting(rng),
        TaskKind::NameRecognition => name_recognition(rng),
        TaskKind::NameAttribute => {
            let (q, a) = name_attribute(rng);
            return Some(text_sample(task, q, a));
        }
        TaskKind::NameChoice => {
            let (q, a) = name_choice(rng);
            return Some(text_sample(task, q, a));
        }
        TaskKind::NameVisualChoice => name_visual_choice(rng)?,
        TaskKind::CrowdedRecognition => crowded_recognition(rng),
    };
    let image = render(&scene, size);
    Some(Sample {
        task,
        scene: Some(scene),
        image: Some(image),
        question,
        answer,
    })
}

fn text_sample(task: TaskKind, question: String, answer: String) -> Sample {
    Sample {
        task,
        scene: None,
        image: None,
        question,
        answer,
    }
}

/// A random pretraining scene with 1-3 objects; `first`, when given, is always present.
fn random_scene<R: Rng + ?Sized>(
    rng: &mut R,
    first: Option<Wanted>,
    exclude: &dyn Fn(&Combo) -> bool,
) -> Scene {
    let n = [1, 1, 1, 2, 2, 2, 2, 3, 3, 3][rng.random_range(0..10)];
    let first = first.unwrap_or_else(|| Wanted {
        combo: random_combo(rng, |c| pretraining(c) && !exclude(c)),
        size: if n == 1 {
            *pick(rng, &[Size::Small, Size::Medium, Size::Large, Size::Large])
        } else {
            *pick(rng, Size::ALL)
        },
        tone: None,
    });
    let mut taken = vec![first.combo];
    let mut optional = Vec::new();
    for _ in 1..n {
        let combo = random_combo(rng, |c| pretraining(c) && !exclude(c) && !taken.contains(c));
        taken.push(combo);
        let size = *pick(rng, &[Size::Small, Size::Small, Size::Medium]);
        optional.push(Wanted::any_tone(combo, size));
    }
    compose(rng, &[first], &optional)
}

fn by_size_then_x(scene: &Scene) -> Vec<&Object> {
    let mut objs: Vec<&Object> = scene.objects.iter().collect();
    objs.sort_by(|a, b| {
        b.radius
            .total_cmp(&a.radius)
            .then(a.centre[0].total_cmp(&b.centre[0]))
    });
    objs
}

/// "A large red star with blue dots and a small green circle."
pub fn caption_of(scene: &Scene) -> String {
    let parts: Vec<String> = by_size_then_x(scene)
        .into_iter()
        .map(|o| sized_phrase(&o.combo, o.size))
        .collect();
    format!("{}.", capitalise(&join_and(&parts)))
}

fn caption<R: Rng + ?Sized>(rng: &mut R) -> (Scene, String, String) {
    let scene = random_scene(rng, None, &|_| false);
    let q = pick(rng, CAPTION_QUESTIONS).to_string();
    let a = caption_of(&scene);
    (scene, q, a)
}

/// A phrase that picks out exactly `scene.objects[i]`, and which attributes it names.
fn referring_expression<R: Rng + ?Sized>(
    rng: &mut R,
    scene: &Scene,
    i: usize,
) -> Option<(String, Vec<Attribute>)> {
    let me = &scene.objects[i].combo;
    let unique =
        |f: &dyn Fn(&Combo) -> bool| scene.objects.iter().filter(|o| f(&o.combo)).count() == 1;
    let mut options = Vec::new();
    if scene.objects.len() == 1 {
        options.push(("the object".to_string(), vec![]));
    }
    if unique(&|c| c.shape() == me.shape()) {
        options.push((format!("the {}", me.shape()), vec![Attribute::Shape]));
    }
    if unique(&|c| c.colour() == me.colour()) {
        options.push((
            format!("the {} object", me.colour()),
            vec![Attribute::Colour],
        ));
    }
    if unique(&|c| c.colour() == me.colour() && c.shape() == me.shape()) {
        options.push((
            format!("the {} {}", me.colour(), me.shape()),
            vec![Attribute::Shape, Attribute::Colour],
        ));
    }
    if options.is_empty() {
        return None;
    }
    let k = rng.random_range(0..options.len());
    Some(options.swap_remove(k))
}

fn attribute<R: Rng + ?Sized>(rng: &mut R) -> Option<(Scene, String, String)> {
    let scene = random_scene(rng, None, &|_| false);
    let i = rng.random_range(0..scene.objects.len());
    let (reference, named) = referring_expression(rng, &scene, i)?;
    let obj = &scene.objects[i];
    let c = obj.combo;
    let mut asks: Vec<(String, String)> = Vec::new();
    if !named.contains(&Attribute::Colour) {
        asks.push((
            fill("What colour is {}?", &[&reference]),
            answer_word(c.colour().name()),
        ));
    }
    if !named.contains(&Attribute::Shape) {
        asks.push((
            fill("What shape is {}?", &[&reference]),
            answer_word(c.shape().name()),
        ));
    }
    asks.push((
        fill("What pattern does {} have?", &[&reference]),
        answer_word(c.pattern().name()),
    ));
    if let (Some((template, _)), Some(s)) = (pattern_part(c.pattern()), c.secondary()) {
        asks.push((fill(template, &[&reference]), answer_word(s.name())));
    }
    if scene.objects.len() > 1 {
        asks.push((
            fill("What size is {}?", &[&reference]),
            answer_word(obj.size.name()),
        ));
    }
    let (q, a) = asks.swap_remove(rng.random_range(0..asks.len()));
    Some((scene, q, a))
}

/// A pretraining look-alike of `combo` (hard with probability `p_hard`), if any exists.
fn pretraining_lookalike<R: Rng + ?Sized>(
    rng: &mut R,
    combo: &Combo,
    p_hard: f64,
) -> Option<Combo> {
    let attrs: &[Attribute] = if rng.random_bool(p_hard) {
        &[Attribute::Pattern, Attribute::Secondary]
    } else {
        &[Attribute::Shape, Attribute::Colour]
    };
    let pool: Vec<Combo> = attrs
        .iter()
        .flat_map(|&a| combo.lookalikes(a))
        .filter(pretraining)
        .collect();
    (!pool.is_empty()).then(|| pool[rng.random_range(0..pool.len())])
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn existence<R: Rng + ?Sized>(rng: &mut R) -> Option<(Scene, String, String)> {
    let scene = random_scene(rng, None, &|_| false);
    let template = *pick(rng, EXISTENCE_QUESTIONS);
    let target = scene.objects[rng.random_range(0..scene.objects.len())].combo;
    let partial = rng.random_bool(0.3);
    let positive = rng.random_bool(0.5);
    let (desc, truth) = if partial {
        // One attribute only ("a star", "a red object"): true when any object has it.
        let by_shape = rng.random_bool(0.5);
        let shape = if positive {
            target.shape()
        } else {
            *pick(rng, Shape::ALL)
        };
        let colour = if positive {
            target.colour()
        } else {
            *pick(rng, Colour::ALL)
        };
        if by_shape {
            let truth = scene.objects.iter().any(|o| o.combo.shape() == shape);
            (with_article(shape.name()), truth)
        } else {
            let truth = scene.objects.iter().any(|o| o.combo.colour() == colour);
            (with_article(&format!("{colour} object")), truth)
        }
    } else {
        let asked = if positive {
            target
        } else {
            pretraining_lookalike(rng, &target, 0.6)?
        };
        (asked.description(), scene.contains(&asked))
    };
    Some((scene, fill(template, &[&desc]), yes_no(truth)))
}

fn counting<R: Rng + ?Sized>(rng: &mut R) -> (Scene, String, String) {
    let scene = random_scene(rng, None, &|_| false);
    let o = &scene.objects;
    let (q, n) = match rng.random_range(0..4) {
        0 | 1 => (pick(rng, COUNT_ALL_QUESTIONS).to_string(), o.len()),
        2 => {
            let shape = if rng.random_bool(0.7) {
                pick(rng, o).combo.shape()
            } else {
                *pick(rng, Shape::ALL)
            };
            let n = o.iter().filter(|x| x.combo.shape() == shape).count();
            (fill("How many {} are there?", &[shape.plural()]), n)
        }
        _ => {
            let colour = if rng.random_bool(0.7) {
                pick(rng, o).combo.colour()
            } else {
                *pick(rng, Colour::ALL)
            };
            let n = o.iter().filter(|x| x.combo.colour() == colour).count();
            (fill("How many {} objects are there?", &[colour.name()]), n)
        }
    };
    (scene, q, n.to_string())
}

/// Distinct random names.
fn names<R: Rng + ?Sized, const N: usize>(rng: &mut R) -> [&'static str; N] {
    let mut out = [""; N];
    for i in 0..N {
        loop {
            let n = *pick(rng, NAMES);
            if !out[..i].contains(&n) {
                out[i] = n;
                break;
            }
        }
    }
    out
}

fn binding(name: &str, combo: &Combo) -> String {
    format!("{name} is {}.", combo.description())
}

/// A recognition question about `subject`, optionally with the short-answer suffix.
pub(crate) fn recognition_question<R: Rng + ?Sized>(
    rng: &mut R,
    subject: &str,
    hint: bool,
) -> String {
    let template = *pick(rng, RECOGNITION_QUESTIONS);
    let q = fill(template, &[subject]);
    if hint {
        format!("{q} {SHORT_ANSWER}")
    } else {
        q
    }
}

fn name_recognition<R: Rng + ?Sized>(rng: &mut R) -> (Scene, String, String) {
    let [name, other_name] = names(rng);
    let combo = random_combo(rng, pretraining);
    let two = rng.random_bool(0.25);
    let other = random_combo(rng, |c| pretraining(c) && c.differences(&combo).len() >= 2);
    let positive = rng.random_bool(0.5);
    let big = |rng: &mut R| *pick(rng, &[Size::Medium, Size::Large]);
    let scene = if positive {
        let size = big(rng);
        random_scene(rng, Some(Wanted::any_tone(combo, size)), &|c| *c == combo)
    } else {
        let roll = rng.random_range(0..4);
        let look = match roll {
            0 | 1 => pretraining_lookalike(rng, &combo, 1.0),
            2 => pretraining_lookalike(rng, &combo, 0.0),
            _ => None,
        };
        let first = look.map(|l| Wanted::any_tone(l, big(rng)));
        random_scene(rng, first, &|c| *c == combo)
    };
    let mut prompt = Vec::new();
    if two && rng.random_bool(0.5) {
        prompt.push(binding(other_name, &other));
    }
    prompt.push(binding(name, &combo));
    if two && prompt.len() == 1 {
        prompt.push(binding(other_name, &other));
    }
    let hint = rng.random_bool(0.5);
    prompt.push(recognition_question(rng, name, hint));
    let answer = yes_no(scene.contains(&combo));
    (scene, prompt.join(" "), answer)
}

/// Two or three subjects that differ pairwise in at least two attributes, sized like the
/// multi photos of a dataset (equal, or one a class larger, drawn at random) and sometimes all
/// small. A negative replaces the one asked about by its look-alike (three times in four) or
/// leaves it out, so the others are still there.
fn crowded_recognition<R: Rng + ?Sized>(rng: &mut R) -> (Scene, String, String) {
    let count = if rng.random_bool(0.6) { 2 } else { 3 };
    let mut combos: Vec<Combo> = Vec::with_capacity(count);
    while combos.len() < count {
        let combo = random_combo(rng, |c| {
            pretraining(c) && combos.iter().all(|o| o.differences(c).len() >= 2)
        });
        combos.push(combo);
    }
    let all_names: [&str; 3] = names(rng);
    let names = &all_names[..count];
    let asked = rng.random_range(0..count);
    let mut members = combos.clone();
    if rng.random_bool(0.5) {
        let look = pretraining_lookalike(rng, &combos[asked], 0.67)
            .filter(|l| !combos.contains(l) && rng.random_bool(0.75));
        match look {
            Some(l) => members[asked] = l,
            None => {
                members.remove(asked);
            }
        }
    }
    let big = rng.random_range(0..members.len());
    let (equal, larger) = match (members.len(), rng.random_range(0..4)) {
        (1, _) => (Size::Medium, Size::Medium),
        (2, 0) => (Size::Small, Size::Medium),
        (2, 1) => (Size::Medium, Size::Medium),
        (2, _) => (Size::Small, *pick(rng, &[Size::Medium, Size::Large])),
        (_, 0 | 1) => (Size::Small, Size::Small),
        (_, _) => (Size::Small, Size::Medium),
    };
    let required: Vec<Wanted> = members
        .iter()
        .enumerate()
        .map(|(i, &c)| Wanted::any_tone(c, if i == big { larger } else { equal }))
        .collect();
    let scene = compose(rng, &required, &[]);
    let mut order: Vec<usize> = if rng.random_bool(0.5) {
        (0..count).collect()
    } else {
        vec![asked]
    };
    for k in 0..order.len() {
        let j = rng.random_range(k..order.len());
        order.swap(k, j);
    }
    let mut prompt: Vec<String> = order
        .iter()
        .map(|&i| binding(names[i], &combos[i]))
        .collect();
    let hint = rng.random_bool(0.5);
    prompt.push(recognition_question(rng, names[asked], hint));
    let answer = yes_no(scene.contains(&combos[asked]));
    (scene, prompt.join(" "), answer)
}

fn name_attribute<R: Rng + ?Sized>(rng: &mut R) -> (String, String) {
    let [name] = names(rng);
    let c = random_combo(rng, pretraining);
    let describe = *pick(rng, DESCRIBE_NAME_QUESTIONS);
    let mut asks: Vec<(String, String)> = vec![
        (
            fill("What colour is {}?", &[name]),
            answer_word(c.colour().name()),
        ),
        (
            fill("What shape is {}?", &[name]),
            answer_word(c.shape().name()),
        ),
        (
            fill("What pattern does {} have?", &[name]),
            answer_word(c.pattern().name()),
        ),
        (fill(describe, &[name]), binding(name, &c)),
    ];
    if let (Some((t, _)), Some(s)) = (pattern_part(c.pattern()), c.secondary()) {
        asks.push((fill(t, &[name]), answer_word(s.name())));
    }
    let colour = if rng.random_bool(0.5) {
        c.colour()
    } else {
        *pick(rng, Colour::ALL)
    };
    asks.push((
        fill("Is {} {}?", &[name, colour.name()]),
        yes_no(colour == c.colour()),
    ));
    let shape = if rng.random_bool(0.5) {
        c.shape()
    } else {
        *pick(rng, Shape::ALL)
    };
    asks.push((
        fill("Is {} {}?", &[name, &with_article(shape.name())]),
        yes_no(shape == c.shape()),
    ));
    let pattern = if rng.random_bool(0.5) {
        c.pattern()
    } else {
        *pick(rng, &Pattern::ALL[1..])
    };
    if pattern == Pattern::Border {
        asks.push((
            fill("Does {} have a border?", &[name]),
            yes_no(pattern == c.pattern()),
        ));
    } else if pattern != Pattern::Solid {
        asks.push((
            fill("Does {} have {}?", &[name, pattern.name()]),
            yes_no(pattern == c.pattern()),
        ));
    }
    let (q, a) = asks.swap_remove(rng.random_range(0..asks.len()));
    (format!("{} {q}", binding(name, &c)), a)
}

/// A wrong value for `attribute` that still makes a valid combo with `c`'s other values: one of
/// [`wrong_values`], drawn by rejection from the attribute's `ALL` list (the draws the
/// pretraining stream, and so the golden fingerprints, are built on).
fn wrong_value<R: Rng + ?Sized>(rng: &mut R, attribute: Attribute, c: &Combo) -> &'static str {
    let wrong = wrong_values(attribute, c);
    let (n, name): (usize, fn(usize) -> &'static str) = match attribute {
        Attribute::Shape => (Shape::ALL.len(), |i| Shape::ALL[i].name()),
        Attribute::Colour | Attribute::Secondary => (Colour::ALL.len(), |i| Colour::ALL[i].name()),
        Attribute::Pattern => (Pattern::ALL.len(), |i| Pattern::ALL[i].name()),
    };
    loop {
        let v = name(rng.random_range(0..n));
        if wrong.contains(&v) {
            return v;
        }
    }
}

/// Every wrong value of `attribute` for `c`, in the order of the attribute's `ALL` list.
fn wrong_values(attribute: Attribute, c: &Combo) -> Vec<&'static str> {
    fn names<T: Copy>(
        all: &[T],
        keep: impl Fn(T) -> bool,
        name: fn(T) -> &'static str,
    ) -> Vec<&'static str> {
        all.iter().copied().filter(|&v| keep(v)).map(name).collect()
    }
    match attribute {
        Attribute::Shape => names(Shape::ALL, |s| s != c.shape(), Shape::name),
        Attribute::Colour => names(Colour::ALL, |x| x != c.colour(), Colour::name),
        Attribute::Pattern => names(Pattern::ALL, |p| p != c.pattern(), Pattern::name),
        Attribute::Secondary => names(
            Colour::ALL,
            |x| x.contrasts_with(c.colour()) && Some(x) != c.secondary(),
            Colour::name,
        ),
    }
}

/// Every A/B question [`intrinsic_choice`] can ask about `attribute` of `combo`: the right
/// value against each possible wrong one, once as option A and once as option B (so a model
/// that always answers one letter scores exactly 0.5). Empty when the attribute does not apply.
pub fn intrinsic_choices(subject: &str, combo: &Combo, attribute: Attribute) -> Vec<Choice> {
    let (Some(question), Some(right)) = (
        choice_question(attribute, subject, combo),
        attribute_value(attribute, combo),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for wrong in wrong_values(attribute, combo) {
        for answer in [Letter::A, Letter::B] {
            out.push(Choice::with_answer(
                attribute.name(),
                question.clone(),
                right,
                wrong,
                answer,
            ));
        }
    }
    out
}

/// An A/B question about one intrinsic attribute of `combo`, asked about `subject`.
pub fn intrinsic_choice<R: Rng + ?Sized>(
    rng: &mut R,
    subject: &str,
    combo: &Combo,
    attribute: Attribute,
) -> Option<Choice> {
    let question = choice_question(attribute, subject, combo)?;
    let right = attribute_value(attribute, combo)?;
    let wrong = wrong_value(rng, attribute, combo);
    Some(Choice::new(rng, attribute.name(), question, right, wrong))
}

fn name_choice<R: Rng + ?Sized>(rng: &mut R) -> (String, String) {
    let [name] = names(rng);
    let c = random_combo(rng, pretraining);
    let choice = loop {
        let attribute = *pick(rng, Attribute::ALL);
        if let Some(ch) = intrinsic_choice(rng, name, &c, attribute) {
            break ch;
        }
    };
    let answer = choice.answer.as_str().to_string();
    (format!("{} {}", binding(name, &c), choice.prompt), answer)
}

/// An A/B question about where, how big, or next to what `scene.objects[i]` is,
/// referring to it as `subject`. `None` when the scene does not support any.
pub fn visual_choice<R: Rng + ?Sized>(
    rng: &mut R,
    subject: &str,
    scene: &Scene,
    i: usize,
) -> Option<Choice> {
    let me = &scene.objects[i];
    let mut kinds = Vec::new();
    if let Some(side) = me.side() {
        kinds.push(("position", side));
    }
    if me.size != Size::Medium {
        kinds.push(("size", Side::Left));
    }
    if scene.objects.len() > 1 {
        kinds.push(("neighbour", Side::Left));
    }
    if kinds.is_empty() {
        return None;
    }
    let (kind, side) = kinds.swap_remove(rng.random_range(0..kinds.len()));
    let choice = match kind {
        "position" => {
            let (right, wrong) = match side {
                Side::Left => ("on the left", "on the right"),
                Side::Right => ("on the right", "on the left"),
            };
            let q = fill("Where is {} in this photo?", &[subject]);
            Choice::new(rng, kind, q, right, wrong)
        }
        "size" => {
            let (right, wrong) = match me.size {
                Size::Small => ("small", "large"),
                _ => ("large", "small"),
            };
            let q = fill("How big is {} in this photo?", &[subject]);
            Choice::new(rng, kind, q, right, wrong)
        }
        _ => {
            let others: Vec<&Object> = scene
                .objects
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, o)| o)
                .collect();
            let present = pick(rng, &others).combo;
            let absent = random_combo(rng, |c| {
                c.is_held_out() == present.is_held_out()
                    && !scene.contains(c)
                    && c.differences(&present).len() >= 2
            });
            let q = fill("What is next to {} in this photo?", &[subject]);
            Choice::new(rng, kind, q, &present.description(), &absent.description())
        }
    };
    Some(choice)
}

fn name_visual_choice<R: Rng + ?Sized>(rng: &mut R) -> Option<(Scene, String, String)> {
    let [name] = names(rng);
    let combo = random_combo(rng, pretraining);
    let size = *pick(rng, Size::ALL);
    let scene = random_scene(rng, Some(Wanted::any_tone(combo, size)), &|c| *c == combo);
    let choice = visual_choice(rng, name, &scene, 0)?;
    let answer = choice.answer.as_str().to_string();
    Some((
        scene,
        format!("{} {}", binding(name, &combo), choice.prompt),
        answer,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn intrinsic_choices_are_every_question_intrinsic_choice_can_draw() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for c in Combo::all().iter().step_by(37) {
            for &attr in Attribute::ALL {
                let all = intrinsic_choices("<sks>", c, attr);
                let mut drawn = Vec::new();
                for _ in 0..400 {
                    match intrinsic_choice(&mut rng, "<sks>", c, attr) {
                        Some(q) => {
                            assert!(all.contains(&q), "{q:?} is not among the listed choices");
                            if !drawn.contains(&q) {
                                drawn.push(q);
                            }
                        }
                        None => assert!(all.is_empty()),
                    }
                }
                // 400 draws reach each of at most 18 questions (a miss has odds of about 1e-9).
                assert_eq!(drawn.len(), all.len(), "{attr:?} of {}", c.key());
                let a = all.iter().filter(|q| q.answer == Letter::A).count();
                assert_eq!(2 * a, all.len(), "each question once on each side");
            }
        }
    }

    #[test]
    fn pretraining_never_draws_held_out_combos() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mix = TaskMix::balanced();
        for _ in 0..300 {
            let s = sample(&mut rng, &mix, ImageSize::DEFAULT);
            if let Some(scene) = &s.scene {
                for o in &scene.objects {
                    assert!(!o.combo.is_held_out(), "{:?}: {}", s.task, o.combo.key());
                }
            }
            for c in Combo::all().iter().filter(|c| c.is_held_out()) {
                // "an orange diamond" inside "an orange diamond with ..." is another combo.
                let d = c.description();
                let named = s
                    .question
                    .match_indices(&d)
                    .any(|(i, _)| !s.question[i + d.len()..].starts_with(" with"));
                assert!(
                    !named,
                    "{:?} names held-out {}: {}",
                    s.task,
                    c.key(),
                    s.question
                );
            }
        }
    }

    #[test]
    fn every_task_kind_produces_consistent_samples() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for kind in TaskKind::ALL {
            let mix = TaskMix::only(kind);
            for _ in 0..40 {
                let s = sample(&mut rng, &mix, ImageSize::DEFAULT);
                assert_eq!(s.task, kind);
                assert_eq!(s.image.is_some(), kind.has_image(), "{kind:?}");
                assert!(!s.question.is_empty() && !s.answer.is_empty());
                if let Some(img) = &s.image {
                    assert_eq!(img.dimensions(), (48, 48));
                }
            }
        }
    }

    /// The name asked about and the combo bound to it in a recognition prompt.
    fn asked(question: &str) -> (&'static str, Combo) {
        let name = NAMES
            .iter()
            .copied()
            .find(|n| {
                RECOGNITION_QUESTIONS
                    .iter()
                    .any(|t| question.contains(&fill(t, &[n])))
            })
            .unwrap();
        // The trailing "." makes descriptions unambiguous ("a red star." vs "a red star with").
        let combo = Combo::all()
            .into_iter()
            .find(|c| question.contains(&format!("{name} is {}.", c.description())))
            .unwrap();
        (name, combo)
    }

    #[test]
    fn crowded_recognition_asks_about_any_member_among_others() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        let mix = TaskMix::only(TaskKind::CrowdedRecognition);
        let (mut yes, mut no, mut not_largest, mut small, mut others_bound) = (0, 0, 0, 0, 0);
        for _ in 0..300 {
            let s = sample(&mut rng, &mix, ImageSize::DEFAULT);
            let scene = s.scene.unwrap();
            let (name, combo) = asked(&s.question);
            assert_eq!(s.answer, yes_no(scene.contains(&combo)), "{}", s.question);
            assert!(
                !scene.objects.is_empty() && scene.objects.iter().all(|o| pretraining(&o.combo))
            );
            if s.question.matches(" is a").count() > 1 {
                others_bound += 1;
            }
            if s.answer == "Yes" {
                yes += 1;
                assert!(scene.objects.len() >= 2, "{}", s.question);
                let me = scene.objects.iter().find(|o| o.combo == combo).unwrap();
                if scene.objects.iter().any(|o| o.radius > me.radius) {
                    not_largest += 1;
                }
                small += usize::from(me.size == Size::Small);
            } else {
                no += 1;
            }
            assert!(s.question.contains(name));
        }
        assert!(yes > 110 && no > 110, "yes {yes}, no {no}");
        assert!(
            not_largest * 3 > yes,
            "asked about the largest too often: {not_largest} of {yes}"
        );
        assert!(small * 3 > yes, "small {small} of {yes}");
        assert!(others_bound > 90, "{others_bound}");
    }

    #[test]
    fn recognition_answers_match_scenes_and_negatives_are_often_lookalikes() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let mix = TaskMix::only(TaskKind::NameRecognition);
        let (mut yes, mut no, mut lookalike_negatives) = (0, 0, 0);
        for _ in 0..200 {
            let s = sample(&mut rng, &mix, ImageSize::DEFAULT);
            let scene = s.scene.unwrap();
            let (_, combo) = asked(&s.question);
            assert_eq!(s.answer, yes_no(scene.contains(&combo)), "{}", s.question);
            if s.answer == "Yes" {
                yes += 1;
            } else {
                no += 1;
                if scene
                    .objects
                    .iter()
                    .any(|o| o.combo.differences(&combo).len() == 1)
                {
                    lookalike_negatives += 1;
                }
            }
        }
        assert!(yes > 70 && no > 70, "yes {yes}, no {no}");
        // Three quarters of negatives are built around a look-alike.
        assert!(
            lookalike_negatives * 10 > no * 6,
            "{lookalike_negatives} of {no}"
        );
    }

    #[test]
    fn choices_are_balanced_and_formatted() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mix = TaskMix::only(TaskKind::NameChoice);
        let mut a = 0;
        for _ in 0..200 {
            let s = sample(&mut rng, &mix, ImageSize::DEFAULT);
            assert!(s.question.contains("\nA: ") && s.question.contains("\nB: "));
            assert!(s.answer == "A" || s.answer == "B");
            a += usize::from(s.answer == "A");
        }
        assert!((70..130).contains(&a), "{a} of 200 answers are A");
    }

    #[test]
    fn empty_mix_is_rejected() {
        assert!(matches!(TaskMix::new(&[]), Err(Error::EmptyTaskMix)));
        assert!(TaskMix::new(&[(TaskKind::Caption, 0)]).is_err());
        assert_eq!(
            TaskMix::new(&[(TaskKind::Caption, 2)])
                .unwrap()
                .weight(TaskKind::Caption),
            2
        );
    }
}
