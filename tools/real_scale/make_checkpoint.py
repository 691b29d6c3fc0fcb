#!/usr/bin/env python3
"""Write a checkpoint with LLaVA-1.5-7B's exact shapes and seeded random weights.

CLIP ViT-L/14-336 (24 layers, width 1024), the two-layer GELU projector, and a
Llama-2-7B decoder (width 4096, 32 layers, MLP 11008, 32 heads, vocabulary 32064),
in the llava-hf layout (`config.json`, sharded `model-*.safetensors` with
`model.safetensors.index.json`, `tokenizer.json`, `preprocessor_config.json`), so
that `concepts` and transformers load the same files. The weights are random (no
real checkpoint is downloaded or needed): they measure speed and memory at real
scale, not quality. `--text-layers` / `--vision-layers` write truncated variants
to measure per layer on a machine that cannot hold the whole model.

Nothing is committed. Usage (about 14 GB for the full model in float16):

    /work/pyenv/bin/python tools/real_scale/make_checkpoint.py --out /tmp/llava7b-2l \\
        --text-layers 2 --dtype float32
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import sys

import safetensors.torch
import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "parity"))
import make_fixture as fixture  # noqa: E402  (the parity fixture's tokenizer, names and config writers)

VOCAB = 32064  # llava-hf/llava-1.5-7b-hf pads its 32002-token tokenizer to this

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Seeded by the tensor's name, so a truncated variant shares its tensors with the full
    model; scaled as the parity fixture's (`fixture.randomise`) for O(1) activations."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    x = torch.randn(shape, generator=g)
    if "norm" in name or "layrnorm" in name:
        return 1.0 + 0.2 * x if name.endswith("weight") else 0.2 * x
    if name.endswith("bias"):
        return 0.1 * x
    if "embed" in name and len(shape) == 2 and "patch" not in name:
        return x
    if len(shape) >= 2:
        return x / math.sqrt(math.prod(shape[1:]))
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    ap.add_argument("--text-layers", type=int, default=32)
    ap.add_argument("--vision-layers", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gb", type=float, default=4.0, help="largest shard, in GB")
    args = ap.parse_args()
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[args.dtype]

    raw_tok = fixture.build_tokenizer()
    raw_tok.save(str(out / "tokenizer.json"))
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(out / "tokenizer.json"), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    image_token_id = tok.convert_tokens_to_ids("<image>")

    cfg, vision, text = fixture.llava_config(
        tok,
        image_token_id,
        VOCAB,
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=args.vision_layers,
            num_attention_heads=16,
            projection_dim=768,
        ),
        text=dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=args.text_layers,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
        ),
    )
    # Only the names and shapes: no memory is allocated for the model itself.
    with torch.device("meta"):
        shapes = {fixture.legacy_name(k): tuple(v.shape) for k, v in LlavaForConditionalGeneration(cfg).state_dict().items()}

    # Plan the shards by size, then write them one at a time (peak memory: one shard).
    itemsize = torch.empty((), dtype=dtype).element_size()
    limit = int(args.shard_gb * 1e9)
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(shapes):
        n = math.prod(shapes[name]) * itemsize
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    weight_map = {}
    total = 0
    for i, names in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        part = {name: tensor(name, shapes[name], args.seed).to(dtype).contiguous() for name in names}
        safetensors.torch.save_file(part, str(out / file), metadata={"format": "pt"})
        total += sum(t.numel() * itemsize for t in part.values())
        weight_map.update({name: file for name in names})
        print(f"{file}: {len(names)} tensors", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = fixture.config_json(cfg, vision, text, tok, image_token_id, VOCAB, args.dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(fixture.preprocessor_json(fixture.IMAGE_SIZE), indent=2) + "\n")
    print(f"{out}: {sum(math.prod(s) for s in shapes.values()) / 1e9:.2f} B parameters, {total / 1e9:.2f} GB", flush=True)


if __name__ == "__main__":
    main()
