#!/usr/bin/env python3
"""Seconds per Yo'LLaVA training step in PyTorch + transformers, for comparison with the Rust
trainer (`cargo bench -p concepts-trainer --bench train_step`, which runs this script).

A faithful reimplementation of the reference recipe (Yo'LLaVA's `train.py`, after textual
inversion): the identifier and k latent tokens are added to the tokenizer, the embedding
matrix and LM head are resized, every parameter is frozen except the input-embedding matrix
and the LM head, AdamW (lr 1e-3, betas 0.9/0.999, weight decay 0.01) steps on the masked
answer-only loss, and after each step every row but the new tokens' is restored from a copy
(so only the new rows change). The vision tower runs on every step, as in the reference.

Inputs come from the Rust bench (`--inputs`, a safetensors file): `input_ids` [B, T] (image
tokens already expanded, concept tokens as ids V..V+k), `labels` [B, T] (-100 outside the
answer) and `pixel_values` [B, 3, H, W]. Prints one JSON line.

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 /work/pyenv/bin/python tools/train_bench/bench.py \\
        --model runtime/tests/fixtures/parity/model --inputs inputs.safetensors --k 16
"""

import argparse
import json
import time

import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    vocab = model.config.text_config.vocab_size
    new = args.k + 1
    model.resize_token_embeddings(vocab + new)
    for p in model.parameters():
        p.requires_grad_(False)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    embed.requires_grad_(True)
    head.requires_grad_(True)
    orig_embed = embed.detach().clone()
    orig_head = head.detach().clone()
    keep = torch.ones(vocab + new, dtype=torch.bool)
    keep[vocab:] = False
    optimizer = torch.optim.AdamW([embed, head], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)

    inputs = load_file(args.inputs)
    input_ids = inputs["input_ids"].long()
    labels = inputs["labels"].long()
    pixel_values = inputs["pixel_values"].float()
    attention_mask = torch.ones_like(input_ids)

    def step():
        out = model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            labels=labels,
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            embed[keep] = orig_embed[keep]
            head[keep] = orig_head[keep]
        return out.loss.item()

    for _ in range(args.warmup):
        step()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": int(input_ids.shape[0]),
        "seq_len": int(input_ids.shape[1]),
        "seconds_per_step_median": times[len(times) // 2],
        "seconds_per_step_mean": sum(times) / len(times),
        "first_loss": losses[0],
    }))


if __name__ == "__main__":
    main()
