//! The trained model as an ordinary llava-hf folder (with the toy's declared conv stem)

use std::path::Path;

use toy_world::{Colour, Pattern, Shape};

use crate::error::{io_err, PretrainError, Result};
use crate::model::config_json;

use super::{save_tensors, write_synced, Trainer};

/// The toy model's own recognition phrasing for concept training (`concepts_templates.json`,
/// read by the trainer in place of Yo'LLaVA's templates): the questions it was pretrained
/// on, with `<sks>` for the name, and their one-word answers; and the attribute questions
/// of the conversation data in its phrasing.
pub fn recognition_templates_json() -> serde_json::Value {
    use toy_world::text::SHORT_ANSWER;
    let questions = [
        "Can you see if <sks> is in this photo?",
        "Is <sks> in this photo?",
        "Can you see <sks> in this photo?",
        "Is <sks> in this image?",
        "Can you see if <sks> is in this image?",
    ];
    let colours: Vec<&str> = Colour::ALL.iter().map(|c| c.name()).collect();
    let shapes: Vec<&str> = Shape::ALL.iter().map(|c| c.name()).collect();
    let patterns: Vec<&str> = Pattern::ALL.iter().map(|c| c.name()).collect();
    let pairs = |answer: &str| -> Vec<(String, String)> {
        questions
            .iter()
            .map(|q| (format!("{q} {SHORT_ANSWER}"), answer.to_string()))
            .collect()
    };
    serde_json::json!({
        "id": "toy-world-recognition-v1",
        "positive": pairs("Yes"),
        "negative": pairs("No"),
        // Asked about each training photo (where the subject is the main object), trained
        // with the subject named; each answer also becomes an A/B question against another
        // option, in the pretraining's choice layout.
        "subject_questions": [
            {"ask": "What colour is the object?", "train": "What colour is this subject?", "options": colours},
            {"ask": "What shape is the object?", "train": "What shape is this subject?", "options": shapes},
            {"ask": "What pattern does the object have?", "train": "What pattern does this subject have?", "options": patterns},
            {"ask": "What colour is the border of the object?", "train": "What colour is the border of this subject?", "options": colours},
            {"ask": "What colour are the stripes on the object?", "train": "What colour are the stripes on this subject?", "options": colours},
            {"ask": "What colour are the dots on the object?", "train": "What colour are the dots on this subject?", "options": colours},
            {"ask": "What colour are the checks on the object?", "train": "What colour are the checks on this subject?", "options": colours},
        ],
        "choice_format": format!("{{question}}\nA: {{a}}\nB: {{b}}\n{}", toy_world::text::CHOICE_ANSWER),
    })
}

pub(crate) fn preprocessor_json(size: usize) -> serde_json::Value {
    serde_json::json!({
        "crop_size": {"height": size, "width": size},
        "do_center_crop": true,
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": size},
    })
}

impl Trainer {
    /// Writes the model in the llava-hf layout to `dir`: `config.json`, `model.safetensors`
    /// (hub-layout names, f32), `tokenizer.json`, `preprocessor_config.json`. Each file is
    /// replaced atomically.
    pub fn export(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let json = |v: &serde_json::Value, path: &Path| -> Result<()> {
            let text = serde_json::to_string_pretty(v).map_err(|source| PretrainError::Json {
                path: path.to_path_buf(),
                source,
            })?;
            write_synced(path, format!("{text}\n").as_bytes())
        };
        json(&config_json(&self.llava), &dir.join("config.json"))?;
        json(
            &preprocessor_json(self.cfg.size.image_size),
            &dir.join("preprocessor_config.json"),
        )?;
        json(
            &recognition_templates_json(),
            &dir.join("concepts_templates.json"),
        )?;
        let tok = dir.join("tokenizer.json");
        let tmp = tok.with_extension("json.tmp");
        toy_world::write_tokenizer(&tmp)?;
        std::fs::rename(&tmp, &tok).map_err(io_err(&tok))?;
        save_tensors(&self.params.tensors()?, &dir.join("model.safetensors"))
    }
}
