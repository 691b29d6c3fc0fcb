#!/usr/bin/env python3
"""Build the LLaVA-1.5 parity fixture used by `runtime/tests/parity.rs`.

The fixture is a tiny, randomly initialised checkpoint with the exact
LLaVA-1.5 topology (CLIP ViT with 336 px / patch 14 -> 576 patches, feature
layer -2 with the CLS token dropped, GELU MLP projector, Llama decoder with
GQA), saved in the llava-hf layout, plus reference tensors computed with
transformers' `LlavaForConditionalGeneration` and the PIL image processor.

Nothing here runs in CI; the outputs are committed. Usage:

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 \\
        /work/pyenv/bin/python tools/parity/make_fixture.py \\
        --out runtime/tests/fixtures/parity

Re-running with the same library versions reproduces the same bytes; the
versions used are recorded in `reference.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np
import PIL
import PIL.Image
import PIL.ImageDraw
import safetensors.torch
import tokenizers
import torch
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import load_image
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

SEED = 20240611
IMAGE_SIZE = 336
PATCH = 14
K_LATENTS = 16
MAX_NEW_TOKENS = 8

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# A small corpus so the BPE learns whole words for the prompt vocabulary
# ("Yes", "No", "USER", "ASSISTANT", ...). Everything else falls back to bytes.
CORPUS = [
    SYSTEM,
    "USER: What is in the image? ASSISTANT: A cat sitting on a red sofa.",
    "USER: Is this a photo of a dog? ASSISTANT: Yes",
    "USER: Is the person in the picture wearing a hat? ASSISTANT: No",
    "Can you describe the picture in detail? The image shows a small house near a lake.",
    "Yes, the object is on the table. No, there is nothing else in the photo.",
    "What color is the car? The car is blue and the sky is bright.",
    "Answer with a single word or phrase. Yes. No. Yes. No.",
    "Please describe what the subject is doing in this image.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A chat between friends about travel, food, music and the weather today.",
    "Is it in this photo? Can you see it? Where is it located in the image?",
]


def build_tokenizer() -> tokenizers.Tokenizer:
    """A Llama-2 (non-legacy) style tokenizer: BPE with byte fallback, Metaspace
    with prepend_scheme="first", BOS added by the post-processor."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials + byte_tokens,
        limit_alphabet=60,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    # Llama does not split on spaces before the model; merges never cross "▁".
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tok.add_special_tokens([tokenizers.AddedToken("<image>", special=True, normalized=False)])
    return tok


def make_images(out: pathlib.Path) -> dict[str, pathlib.Path]:
    """Two synthetic test images: a landscape 4:2:0 JPEG smaller than the crop (so it is
    upscaled) and a portrait RGBA PNG that is downscaled (`load_image` drops its alpha)."""
    rng = np.random.default_rng(SEED)
    out.mkdir(parents=True, exist_ok=True)

    w, h = 400, 300
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 255 * x / w
    b = 127 + 90 * np.sin((x + y) / 17.0)
    rgb = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    img = PIL.Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = PIL.ImageDraw.Draw(img)
    draw.ellipse((100, 70, 250, 220), fill=(230, 40, 40))
    draw.rectangle((280, 30, 370, 270), fill=(20, 20, 160))
    draw.line((0, 299, 399, 0), fill=(255, 255, 255), width=5)
    jpg = out / "photo.jpg"
    img.save(jpg, quality=88)

    w, h = 480, 640
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgba = np.zeros((h, w, 4))
    rgba[..., 0] = 255 * y / h
    rgba[..., 1] = 127 + 120 * np.cos(x / 7.0)
    rgba[..., 2] = 255 * ((x // 9 + y // 13) % 2)  # sharp edges stress the filter
    rgba[..., 3] = 255
    rgba[40:200, 30:400, 3] = 255 * x[40:200, 30:400] / w  # an alpha ramp
    rgba[400:520, 60:300, 3] = 0  # a fully transparent hole with colour under it
    png = out / "logo.png"
    PIL.Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8), "RGBA").save(png, optimize=True)
    return {"photo": jpg, "logo": png}


def randomise(model: LlavaForConditionalGeneration) -> None:
    """Seeded weights with O(1) activations; every norm gain and bias random."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name or "layrnorm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed" in name and p.dim() == 2 and "patch" not in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=g))


def legacy_name(name: str) -> str:
    """transformers-5 module names -> the llava-hf checkpoint layout."""
    for new, old in [
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ]:
        if name.startswith(new):
            return old + name[len(new) :]
    raise ValueError(f"unexpected parameter {name}")


def llava_config(tok, image_token_id: int, model_vocab: int, vision: dict, text: dict):
    """LLaVA-1.5's topology around the given widths (`vision` and `text` are the size fields):
    CLIP at 336 px / patch 14 with quick-GELU, a Llama decoder with SiLU and RoPE θ 10 000,
    feature layer −2 without CLS, the GELU projector, untied head."""
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5, **vision
    )
    text = LlamaConfig(
        vocab_size=model_vocab,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **text,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        tie_word_embeddings=False,
    )
    return cfg, vision, text


def config_json(cfg, vision, text, tok, image_token_id: int, model_vocab: int, dtype: str) -> dict:
    """`config.json` in the llava-hf layout."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "ignore_index": -100,
        "image_token_index": image_token_id,
        "image_seq_length": cfg.image_seq_length,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "text_config": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads,
            "vocab_size": model_vocab,
            "max_position_embeddings": text.max_position_embeddings,
            "rms_norm_eps": text.rms_norm_eps,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "torch_dtype": dtype,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": vision.layer_norm_eps,
            "projection_dim": vision.projection_dim,
            "num_channels": 3,
        },
    }


def preprocessor_json(size: int) -> dict:
    """`preprocessor_config.json`: CLIP's, at `size` pixels."""
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": size},
    }


def markers(identifier: str) -> list[str]:
    stem = identifier[1:-1]
    return [identifier] + [f"<{stem}:{i}>" for i in range(1, K_LATENTS + 1)]


def personal_prompt(identifier: str) -> str:
    m = markers(identifier)
    return f"{m[0]} is {''.join(m[1:])}."


def llava_v1(question: str, image: bool, concepts: list[str]) -> str:
    """LLaVA `conv_llava_v1.get_prompt()` for one user turn, with the Yo'LLaVA
    personal prompt in front of the question (template `llava_v1/yollava-1`)."""
    msg = " ".join([personal_prompt(c) for c in concepts] + [question])
    if image:
        msg = "<image>\n" + msg
    return f"{SYSTEM} USER: {msg} ASSISTANT:"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    out: pathlib.Path = args.out
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    # --- tokenizer --------------------------------------------------------
    raw_tok = build_tokenizer()
    raw_tok.save(str(model_dir / "tokenizer.json"))
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vocab = len(tok)
    model_vocab = ((vocab + 63) // 64) * 64  # padded like llava-hf's 32064

    # --- model ------------------------------------------------------------
    cfg, vision, text = llava_config(
        tok,
        image_token_id,
        model_vocab,
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, projection_dim=48),
        text=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
        ),
    )
    model = LlavaForConditionalGeneration(cfg).float().eval()
    randomise(model)

    state = {legacy_name(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    config = config_json(cfg, vision, text, tok, image_token_id, model_vocab, "float32")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (model_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_json(IMAGE_SIZE), indent=2) + "\n")

    # The checkpoint must load back through transformers' own llava-hf key
    # mapping with nothing missing or left over.
    reloaded, info = LlavaForConditionalGeneration.from_pretrained(
        str(model_dir), output_loading_info=True, dtype=torch.float32
    )
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"checkpoint does not round-trip: {problems}")
    model = reloaded.eval()

    # --- images and pixel values ------------------------------------------
    images = make_images(out / "images")
    proc_kwargs = dict(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=PIL.Image.Resampling.BICUBIC,
    )
    plain = LlavaImageProcessorPil(**proc_kwargs)
    padded = LlavaImageProcessorPil(do_pad=True, **proc_kwargs)
    tensors: dict[str, torch.Tensor] = {}
    pil_images = {k: load_image(str(p)) for k, p in images.items()}
    for key, img in pil_images.items():
        tensors[f"pixel_values.{key}"] = plain(img, return_tensors="pt")["pixel_values"][0]
    tensors["pixel_values_pad.photo"] = padded(pil_images["photo"], return_tensors="pt")["pixel_values"][0]
    # libjpeg-turbo's decode of the JPEG (HWC uint8): JPEG decoders differ in their IDCT
    # and chroma upsampling, so the runtime's preprocessing is checked bit-exact on these
    # pixels and only approximately through its own decoder.
    decoded = {"decoded.photo": torch.from_numpy(np.array(pil_images["photo"]))}

    with torch.no_grad():
        for key in pil_images:
            pv = tensors[f"pixel_values.{key}"][None]
            vt = model.model.vision_tower(pv, output_hidden_states=True)
            tensors[f"vision_hidden.{key}"] = vt.hidden_states[-2][0].contiguous()
            feats = model.model.get_image_features(
                pixel_values=pv, vision_feature_layer=-2, vision_feature_select_strategy="default"
            ).pooler_output
            tensors[f"image_features.{key}"] = feats[0].contiguous()

    # --- main prompt: raw text with <image>, through LlavaProcessor ------------
    processor = transformers.LlavaProcessor(
        image_processor=plain,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    raw_prompt = "USER: <image>\nWhat is in the image? ASSISTANT:"
    enc = processor(images=pil_images["logo"], text=raw_prompt, return_tensors="pt")
    if not torch.equal(enc["pixel_values"][0], tensors["pixel_values.logo"]):
        sys.exit("processor pixel values differ from the image processor's")
    input_ids = enc["input_ids"]
    with torch.no_grad():
        fwd = model(input_ids=input_ids, pixel_values=enc["pixel_values"])
        tensors["raw.logits"] = fwd.logits[0].contiguous()
        gen = model.generate(
            input_ids=input_ids,
            pixel_values=enc["pixel_values"],
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
    generated = gen[0, input_ids.shape[1] :].tolist()

    # --- concept prompts: tokens added as transformers/Yo'LLaVA does ----------
    identifier = "<bo>"
    concept_markers = markers(identifier)
    g = torch.Generator().manual_seed(SEED + 1)
    d = text.hidden_size
    concept = {
        "identifier": torch.randn(d, generator=g),
        "latents": torch.randn(K_LATENTS, d, generator=g),
        "head": torch.randn(d, generator=g) / math.sqrt(d),
    }
    for k, v in concept.items():
        tensors[f"concept.{k}"] = v.contiguous()

    tok_added = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok_added.add_tokens(concept_markers)
    tok_special = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok_special.add_special_tokens({"additional_special_tokens": concept_markers})
    added_base = tok_added.convert_tokens_to_ids(concept_markers[0])

    def ours(ids: list[int]) -> list[int]:
        # transformers puts added tokens at len(tokenizer); the runtime puts
        # concept tokens right after the model's (padded) vocabulary.
        return [model_vocab + (i - added_base) if i >= added_base else i for i in ids]

    tokenization_cases = []
    for text_case in [
        personal_prompt(identifier) + " What is <bo> doing?",
        "Hello<bo>world",
        " <bo> ",
        "<bo>\n<bo:3>x <bo:16>y.",
        "no markers here",
        llava_v1("Can you describe <bo>?", image=False, concepts=[identifier]),
        llava_v1("Is <bo> in this photo?", image=True, concepts=[identifier]),
    ]:
        for add_special in (True, False):
            ids_added = tok_added(text_case, add_special_tokens=add_special)["input_ids"]
            ids_special = tok_special(text_case, add_special_tokens=add_special)["input_ids"]
            tokenization_cases.append(
                {
                    "text": text_case,
                    "add_special_tokens": add_special,
                    "ids_add_tokens": ours(ids_added),
                    "ids_add_special_tokens": ours(ids_special),
                }
            )

    def concept_forward(ids: list[int], pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Reference personalised forward: concept rows spliced into the
        embeddings, logits = [lm_head(h), h . head] (one extra column)."""
        t = torch.tensor([ids])
        base = t.clamp(max=model_vocab - 1)
        with torch.no_grad():
            emb = model.get_input_embeddings()(base)
            for pos, i in enumerate(ids):
                if i >= model_vocab:
                    j = i - model_vocab
                    emb[0, pos] = concept["identifier"] if j == 0 else concept["latents"][j - 1]
            if pixel_values is not None:
                feats = model.model.get_image_features(
                    pixel_values=pixel_values, vision_feature_layer=-2, vision_feature_select_strategy="default"
                ).pooler_output[0]
                mask = t[0] == image_token_id
                emb[0, mask] = feats
            h = model.model.language_model(inputs_embeds=emb).last_hidden_state[0]
            return torch.cat([model.lm_head(h), (h @ concept["head"])[:, None]], dim=-1)

    text_question = "Can you describe <bo>?"
    text_prompt = llava_v1(text_question, image=False, concepts=[identifier])
    text_ids = ours(tok_added(text_prompt)["input_ids"])
    tensors["concept_text.logits"] = concept_forward(text_ids, None).contiguous()

    def expand_image(ids: list[int]) -> list[int]:
        n = cfg.image_seq_length
        return [j for i in ids for j in ([i] * n if i == image_token_id else [i])]

    image_question = "Is <bo> in this photo? Answer with a single word or phrase."
    image_prompt = llava_v1(image_question, image=True, concepts=[identifier])
    image_ids = expand_image(ours(tok_added(image_prompt)["input_ids"]))
    logits = concept_forward(image_ids, tensors["pixel_values.logo"][None])
    tensors["concept_image.last_logits"] = logits[-1].contiguous()
    probs = torch.softmax(logits[-1].double(), -1)
    yes_id = tok("Yes", add_special_tokens=False)["input_ids"][0]
    no_id = tok("No", add_special_tokens=False)["input_ids"][0]

    render_ids = ours(tok_added("<bo> is a cat.<bo:2> Yes", add_special_tokens=False)["input_ids"])

    to_save = {k: v.float().contiguous() for k, v in sorted(tensors.items())}
    to_save.update({k: v.contiguous() for k, v in decoded.items()})
    safetensors.torch.save_file(to_save, str(out / "reference.safetensors"))
    reference = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "model_vocab_size": model_vocab,
        "tokenizer_len": vocab,
        "image_token_id": image_token_id,
        "eos_token_id": tok.eos_token_id,
        "images": {k: str(p.relative_to(out)) for k, p in images.items()},
        "raw": {
            "prompt": raw_prompt,
            "image": "logo",
            "input_ids": input_ids[0].tolist(),
            "generated_ids": generated,
            "generated_text": tok.decode(generated, skip_special_tokens=True),
        },
        "concept": {"identifier": identifier, "k": K_LATENTS, "markers": concept_markers},
        "tokenization": tokenization_cases,
        "concept_text": {"question": text_question, "prompt": text_prompt, "input_ids": text_ids},
        "concept_image": {
            "question": image_question,
            "prompt": image_prompt,
            "image": "logo",
            "input_ids": image_ids,
            "yes_id": yes_id,
            "no_id": no_id,
            "p_yes": probs[yes_id].item(),
            "p_no": probs[no_id].item(),
        },
        "render": {"ids": render_ids, "text": tok_added.decode(
            [i if i < model_vocab else added_base + i - model_vocab for i in render_ids]
        )},
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {out}: vocab {vocab} (model {model_vocab}), image token {image_token_id}, generated {generated}")


if __name__ == "__main__":
    main()
