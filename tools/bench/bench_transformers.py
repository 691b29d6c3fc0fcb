#!/usr/bin/env python3
"""The transformers half of `tools/bench/run.sh`: the measurements of
`runtime/benches/inference.rs`, done with `LlavaForConditionalGeneration` on the same
checkpoint, prompt, image and decode length, on CPU in f32.

    OMP_WAIT_POLICY=PASSIVE /work/pyenv/bin/python tools/bench/bench_transformers.py \\
        --threads 1 --out py.json

What is timed (a warm-up, then n repetitions; median and minimum reported):

* load: `LlavaForConditionalGeneration.from_pretrained` + tokenizer + image processor.
* preprocess: `load_image` + `LlavaImageProcessorPil` (the processor the parity fixture was
  made with; its output equals the runtime's bit for bit on PNG files).
* prefill: the `llava_v1` chat prompt with one image, from text and pixel values to the first
  token: the `<image>` marker expanded to 576 markers and tokenized (what `LlavaProcessor`
  does), then one forward with `use_cache=True, logits_to_keep=1`, argmax.
* prefill.vision, prefill.decoder: its two big parts, `get_image_features` on the pixel
  values, and the language model over the embedded prompt (`use_cache=True`) + LM head on the
  last position.
* decode: N more greedy tokens, one forward per token over the `DynamicCache` (a hand-written
  loop, like the runtime's: no logits processors or stopping criteria).
* generate: tokenization + `model.generate(max_new_tokens=N + 1, do_sample=False)` with EOS
  disabled, so exactly N + 1 tokens are produced, as in the runtime's `Engine::generate`.
* activate: what the reference Yo'LLaVA code does to add a concept with k = 16:
  `tokenizer.add_tokens` of the 17 markers, `model.resize_token_embeddings(len(tokenizer))`
  (default `mean_resizing=True`), writing the 17 input-embedding rows and the identifier's
  LM-head row. `activate_no_mean_resizing` is the same with `mean_resizing=False`.
* deactivate: `resize_token_embeddings` back to the base vocabulary and the tokenizer
  restored from a pristine copy (`copy.deepcopy`; tokenizers cannot remove added tokens).

Everything runs under `torch.inference_mode()` with `torch.set_num_threads(--threads)`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Callable

import PIL
import tokenizers
import torch
import transformers
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast
from transformers.image_utils import load_image
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO / "runtime/tests/fixtures/parity"
QUESTION = "What is in the image?"
K = 16
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def chat_prompt(question: str) -> str:
    """LLaVA-1.5 `conv_llava_v1` for one user turn with an image and no concept (the
    runtime's `Engine::chat_prompt`)."""
    return f"{SYSTEM} USER: <image>\n{question} ASSISTANT:"


def load_tokenizer(model_dir: pathlib.Path):
    if (model_dir / "tokenizer_config.json").is_file():
        return transformers.AutoTokenizer.from_pretrained(str(model_dir))
    # The parity fixture ships tokenizer.json only (as make_fixture.py loads it).
    return PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def load_image_processor(model_dir: pathlib.Path) -> LlavaImageProcessorPil:
    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    return LlavaImageProcessorPil(
        size=cfg.get("size", {"shortest_edge": 336}),
        crop_size=cfg.get("crop_size", {"height": 336, "width": 336}),
        resample=PIL.Image.Resampling(cfg.get("resample", 3)),
        image_mean=cfg.get("image_mean"),
        image_std=cfg.get("image_std"),
    )


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in pathlib.Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


class Samples:
    def __init__(self, name: str, times: list[float]):
        self.name = name
        self.times = sorted(times)

    def median(self) -> float:
        return statistics.median(self.times)

    def min(self) -> float:
        return self.times[0]

    def json(self) -> dict:
        return {"median_s": self.median(), "min_s": self.min(), "n": len(self.times), "samples_s": self.times}


def measure(name: str, warmup: int, n: int, f: Callable[[], float]) -> Samples:
    """`f` runs one repetition and returns the seconds of the part it times."""
    for _ in range(warmup):
        f()
    return Samples(name, [f() for _ in range(n)])


def timed(f: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def fmt_time(s: float) -> str:
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"


def concept_values(d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The runtime bench's fixed pseudo-random concept (values do not matter for timing)."""

    def v(offset: int, n: int) -> torch.Tensor:
        return torch.tensor([(((i + offset) * 7919 % 1000) / 500.0 - 1.0) * 0.5 for i in range(n)])

    return v(0, d), v(d, K * d).reshape(K, d), v((K + 1) * d, d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    ap.add_argument("--model", type=pathlib.Path, default=FIXTURE / "model")
    ap.add_argument("--image", type=pathlib.Path, default=FIXTURE / "images/logo.png")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every repetition count")
    ap.add_argument("--out", type=pathlib.Path, help="write the results as JSON")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    threads = torch.get_num_threads()
    load_before = loadavg()
    n_decode = args.decode_tokens

    def reps(n: int) -> int:
        return max(3, round(n * args.scale))

    print(
        f"bench: model {args.model}, image {args.image}, {threads} thread(s), {n_decode} decode tokens",
        file=sys.stderr,
    )

    def load():
        model = LlavaForConditionalGeneration.from_pretrained(str(args.model), dtype=torch.float32).eval()
        return model, load_tokenizer(args.model), load_image_processor(args.model)

    with torch.inference_mode():
        load_s = measure("load", 1, reps(5), lambda: timed(load)[1])
        model, tok, processor = load()
        cfg = model.config
        image_tokens = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        if cfg.vision_feature_select_strategy == "full":
            image_tokens += 1

        def preprocess() -> torch.Tensor:
            return processor(load_image(str(args.image)), return_tensors="pt")["pixel_values"]

        preprocess_s = measure("preprocess", 2, reps(20), lambda: timed(preprocess)[1])
        pixel_values = preprocess()
        prompt = chat_prompt(QUESTION)
        expanded = prompt.replace("<image>", "<image>" * image_tokens)
        prompt_ids = tok(expanded, return_tensors="pt")["input_ids"][0].tolist()

        def prefill():
            enc = tok(expanded, return_tensors="pt")
            out = model(
                input_ids=enc["input_ids"], pixel_values=pixel_values, use_cache=True, logits_to_keep=1
            )
            return out.cache, int(out.logits[0, -1].argmax())

        prefill_s = measure("prefill", 3, reps(30), lambda: timed(prefill)[1])

        # The two halves of the prefill: vision tower + projector, decoder over the embeddings.
        def vision():
            return model.model.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            ).pooler_output

        vision_s = measure("prefill.vision", 3, reps(30), lambda: timed(vision)[1])
        ids_t = torch.tensor([prompt_ids])
        embeds = model.get_input_embeddings()(ids_t)
        mask = ids_t[0] == cfg.image_token_id
        embeds[0, mask] = vision()[0].reshape(-1, embeds.shape[-1])

        def decoder():
            h = model.model.language_model(inputs_embeds=embeds, use_cache=True).last_hidden_state
            return model.lm_head(h[:, -1:])

        decoder_s = measure("prefill.decoder", 3, reps(30), lambda: timed(decoder)[1])

        def decode(cache, first: int, n: int) -> list[int]:
            ids = []
            nxt = first
            for _ in range(n):
                out = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True)
                cache = out.cache
                nxt = int(out.logits[0, -1].argmax())
                ids.append(nxt)
            return ids

        greedy_ids: list[int] = []

        def decode_rep() -> float:
            nonlocal greedy_ids
            cache, first = prefill()
            ids, t = timed(lambda: decode(cache, first, n_decode))
            greedy_ids = [first] + ids
            return t

        decode_s = measure("decode", 2, reps(15), decode_rep)

        gen_cfg = copy.deepcopy(model.generation_config)
        gen_cfg.eos_token_id = None
        gen_cfg.pad_token_id = tok.eos_token_id
        gen_cfg.do_sample = False
        gen_cfg.max_new_tokens = n_decode + 1
        generated_ids: list[int] = []

        def generate_rep() -> float:
            nonlocal generated_ids

            def run():
                enc = tok(expanded, return_tensors="pt")
                return model.generate(**enc, pixel_values=pixel_values, generation_config=gen_cfg)

            out, t = timed(run)
            generated_ids = out[0, len(prompt_ids) :].tolist()
            return t

        generate_s = measure("generate", 1, reps(10), generate_rep)
        if generated_ids != greedy_ids:
            sys.exit(f"model.generate gave {generated_ids}, the decode loop {greedy_ids}")

        # --- concepts: Yo'LLaVA's add_tokens + resize_token_embeddings ---------------
        base_tok = copy.deepcopy(tok)
        base_vocab = model.get_input_embeddings().weight.shape[0]
        d = model.get_input_embeddings().weight.shape[1]
        identifier, latents, head = concept_values(d)
        markers = ["<bo>"] + [f"<bo:{i}>" for i in range(1, K + 1)]

        def activate(mean_resizing: bool) -> None:
            if tok.add_tokens(markers) != len(markers):
                sys.exit("add_tokens did not add every marker")
            model.resize_token_embeddings(len(tok), mean_resizing=mean_resizing)
            ids = tok.convert_tokens_to_ids(markers)
            emb = model.get_input_embeddings().weight
            emb[ids[0]] = identifier
            emb[ids[1:]] = latents
            model.get_output_embeddings().weight[ids[0]] = head

        def deactivate() -> None:
            nonlocal tok
            model.resize_token_embeddings(base_vocab, mean_resizing=False)
            tok = copy.deepcopy(base_tok)

        deactivate_times: list[float] = []

        def activate_rep(mean_resizing: bool, record: bool) -> float:
            t_on = timed(lambda: activate(mean_resizing))[1]
            t_off = timed(deactivate)[1]
            if record:
                deactivate_times.append(t_off)
            return t_on

        activate_s = measure("activate", 20, reps(300), lambda: activate_rep(True, True))
        deactivate_s = Samples("deactivate", deactivate_times[20:])
        activate_plain_s = measure("activate_no_mean_resizing", 20, reps(300), lambda: activate_rep(False, False))

        # Once, untimed: the markers tokenize to the new ids and the head grew by 17 rows.
        activate(True)
        ids = tok("<bo> is <bo:1><bo:16>.", add_special_tokens=False)["input_ids"]
        new = tok.convert_tokens_to_ids(markers)
        if new[0] not in ids or new[1] not in ids or new[16] not in ids:
            sys.exit(f"concept markers tokenized to {ids}")
        if model.get_output_embeddings().weight.shape[0] != len(base_tok) + len(markers):
            sys.exit("the LM head did not grow")
        deactivate()
        if model.get_input_embeddings().weight.shape[0] != base_vocab:
            sys.exit("deactivate did not restore the vocabulary")

    all_samples = [load_s, preprocess_s, prefill_s, vision_s, decoder_s, decode_s, generate_s, activate_s, deactivate_s, activate_plain_s]
    load_after = loadavg()

    print(f"\n### transformers {transformers.__version__} (torch {torch.__version__}, f32), {threads} thread(s)\n")
    print("| measurement | median | min | n |\n| --- | ---: | ---: | ---: |")
    for s in all_samples:
        print(f"| {s.name} | {fmt_time(s.median())} | {fmt_time(s.min())} | {len(s.times)} |")
    print(
        f"\nprompt: {len(prompt_ids)} tokens; decode: {n_decode / decode_s.median():.1f} tokens/s (median), "
        f"{n_decode / decode_s.min():.1f} (best); load average {load_before} -> {load_after}"
    )

    if args.out:
        report = {
            "implementation": "transformers",
            "versions": {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "tokenizers": tokenizers.__version__,
                "pillow": PIL.__version__,
                "python": sys.version.split()[0],
            },
            "threads": threads,
            "dtype": "f32",
            "model": str(args.model),
            "image": str(args.image),
            "question": QUESTION,
            "prompt": prompt,
            "prompt_tokens": len(prompt_ids),
            "prompt_ids": prompt_ids,
            "decode_tokens": n_decode,
            "generated_ids": greedy_ids,
            "concept_k": K,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "metrics": {s.name: s.json() for s in all_samples},
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"bench: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
