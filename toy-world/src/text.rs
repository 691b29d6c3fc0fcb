//! English text: names, templates, articles and the multiple-choice format.
//!
//! Every string a generator can emit is assembled from the constants here, so the
//! tokenizer vocabulary (see `tokenizer`) is derived from the same source.

use crate::attr::{Attribute, Colour, Combo, Pattern, Shape, Size};

/// The LLaVA v1 system prompt. The runtime adds it; it is here so the vocabulary covers it.
pub const SYSTEM_PROMPT: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// Role labels of the LLaVA v1 chat template.
pub const ROLES: [&str; 2] = ["USER", "ASSISTANT"];

/// Placeholder for a personalised concept in dataset questions (as in Yo'LLaVA). The
/// runtime replaces it with the concept's marker (`<bo>`) before tokenizing.
pub const SKS: &str = "<sks>";

/// Suffix for short-answer questions.
pub const SHORT_ANSWER: &str = "Answer with a single word or phrase.";

/// Suffix for A/B questions (LLaVA's multiple-choice instruction).
pub const CHOICE_ANSWER: &str = "Answer with the option's letter from the given choices directly.";

/// Yo'LLaVA-style recognition questions; `{}` is the subject (a name or [`SKS`]).
pub const RECOGNITION_QUESTIONS: &[&str] = &[
    "Can you see if {} is in this photo?",
    "Is {} in this photo?",
    "Is {} in this image?",
    "Do you see {} in this picture?",
    "Can you find {} in this image?",
    "Is {} visible in this photo?",
    "Does this photo contain {}?",
    "Can you spot {} in this picture?",
    "Is {} present in this image?",
    "Can you tell if {} appears in this photo?",
];

/// Caption requests.
pub const CAPTION_QUESTIONS: &[&str] = &[
    "Describe the image.",
    "What is in this photo?",
    "Describe this picture briefly.",
    "What do you see in this image?",
    "Give a short caption for this photo.",
];

/// Text-only requests to describe a named object; `{}` is the name.
pub const DESCRIBE_NAME_QUESTIONS: &[&str] = &[
    "Describe {}.",
    "What does {} look like?",
    "Tell me about {}.",
    "What do you know about {}?",
];

/// Extra words the runtime or later tasks may use in text-only attribute conversations.
pub const EXTRA_TEXT: &str = "Hello hi please thanks thank you sure okay ok yes no maybe not \
    it its it is this that these those there here what which who where when why how many \
    much colour color colours colors shape shapes pattern patterns size sizes object objects \
    thing things photo photos image images picture pictures one two three four five six seven \
    eight nine ten zero none both neither either all some left right top bottom middle centre \
    center next to near beside above below big bigger small smaller large larger medium same \
    different other another also only plain main secondary has have does do did can could \
    would should will see look looks like called named name my your our their his her its \
    I you we they he she am are was were be been being on in of with without and or but a an \
    the to for from by as at about answer question option letter correct wrong true false \
    word phrase single given choices directly";

/// Single-word given names for in-context binding and subject names. Each is one token
/// and collides with no other vocabulary word.
pub const NAMES: &[&str] = &[
    "Ziggy", "Bobo", "Momo", "Kiki", "Lulu", "Pip", "Nox", "Zuzu", "Fifi", "Gigi", "Tiko", "Bibi",
    "Dodo", "Nemo", "Mimi", "Pogo", "Rolo", "Suki", "Tata", "Yoyo", "Zaza", "Bingo", "Biscuit",
    "Bubbles", "Buttons", "Cookie", "Dumpling", "Fudge", "Ginger", "Hazel", "Jasper", "Juniper",
    "Kobe", "Loki", "Mango", "Maple", "Mochi", "Muffin", "Nacho", "Noodle", "Olive", "Oreo",
    "Peanut", "Pebble", "Pepper", "Pickle", "Pixel", "Pumpkin", "Quinn", "Rascal", "Rocket",
    "Rusty", "Sable", "Scout", "Shadow", "Simba", "Sprout", "Sunny", "Taco", "Teddy", "Tofu",
    "Toffee", "Waffle", "Whiskers", "Willow", "Yuki", "Zelda", "Abby", "Ace", "Alfie", "Arlo",
    "Astro", "Axel", "Bambi", "Banjo", "Basil", "Bean", "Benny", "Blaze", "Bolt", "Boomer",
    "Bruno", "Buddy", "Buster", "Cairo", "Calvin", "Casper", "Chai", "Charlie", "Chester", "Chico",
    "Clover", "Cody", "Cosmo", "Crumble", "Daisy", "Dexter", "Diesel", "Dobby", "Duke", "Dusty",
    "Echo", "Elmo", "Ember", "Enzo", "Felix", "Finn", "Fizz", "Flash", "Frodo", "Fuzzy", "Gizmo",
    "Goose", "Gus", "Harley", "Hugo", "Iggy", "Indie", "Iris", "Ivy", "Jax", "Jelly", "Jinx",
    "Juno", "Kai", "Kira", "Koda", "Leo", "Lola", "Louie", "Luna", "Mabel", "Marble", "Marley",
    "Milo", "Minnie", "Miso", "Misty", "Murphy", "Nala", "Neo", "Nibbles", "Nugget", "Odie",
    "Ollie", "Oscar", "Otis", "Ozzy", "Paddy", "Pancho", "Panda", "Patch", "Penny", "Percy",
    "Pippin", "Pluto", "Poppy", "Porky", "Prince", "Pudding", "Rex", "Ricky", "Rigby", "Rio",
    "Rocco", "Romeo", "Rosie", "Roxy", "Rufus", "Sammy", "Sasha", "Scooter", "Skipper", "Smokey",
    "Snoopy", "Sparky", "Spike", "Sugar", "Tango", "Tiger", "Tinker", "Toby", "Trixie", "Tucker",
    "Twiggy", "Vito", "Wally", "Wiggles", "Winnie", "Yoda", "Zeus", "Zippy", "Zorro", "Bramble",
    "Cinder", "Coco", "Dino", "Fern", "Gumbo", "Hobbes", "Kipper", "Lychee", "Nori", "Pesto",
    "Quokka", "Ramen", "Sushi", "Tater", "Umber", "Vega", "Wasabi",
];

/// Replaces each `{}` in `template` with the next argument.
pub fn fill(template: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    let mut args = args.iter();
    while let Some(i) = rest.find("{}") {
        out.push_str(&rest[..i]);
        out.push_str(args.next().expect("template has more `{}` than arguments"));
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    out
}

pub use crate::attr::with_article;

/// Upper-cases the first character.
pub fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// "x", "x and y", "x, y and z".
pub fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// An A/B question in the LLaVA multiple-choice layout:
/// `"{question}\nA: {a}\nB: {b}\n{CHOICE_ANSWER}"`. The answer is "A" or "B".
pub fn format_choice(question: &str, a: &str, b: &str) -> String {
    format!("{question}\nA: {a}\nB: {b}\n{CHOICE_ANSWER}")
}

/// The caption phrase of one object with its size: "a large red star with blue dots".
pub fn sized_phrase(combo: &Combo, size: Size) -> String {
    with_article(&format!("{size} {}", combo.noun_phrase()))
}

/// Reads a caption in the layout of [`crate::caption_of`] back into its objects, in caption
/// order (largest first): "A large red star with blue dots and a small green circle." →
/// `[(Large, red star with blue dots), (Small, green circle)]`. Case and the final full stop
/// are ignored. `None` when any part of the text is not that layout, or names an impossible
/// object: a model's caption is only trusted whole.
pub fn parse_caption(caption: &str) -> Option<Vec<(Size, Combo)>> {
    let text = caption
        .trim()
        .trim_end_matches('.')
        .to_lowercase()
        .replace(',', " , ");
    let mut words = text.split_whitespace().peekable();
    let mut objects = Vec::new();
    loop {
        if !matches!(words.next()?, "a" | "an") {
            return None;
        }
        let size = Size::from_name(words.next()?)?;
        let colour = Colour::from_name(words.next()?)?;
        let shape = Shape::from_name(words.next()?)?;
        let (pattern, secondary) = if words.peek() == Some(&"with") {
            words.next();
            match words.next()? {
                "a" => {
                    let border = Colour::from_name(words.next()?)?;
                    (words.next()? == "border").then_some((Pattern::Border, Some(border)))?
                }
                word => {
                    let secondary = Colour::from_name(word)?;
                    let pattern = Pattern::from_name(words.next()?)?;
                    if matches!(pattern, Pattern::Solid | Pattern::Border) {
                        return None;
                    }
                    (pattern, Some(secondary))
                }
            }
        } else {
            (Pattern::Solid, None)
        };
        objects.push((size, Combo::new(shape, colour, pattern, secondary).ok()?));
        match words.next() {
            None => return Some(objects),
            Some("," | "and") => {}
            Some(_) => return None,
        }
    }
}

/// "the dots on {}", "the border of {}": how to refer to a pattern's colour.
pub fn pattern_part(pattern: Pattern) -> Option<(&'static str, &'static str)> {
    match pattern {
        Pattern::Solid => None,
        Pattern::Stripes => Some(("What colour are the stripes on {}?", "stripes")),
        Pattern::Dots => Some(("What colour are the dots on {}?", "dots")),
        Pattern::Checks => Some(("What colour are the checks on {}?", "checks")),
        Pattern::Border => Some(("What colour is the border of {}?", "border")),
    }
}

/// A short answer word: "Red", "Star", "Dots", "Large".
pub fn answer_word(word: &str) -> String {
    capitalise(word)
}

/// Templates of the A/B questions about an intrinsic attribute; `{}` is the subject.
pub fn choice_question(attribute: Attribute, subject: &str, combo: &Combo) -> Option<String> {
    let q = match attribute {
        Attribute::Shape => fill("What shape is {}?", &[subject]),
        Attribute::Colour => fill("What colour is {}?", &[subject]),
        Attribute::Pattern => fill("What pattern does {} have?", &[subject]),
        Attribute::Secondary => fill(pattern_part(combo.pattern())?.0, &[subject]),
    };
    Some(q)
}

/// The option text of `combo`'s value for `attribute` ("star", "red", "dots", "blue").
pub fn attribute_value(attribute: Attribute, combo: &Combo) -> Option<&'static str> {
    Some(match attribute {
        Attribute::Shape => combo.shape().name(),
        Attribute::Colour => combo.colour().name(),
        Attribute::Pattern => combo.pattern().name(),
        Attribute::Secondary => combo.secondary()?.name(),
    })
}

/// Literal text of every template of `tasks` that has no constant here, for the vocabulary.
pub(crate) const TEMPLATE_TEXT: &str = "{} is {}. What colour is {}? What shape is {}? \
    What pattern does {} have? What size is {}? How many {} are there? \
    How many {} objects are there? the {} the {} object the object \
    Is {} {}? Is {} a {}? Does {} have {}? Does {} have a border? \
    Where is {} in this photo? on the left on the right \
    How big is {} in this photo? What is next to {} in this photo? \
    Which of these is {}? Which of these is in this photo?";

/// Every word list a generator may draw from, for building the vocabulary.
pub(crate) fn vocabulary_sources() -> Vec<String> {
    let mut out: Vec<String> = vec![
        SYSTEM_PROMPT.into(),
        ROLES.join(" "),
        SHORT_ANSWER.into(),
        CHOICE_ANSWER.into(),
        EXTRA_TEXT.into(),
        TEMPLATE_TEXT.into(),
    ];
    out.extend(RECOGNITION_QUESTIONS.iter().map(|s| s.to_string()));
    out.extend(CAPTION_QUESTIONS.iter().map(|s| s.to_string()));
    out.extend(DESCRIBE_NAME_QUESTIONS.iter().map(|s| s.to_string()));
    out.extend(NAMES.iter().map(|s| s.to_string()));
    out.extend(
        Shape::ALL
            .iter()
            .map(|s| format!("{} {}", s.name(), s.plural())),
    );
    out.extend(Colour::ALL.iter().map(|c| c.name().to_string()));
    out.extend(Pattern::ALL.iter().map(|p| p.name().to_string()));
    out.extend(Size::ALL.iter().map(|s| s.name().to_string()));
    out.extend(Attribute::ALL.iter().map(|a| a.name().to_string()));
    for &p in Pattern::ALL {
        if let Some((q, w)) = pattern_part(p) {
            out.push(q.into());
            out.push(w.into());
        }
    }
    out.push("A B Yes No".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_articles() {
        assert_eq!(fill("Is {} in {}?", &["x", "y"]), "Is x in y?");
        assert_eq!(with_article("orange ring"), "an orange ring");
        assert_eq!(with_article("large orange ring"), "a large orange ring");
        assert_eq!(capitalise("a red star"), "A red star");
        let items = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(join_and(&items), "a, b and c");
        assert_eq!(join_and(&items[..2]), "a and b");
    }

    #[test]
    fn captions_parse_back_into_their_objects() {
        for (i, combo) in Combo::all().iter().enumerate() {
            let size = Size::ALL[i % Size::ALL.len()];
            let one = format!("{}.", capitalise(&sized_phrase(combo, size)));
            assert_eq!(parse_caption(&one), Some(vec![(size, *combo)]), "{one}");
        }
        // The captions the pretraining writes, of scenes with one to three objects.
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut counts = [0usize; 4];
        for _ in 0..400 {
            let scene = crate::generic_scene(&mut rng, &[]);
            let caption = crate::caption_of(&scene);
            let mut parsed = parse_caption(&caption).unwrap_or_else(|| panic!("{caption}"));
            counts[parsed.len().min(3)] += 1;
            for o in &scene.objects {
                let at = parsed
                    .iter()
                    .position(|p| *p == (o.size, o.combo))
                    .unwrap_or_else(|| panic!("{caption} lacks {:?}", o.combo));
                parsed.swap_remove(at);
            }
            assert!(
                parsed.is_empty(),
                "{caption} names more objects than the scene has"
            );
        }
        assert!(
            counts[1] > 0 && counts[2] > 0 && counts[3] > 0,
            "{counts:?}"
        );
    }

    #[test]
    fn captions_outside_the_layout_do_not_parse() {
        for bad in [
            "",
            "A large red star and",
            "A large red star with",
            "A large red star with blue",
            "A large red star with red dots.",
            "A large red star with blue solid.",
            "A large red star with blue border.",
            "A large red star with a blue dots.",
            "A huge red star.",
            "A large red blob.",
            "Large red star.",
            "A large red star or a small blue heart.",
            "A large red star. Yes",
        ] {
            assert_eq!(parse_caption(bad), None, "{bad:?}");
        }
        assert!(parse_caption("a LARGE red star with a blue border").is_some());
    }

    #[test]
    fn names_are_distinct_capitalised_single_words() {
        assert!(NAMES.len() >= 200, "{} names", NAMES.len());
        let mut seen = std::collections::BTreeSet::new();
        for n in NAMES {
            assert!(n.chars().all(|c| c.is_ascii_alphabetic()), "{n}");
            assert!(n.chars().next().unwrap().is_ascii_uppercase(), "{n}");
            assert!(n.len() <= 24, "{n}");
            assert!(seen.insert(n.to_ascii_lowercase()), "duplicate {n}");
        }
    }
}
