#!/usr/bin/env python3
"""The llama.cpp column of `tools/real_scale/bench.sh`: the decoder of a quantized folder
written by `concepts quantize` (the very same Q8_0 / Q4_K / Q6_K bytes) run by llama.cpp through
`llama-cpp-python`: load, prefill of as many positions as the runtime's image prompt, N greedy
decode steps, peak RSS. JSON on stdout.

The runtime's GGUF (hub-layout names, candle's block layout, which is ggml's) is rewritten
with llama.cpp's tensor names and metadata by the `gguf` package: quantized matrices are
copied block for block (the LM head too, which the runtime's quantized folders hold in Q8_0),
with the rows of q_proj and k_proj permuted as llama.cpp's `convert_hf_to_gguf.py` permutes
them for its RoPE (a permutation of whole rows, so it moves quantized blocks without touching
them); embeddings and norms come from the folder's safetensors as stored. The vocabulary is a placeholder of the right size (the prompt
is given as token ids). The vision tower is not run: llama.cpp gets a text prompt of the same
length as the image prompt.

    OMP_WAIT_POLICY=PASSIVE python tools/real_scale/bench_llamacpp.py \\
        --model /tmp/llava7b-q4k --positions 638 --threads 2 --gguf /tmp/llama-q4k.gguf
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
from safetensors.numpy import safe_open

import gguf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from record import emit, peak_rss_bytes  # noqa: E402

LM = "language_model.model."
NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's `LlamaModel.permute`, on whole rows (quantized or not)."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write_gguf(model: pathlib.Path, out: pathlib.Path) -> None:
    cfg = json.loads((model / "config.json").read_text())["text_config"]
    d, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    vocab = cfg["vocab_size"]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(d)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(d // heads)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [f"t{i}".encode() for i in range(len(tokens), vocab)]
    types = [2, 3, 3] + [6] * 256 + [1] * (vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    reader = gguf.GGUFReader(str(model / "quantized.gguf"))
    quantized_head = False
    for t in reader.tensors:
        if t.name == "language_model.lm_head.weight":
            # The head the runtime multiplies with (quantized folders store it in Q8_0 beside
            # the f16 original in the safetensors, which the fingerprint hashes).
            data = np.asarray(t.data).reshape(int(t.shape[1]), -1)
            w.add_tensor("output.weight", np.ascontiguousarray(data), raw_dtype=t.tensor_type)
            quantized_head = True
            continue
        if not t.name.startswith(LM + "layers."):
            continue
        layer, rest = t.name[len(LM + "layers."):].split(".", 1)
        data = np.asarray(t.data)
        rows = int(t.shape[1])  # GGUF lists dims innermost first
        data = data.reshape(rows, -1)
        if rest.startswith("self_attn.q_proj"):
            data = permute_rows(data, heads)
        elif rest.startswith("self_attn.k_proj"):
            data = permute_rows(data, kv)
        w.add_tensor(f"blk.{layer}.{NAMES[rest]}", np.ascontiguousarray(data), raw_dtype=t.tensor_type)
    with safe_open(str(model / "model.safetensors"), framework="numpy") as st:
        for name in st.keys():
            if not name.startswith(LM) and name != "language_model.lm_head.weight":
                continue
            a = st.get_tensor(name)
            if name == LM + "embed_tokens.weight":
                w.add_tensor("token_embd.weight", a)
            elif name == "language_model.lm_head.weight":
                if not quantized_head:
                    w.add_tensor("output.weight", a)
            elif name == LM + "norm.weight":
                w.add_tensor("output_norm.weight", a.astype(np.float32))
            else:
                layer, rest = name[len(LM + "layers."):].split(".", 1)
                w.add_tensor(f"blk.{layer}.{NAMES[rest]}", a.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, required=True, help="a folder written by `concepts quantize`")
    ap.add_argument("--gguf", type=pathlib.Path, required=True, help="where the llama.cpp GGUF goes (reused if present)")
    ap.add_argument("--positions", type=int, default=638)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=16)
    args = ap.parse_args()
    if not args.gguf.exists():
        write_gguf(args.model, args.gguf)

    import llama_cpp

    t = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(args.gguf), n_ctx=2048, n_batch=1024, n_threads=args.threads,
        n_threads_batch=args.threads, use_mmap=False, verbose=False,
    )
    load_s = time.perf_counter() - t
    rss_loaded = peak_rss_bytes()
    prompt = [1] + [300 + (i * 7919) % (llm.n_vocab() - 300) for i in range(args.positions - 1)]
    def last_argmax() -> int:
        # Without logits_all, llama-cpp-python keeps no scores; read the last token's logits.
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))

    t = time.perf_counter()
    llm.eval(prompt)
    nxt = last_argmax()
    prefill_s = time.perf_counter() - t
    ids = [nxt]
    t = time.perf_counter()
    for _ in range(args.decode_tokens):
        llm.eval([nxt])
        nxt = last_argmax()
        ids.append(nxt)
    decode_s = time.perf_counter() - t
    emit(
        runtime=f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", model=str(args.gguf),
        threads=args.threads, load_s=load_s, positions=args.positions, prefill_s=prefill_s,
        decode_tokens=args.decode_tokens, decode_s=decode_s, rss_after_load=rss_loaded, ids=ids,
    )


if __name__ == "__main__":
    main()
