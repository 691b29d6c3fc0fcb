#!/usr/bin/env python3
"""The transformers column of `tools/real_scale/bench.sh`: one pass of what
`runtime/benches/real_scale.rs` measures, with `LlavaForConditionalGeneration` on the same
checkpoint, prompt and image: load, image encode (vision tower + projector), prefill of the
chat prompt to the first token, N greedy decode steps over the cache, peak RSS. JSON on stdout.

    OMP_WAIT_POLICY=PASSIVE python tools/real_scale/bench_transformers.py \\
        --model /tmp/llava7b --image photo.png --dtype bfloat16 --threads 2
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch
import transformers
from transformers import LlavaForConditionalGeneration

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from bench_transformers import QUESTION, chat_prompt, load_image, load_image_processor, load_tokenizer  # noqa: E402
from record import emit, peak_rss_bytes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, required=True)
    ap.add_argument("--image", type=pathlib.Path, required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    with torch.inference_mode():
        t = time.perf_counter()
        model = LlavaForConditionalGeneration.from_pretrained(str(args.model), dtype=getattr(torch, args.dtype)).eval()
        tok = load_tokenizer(args.model)
        processor = load_image_processor(args.model)
        load_s = time.perf_counter() - t
        rss_loaded = peak_rss_bytes()

        cfg = model.config
        pixel_values = processor(load_image(str(args.image)), return_tensors="pt")["pixel_values"].to(model.dtype)
        t = time.perf_counter()
        model.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        image_s = time.perf_counter() - t

        image_tokens = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        expanded = chat_prompt(QUESTION).replace("<image>", "<image>" * image_tokens)
        t = time.perf_counter()
        enc = tok(expanded, return_tensors="pt")
        out = model(input_ids=enc["input_ids"], pixel_values=pixel_values, use_cache=True, logits_to_keep=1)
        nxt = int(out.logits[0, -1].argmax())
        prefill_s = time.perf_counter() - t
        positions = enc["input_ids"].shape[1]

        cache = out.past_key_values
        ids = [nxt]
        t = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            ids.append(nxt)
        decode_s = time.perf_counter() - t

    emit(
        runtime=f"transformers {transformers.__version__}, torch {torch.__version__}",
        model=str(args.model), dtype=args.dtype, threads=torch.get_num_threads(), image_s=image_s,
        load_s=load_s, positions=positions, prefill_s=prefill_s, decode_tokens=args.decode_tokens,
        decode_s=decode_s, rss_after_load=rss_loaded, ids=ids,
    )


if __name__ == "__main__":
    main()
