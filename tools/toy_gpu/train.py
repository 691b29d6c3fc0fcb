#!/usr/bin/env python3
"""Trains the toy base model in PyTorch (on a GPU when one is lent) from a corpus written by
`concepts base export-corpus`, and writes weights that `concepts base import` evaluates and
exports with the Rust runtime.

The model here is a plain functional reimplementation of the runtime's forward — conv stem,
CLIP encoder (hidden_states[-2] for features, post_layernorm on the class token for the
pooled embedding), LLaVA's mlp2x_gelu projector, Llama decoder — over a flat dict of
parameters under their hub-layout names, so the weights round-trip by name. Before training
it checks itself against `reference.safetensors` (the runtime's outputs on the same initial
weights and inputs) and stops if they disagree, so a drift between the two implementations
cannot produce a model the runtime then runs differently.

Recipe: the two stages of the Rust trainer (`pretrain/src/train.rs`): stage 0 trains the
tower and the attribute heads on stage-0 scenes; stage 1 trains projector + decoder on the
task mix with the answer-only loss, the tower joining at `--tower-lr-scale` of the rate
after `--unfreeze-at` steps with the stage-0 loss as an auxiliary term. AdamW (0.9, 0.99,
eps 1e-8, weight decay 0.01 on matrices), global-norm clipping at 1, linear warmup then
cosine to 10%. Stage 1's step count can be derived from a wall-clock budget
(`--stage1-seconds`): the first steps are timed and the schedule is fixed from them.

    python3 tools/toy_gpu/train.py --corpus0 C0 --corpus1 C1 --out OUT [--device cuda]

`--init model.safetensors` fine-tunes existing weights instead (after the reference check,
which always runs on the corpus's seeded initial weights); `--freeze-decoder` then keeps the
decoder fixed, so stage 1 adapts only the projector and the tower.

Writes OUT/weights.safetensors (final), OUT/best.safetensors (best gate), OUT/log.jsonl.
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

V = "vision_tower.vision_model."
L = "language_model.model."


def log(msg):
    print(msg, flush=True)


class Toy:
    """The runtime's forward over `params` (hub-layout names)."""

    def __init__(self, cfg, meta, params):
        self.p = params
        v, t = cfg["vision_config"], cfg["text_config"]
        self.v_layers = v["num_hidden_layers"]
        self.v_heads = v["num_attention_heads"]
        self.v_eps = v["layer_norm_eps"]
        self.stem = sorted({k.split(".")[4] for k in params if k.startswith(V + "embeddings.stem.")})
        self.t_layers = t["num_hidden_layers"]
        self.t_heads = t["num_attention_heads"]
        self.head_dim = t["head_dim"]
        self.rms_eps = t["rms_norm_eps"]
        self.theta = t["rope_theta"]
        self.feature_layer = meta["vision_feature_layer"]
        self.rope_cache = {}

    def vision_states(self, px):
        p = self.p
        x = px
        last = len(self.stem) - 1
        for i, s in enumerate(self.stem):
            x = F.conv2d(x, p[f"{V}embeddings.stem.{s}.weight"], p[f"{V}embeddings.stem.{s}.bias"], stride=2, padding=1)
            if i < last:
                x = F.gelu(x)
        b, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)
        cls = p[V + "embeddings.class_embedding"].view(1, 1, c).expand(b, 1, c)
        x = torch.cat([cls, x], 1) + p[V + "embeddings.position_embedding.weight"]
        x = F.layer_norm(x, (c,), p[V + "pre_layrnorm.weight"], p[V + "pre_layrnorm.bias"], self.v_eps)
        states = [x]
        nh = self.v_heads
        for l in range(self.v_layers):
            q = f"{V}encoder.layers.{l}."
            h = F.layer_norm(x, (c,), p[q + "layer_norm1.weight"], p[q + "layer_norm1.bias"], self.v_eps)
            t = h.shape[1]

            def proj(n):
                return F.linear(h, p[q + f"self_attn.{n}.weight"], p[q + f"self_attn.{n}.bias"]).view(b, t, nh, c // nh).transpose(1, 2)

            a = F.scaled_dot_product_attention(proj("q_proj"), proj("k_proj"), proj("v_proj"))
            a = a.transpose(1, 2).reshape(b, t, c)
            x = x + F.linear(a, p[q + "self_attn.out_proj.weight"], p[q + "self_attn.out_proj.bias"])
            h = F.layer_norm(x, (c,), p[q + "layer_norm2.weight"], p[q + "layer_norm2.bias"], self.v_eps)
            h = F.linear(h, p[q + "mlp.fc1.weight"], p[q + "mlp.fc1.bias"])
            h = h * torch.sigmoid(1.702 * h)
            x = x + F.linear(h, p[q + "mlp.fc2.weight"], p[q + "mlp.fc2.bias"])
            states.append(x)
        return states

    def heads(self, states):
        p = self.p
        c = states[-1].shape[-1]
        pooled = F.layer_norm(states[-1][:, 0], (c,), p[V + "post_layernorm.weight"], p[V + "post_layernorm.bias"], self.v_eps)
        mean = states[self.feature_layer][:, 1:].mean(1)
        return [
            F.linear(pooled, p["head.pooled.weight"], p["head.pooled.bias"]),
            F.linear(mean, p["head.mean.weight"], p["head.mean.bias"]),
        ]

    def project(self, states):
        p = self.p
        x = states[self.feature_layer][:, 1:]
        x = F.linear(x, p["multi_modal_projector.linear_1.weight"], p["multi_modal_projector.linear_1.bias"])
        x = F.gelu(x)
        return F.linear(x, p["multi_modal_projector.linear_2.weight"], p["multi_modal_projector.linear_2.bias"])

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.rms_eps) * w

    def rope(self, t, device):
        key = (t, str(device))
        if key not in self.rope_cache:
            half = self.head_dim // 2
            inv = 1.0 / (self.theta ** (torch.arange(half, dtype=torch.float64) * 2 / self.head_dim))
            inv = inv.float()
            f = torch.arange(t, dtype=torch.float32)[:, None] * inv[None]
            emb = torch.cat([f, f], -1)
            self.rope_cache[key] = (emb.cos().to(device), emb.sin().to(device))
        return self.rope_cache[key]

    def decoder(self, x):
        p = self.p
        b, t, d = x.shape
        nh, hd = self.t_heads, self.head_dim
        cos, sin = self.rope(t, x.device)

        def rot(y):
            y1, y2 = y[..., : hd // 2], y[..., hd // 2:]
            return y * cos + torch.cat([-y2, y1], -1) * sin

        for l in range(self.t_layers):
            q = f"{L}layers.{l}."
            h = self.rms(x, p[q + "input_layernorm.weight"])

            def proj(n):
                return F.linear(h, p[q + f"self_attn.{n}.weight"]).view(b, t, nh, hd).transpose(1, 2)

            a = F.scaled_dot_product_attention(rot(proj("q_proj")), rot(proj("k_proj")), proj("v_proj"), is_causal=True)
            x = x + F.linear(a.transpose(1, 2).reshape(b, t, nh * hd), p[q + "self_attn.o_proj.weight"])
            h = self.rms(x, p[q + "post_attention_layernorm.weight"])
            g = F.silu(F.linear(h, p[q + "mlp.gate_proj.weight"])) * F.linear(h, p[q + "mlp.up_proj.weight"])
            x = x + F.linear(g, p[q + "mlp.down_proj.weight"])
        return self.rms(x, p[L + "norm.weight"])

    def logits(self, hidden):
        return F.linear(hidden, self.p["language_model.lm_head.weight"])

    def embed(self, ids, image_start, features):
        """Token embeddings with each image row's span replaced by its features."""
        x = F.embedding(ids, self.p[L + "embed_tokens.weight"])
        if features is None:
            return x
        rows = torch.nonzero(image_start >= 0).squeeze(1)
        n = features.shape[1]
        cols = image_start[rows][:, None] + torch.arange(n, device=ids.device)[None]
        return x.index_put((rows[:, None].expand_as(cols), cols), features)


def normalise(images, mean, std):
    """u8 [N, H, W, 3] -> CLIP-normalised f32 [N, 3, H, W]."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def head_loss(logits, labels, classes):
    total = 0.0
    for lg in logits:
        off = 0
        for h, n in enumerate(classes):
            total = total + F.cross_entropy(lg[:, off:off + n], labels[:, h])
            off += n
    return total / (2 * len(classes))


def lr_at(step, total, warmup, peak, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class AdamW:
    """AdamW with per-group learning-rate scales, decay on matrices only, as the Rust trainer."""

    def __init__(self, params, betas=(0.9, 0.99), eps=1e-8, wd=0.01):
        decay = [p for p in params if p.dim() >= 2]
        plain = [p for p in params if p.dim() < 2]
        groups = [g for g in ({"params": decay, "weight_decay": wd}, {"params": plain, "weight_decay": 0.0}) if g["params"]]
        fused = all(p.is_cuda for p in params)
        self.opt = torch.optim.AdamW(groups, lr=1e-3, betas=betas, eps=eps, fused=fused or None)
        self.params = params

    def step(self, lr, clip=1.0):
        torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def load_corpus(path, device):
    return {k: v.to(device) for k, v in load_file(path).items()}


def check_reference(model, corpus, mean, std, device):
    """The runtime's outputs on the initial weights must be reproduced here."""
    ref = load_corpus(os.path.join(corpus, "reference.safetensors"), device)
    s0 = load_file(os.path.join(corpus, "stage0.safetensors"))
    s1 = load_file(os.path.join(corpus, "stage1.safetensors"))
    r = ref["pixels"].shape[0]
    px = normalise(s0["images"][:r].to(device), mean, std)
    err_px = (px - ref["pixels"]).abs().max().item()
    with torch.no_grad():
        heads = torch.stack(model.heads(model.vision_states(ref["pixels"])))
        err_heads = (heads - ref["head_logits"]).abs().max().item()
        r1, t = ref["lm_logits"].shape[:2]
        ids = s1["ids"][:r1, :t].to(device)
        start = s1["image_start"][:r1].to(device)
        idx = s1["image_index"][:r1]
        feats = None
        if (idx >= 0).any():
            imgs = s1["images"][idx[idx >= 0]].to(device)
            feats = model.project(model.vision_states(normalise(imgs, mean, std)))
        logits = model.logits(model.decoder(model.embed(ids, start, feats)))
        lens = s1["lens"][:r1]
        err_lm = max((logits[b, : lens[b]] - ref["lm_logits"][b, : lens[b]]).abs().max().item() for b in range(r1))
    scale = ref["lm_logits"].abs().max().item()
    log(f"reference check: pixels {err_px:.2e}, head logits {err_heads:.2e}, lm logits {err_lm:.2e} (|max| {scale:.2f})")
    if err_px > 1e-5 or err_heads > 1e-3 or err_lm > 1e-3 * max(1.0, scale):
        sys.exit("the PyTorch forward disagrees with the runtime's reference outputs: not training")


def gate_eval(model, gate, meta, mean, std):
    with torch.no_grad():
        feats = model.project(model.vision_states(normalise(gate["images"], mean, std)))
        hidden = model.decoder(model.embed(gate["ids"], gate["image_start"], feats))
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), gate["lens"] - 1]
        lg = model.logits(last)
        yes = lg[:, meta["yes_id"]] > lg[:, meta["no_id"]]
    kind = gate["kind"]
    pos = yes[kind == 0].float().mean().item()
    neg = (~yes[(kind == 1) | (kind == 2)]).float().mean().item()
    look = (~yes[kind == 1]).float().mean().item()
    other = (~yes[kind == 2]).float().mean().item()
    r = {"weighted": (pos + neg) / 2, "positive": pos, "negative": neg, "lookalike": look, "other_subject": other}
    # Kinds 3 and 4 (corpora from 2026-12): the subject, or its look-alike, beside other subjects.
    if (kind == 3).any():
        r["crowded_positive"] = yes[kind == 3].float().mean().item()
        r["crowded_lookalike"] = (~yes[kind == 4]).float().mean().item()
    return r


def gate_score(r):
    """What `best.safetensors` maximises: the single-photo gate, and the crowded one when the
    corpus has it (a model that finds subjects alone but not among others is not better)."""
    if "crowded_positive" not in r:
        return r["weighted"]
    return (r["weighted"] + (r["crowded_positive"] + r["crowded_lookalike"]) / 2) / 2


def lm_batch(model, s1, rows, mean, std, with_states):
    ids_all = s1["ids"][rows]
    lens = s1["lens"][rows]
    t = int(lens.max().item())
    ids = ids_all[:, :t]
    start = s1["image_start"][rows]
    idx = s1["image_index"][rows]
    has = idx >= 0
    states = None
    feats = None
    if has.any():
        px = normalise(s1["images"][idx[has]], mean, std)
        if with_states:
            states = model.vision_states(px)
        else:
            with torch.no_grad():
                states = [s.detach() for s in model.vision_states(px)]
        feats = model.project(states)
    hidden = model.decoder(model.embed(ids, start, feats))
    pos = torch.arange(t, device=ids.device)[None]
    ans = s1["answer_start"][rows][:, None]
    target = (pos >= ans) & (pos < lens[:, None])  # positions whose token is a target
    mask = target[:, 1:]
    h = hidden[:, :-1][mask]
    logits = model.logits(h)
    targets = ids[:, 1:][mask]
    loss = F.cross_entropy(logits, targets)
    return loss, states, s1["labels"][idx[has]] if has.any() else None, (logits.argmax(-1) == targets), mask


def task_row_weights(spec, task, names):
    """Per-row sampling weights from `name=weight,...` (unnamed tasks weigh 1), on the CPU where
    the generator lives; `None` for an empty spec (uniform rows)."""
    if not spec:
        return None
    by_task = torch.ones(len(names))
    for item in spec.split(","):
        name, _, weight = item.partition("=")
        if name not in names:
            sys.exit(f"--task-weights: no task `{name}` in the corpus (it has {', '.join(names)})")
        by_task[names.index(name)] = float(weight)
    if (by_task < 0).any() or by_task.sum() == 0:
        sys.exit(f"--task-weights: weights must be non-negative and not all zero, got {spec}")
    return by_task[task.cpu()]


def task_accuracy(model, s1, rows, meta, mean, std, batch=512):
    """Teacher-forced exact match of whole answers on held-out rows, per task."""
    right = torch.zeros(len(meta["tasks"]))
    count = torch.zeros(len(meta["tasks"]))
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            r = rows[i:i + batch]
            _, _, _, ok, mask = lm_batch(model, s1, r, mean, std, False)
            per_row = torch.ones(mask.shape, dtype=torch.bool, device=mask.device)
            per_row[mask] = ok
            exact = per_row.all(1)
            task = s1["task"][r]
            for k in range(len(meta["tasks"])):
                sel = task == k
                right[k] += exact[sel].sum().item()
                count[k] += sel.sum().item()
    acc = {meta["tasks"][k]: (right[k] / count[k]).item() for k in range(len(meta["tasks"])) if count[k] > 0}
    acc["mean"] = sum(acc.values()) / max(len(acc), 1)
    return acc


def save(params, path):
    tmp = path + ".tmp"
    save_file({k: v.detach().float().cpu().contiguous() for k, v in params.items()}, tmp)
    os.replace(tmp, path)


class Resumable:
    """`OUT/state.pt`: everything a run needs to continue exactly where it stopped (weights, optimizer
    moments, the batch generator, stage and step), written atomically at least every `minutes`.
    A long CPU run then survives being stopped (kill, reboot, the end of a session)."""

    def __init__(self, out, minutes, args):
        self.path = os.path.join(out, "state.pt")
        self.every = minutes * 60
        self.last = time.time()
        self.args = {k: v for k, v in vars(args).items() if k not in ("deadline_seconds", "wait_seconds", "device")}

    def load(self, dev):
        if not os.path.exists(self.path):
            return None
        state = torch.load(self.path, map_location=dev, weights_only=False)
        if state["args"] != self.args:
            changed = sorted(k for k in set(state["args"]) | set(self.args) if state["args"].get(k) != self.args.get(k))
            sys.exit(f"`{self.path}` was written by a run with other options ({', '.join(changed)}); "
                     "use another --out or delete it")
        return state

    def due(self):
        return time.time() - self.last >= self.every

    def save(self, **state):
        tmp = self.path + ".tmp"
        state = {k: ({n: t.detach() for n, t in v.items()} if k == "params" else v) for k, v in state.items()}
        torch.save({"args": self.args, **state}, tmp)
        os.replace(tmp, self.path)
        self.last = time.time()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus0", required=True, help="corpus whose stage0/gate/init/reference are used")
    ap.add_argument("--corpus1", help="corpus whose stage1 is used [default: corpus0]; waited for")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stage0-steps", type=int, default=3000)
    ap.add_argument("--stage0-batch", type=int, default=256)
    ap.add_argument("--stage0-lr", type=float, default=3e-3)
    ap.add_argument("--stage1-steps", type=int, default=0, help="0: from --stage1-seconds")
    ap.add_argument("--stage1-seconds", type=float, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--unfreeze-at", type=float, default=0.25, help="fraction of stage 1 after which the tower trains")
    ap.add_argument("--tower-lr-scale", type=float, default=0.3)
    ap.add_argument("--aux-weight", type=float, default=0.2)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--holdout", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--freeze-decoder", action="store_true",
                    help="stage 1 trains the projector and the tower only (for a fine-tune on a changed world)")
    ap.add_argument("--init", help="fine-tune: start from these weights (a model.safetensors in the hub layout) "
                    "instead of the corpus's seeded initial ones; tensors it lacks (the stage-0 heads) keep theirs")
    ap.add_argument("--heads-only-steps", type=int, default=0,
                    help="the first N stage-0 steps train the heads alone (fine-tuning with a new head: "
                    "its random start then pushes no noise into the tower)")
    ap.add_argument("--visual-binding-batch", type=int, default=0,
                    help="add this many visual name-binding samples (`visual_binding.py`) to every stage-1 step")
    ap.add_argument("--visual-binding-reference-grad", action="store_true",
                    help="the reference photos' forward gets gradients too (slower)")
    ap.add_argument("--visual-binding-contrast", type=float, default=0.0,
                    help="weight of an instance-level contrast between the reference's and the query's object tokens")
    ap.add_argument("--visual-binding-qa", type=int, default=0,
                    help="add this many text-only A/B questions about a visually bound name to every stage-1 step")
    ap.add_argument("--visual-binding-two", type=float, default=0.0,
                    help="share of visual bindings with a second bound instance (another combo)")
    ap.add_argument("--visual-binding-crowded", type=float, default=0.0,
                    help="share of visual-binding queries shrunk into a scene (beside the second instance when bound)")
    ap.add_argument("--visual-binding-tokens", type=int, default=16,
                    help="reference rows per visual binding (a concept's k latents)")
    ap.add_argument("--task-weights", default="",
                    help="stage-1 rows drawn by task weight, e.g. crowded_recognition=4,name_recognition=2 "
                         "(unnamed tasks 1) instead of uniformly over the corpus's balanced mix")
    ap.add_argument("--deadline-seconds", type=float, default=0, help="end stage 1 (evaluating and saving) by then")
    ap.add_argument("--wait-seconds", type=float, default=900, help="give up waiting for a corpus after this")
    ap.add_argument("--checkpoint-minutes", type=float, default=10,
                    help="write OUT/state.pt at least this often; a run started again with the same options "
                    "and OUT continues from it (needs a fixed --stage1-steps)")
    args = ap.parse_args()
    start = time.time()

    def wait_for(corpus):
        while not os.path.exists(os.path.join(corpus, "corpus.json")):
            if time.time() - start > args.wait_seconds:
                sys.exit(f"no corpus in `{corpus}` after {args.wait_seconds:.0f}s")
            time.sleep(1)

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "log.jsonl"), "a")

    def record(entry):
        logf.write(json.dumps(entry) + "\n")
        logf.flush()
        log(json.dumps(entry))

    c0 = args.corpus0
    wait_for(c0)
    meta = json.load(open(os.path.join(c0, "corpus.json")))
    if meta["version"] != 1:
        sys.exit(f"corpus layout {meta['version']}, this trainer reads 1")
    cfg = json.load(open(os.path.join(c0, "config.json")))
    pre = json.load(open(os.path.join(c0, "preprocessor_config.json")))
    mean = torch.tensor(pre["image_mean"], device=dev)
    std = torch.tensor(pre["image_std"], device=dev)
    params = {k: v.to(dev).requires_grad_(True) for k, v in load_file(os.path.join(c0, "init.safetensors")).items()}
    model = Toy(cfg, meta, params)
    classes = [n for _, n in meta["heads"]]
    # The check runs in full f32; training then uses TF32 matmuls.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    check_reference(model, c0, mean, std, dev)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if args.init:
        start_from = load_file(args.init)
        unknown = sorted(set(start_from) - set(params))
        if unknown:
            sys.exit(f"`{args.init}` has tensors this model lacks: {unknown[:5]}")
        with torch.no_grad():
            for k, v in start_from.items():
                if v.shape != params[k].shape:
                    sys.exit(f"`{args.init}`: {k} is {tuple(v.shape)}, the model wants {tuple(params[k].shape)}")
                params[k].copy_(v.to(dev, params[k].dtype))
        record({"init": args.init, "tensors": len(start_from), "kept": sorted(set(params) - set(start_from))})

    gate = load_corpus(os.path.join(c0, "gate.safetensors"), dev)
    tower = [v for k, v in params.items() if k.startswith("vision_tower.")] + [v for k, v in params.items() if k.startswith("head.")]
    if args.freeze_decoder:
        for k, v in params.items():
            if k.startswith("language_model."):
                v.requires_grad_(False)
    lm = [v for k, v in params.items()
          if not k.startswith("vision_tower.") and not k.startswith("head.") and v.requires_grad]
    t0 = time.time()

    g = torch.Generator(device="cpu").manual_seed(args.seed)
    resumable = Resumable(args.out, args.checkpoint_minutes, args)
    resumed = resumable.load(dev)
    if resumed is not None:
        if not args.stage1_steps:
            sys.exit("resuming needs a fixed --stage1-steps (a step count from --stage1-seconds is not reproducible)")
        with torch.no_grad():
            for k, v in resumed["params"].items():
                params[k].copy_(v)
        g.set_state(resumed["generator"])
        record({"resumed": resumable.path, "stage": resumed["stage"], "step": resumed["step"]})

    # Stage 0: the tower and its heads.
    s0 = load_corpus(os.path.join(c0, "stage0.safetensors"), dev)
    n0 = s0["images"].shape[0]
    opt0 = AdamW(tower)
    first0 = 0
    if resumed is not None:
        first0 = args.stage0_steps if resumed["stage"] == 1 else resumed["step"]
        if resumed["stage"] == 0:
            opt0.opt.load_state_dict(resumed["opt0"])
    for step in range(first0, args.stage0_steps):
        rows = torch.randint(0, n0, (args.stage0_batch,), generator=g).to(dev)
        px = normalise(s0["images"][rows], mean, std)
        loss = head_loss(model.heads(model.vision_states(px)), s0["labels"][rows], classes)
        loss.backward()
        if step < args.heads_only_steps:
            for k, v in params.items():
                if k.startswith("vision_tower."):
                    v.grad = None
        opt0.step(lr_at(step, args.stage0_steps, min(100, args.stage0_steps), args.stage0_lr))
        if step % 250 == 0 or step == args.stage0_steps - 1:
            with torch.no_grad():
                rows = torch.arange(min(2048, n0), device=dev)  # training scenes: a fit check only
                lg = model.heads(model.vision_states(normalise(s0["images"][rows], mean, std)))[0]
                acc, off = {}, 0
                for h, (name, n) in enumerate(meta["heads"]):
                    acc[name] = (lg[:, off:off + n].argmax(-1) == s0["labels"][rows][:, h]).float().mean().item()
                    off += n
            record({"stage": 0, "step": step, "loss": loss.item(), "probe_train": acc, "seconds": time.time() - t0})
        if resumable.due():
            resumable.save(stage=0, step=step + 1, params=params, opt0=opt0.opt.state_dict(), generator=g.get_state())
    del s0

    # Stage 1: projector + decoder (tower later), on corpus1 once it is complete.
    c1 = args.corpus1 or c0
    wait_for(c1)
    s1 = load_corpus(os.path.join(c1, "stage1.safetensors"), dev)
    n1 = s1["ids"].shape[0]
    train_n = n1 - args.holdout
    held = torch.arange(train_n, n1, device=dev)
    row_weights = task_row_weights(args.task_weights, s1["task"][:train_n], meta["tasks"])
    record({"stage": 1, "samples": n1, "images": int(s1["images"].shape[0]), "loaded_at": time.time() - t0})
    opt_lm = AdamW(lm)
    opt_tower = AdamW(tower)
    total = args.stage1_steps
    vb = vb_eval = None
    if args.visual_binding_batch:
        import visual_binding

        norm = lambda imgs: normalise(imgs, mean, std)

        def binding(generator, **options):
            return visual_binding.VisualBinding(
                os.path.join(c1, "tokenizer.json"), s1["labels"], meta["image_seq_len"], args.visual_binding_tokens,
                generator, images=s1["images"], two_bindings=args.visual_binding_two,
                crowded=args.visual_binding_crowded, **options)

        vb = binding(g, reference_grad=args.visual_binding_reference_grad, contrast_weight=args.visual_binding_contrast)
        # Fixed check batches from their own generators (training images: a fit check, like the probes).
        vb_eval = binding(torch.Generator().manual_seed(12345)).batch(512)
        vb_qa_eval = binding(torch.Generator().manual_seed(54321)).qa_batch(256)

    def evaluate_and_save(step, best):
        """Gate and held-out task accuracy, logged; weights saved; returns the best gate."""
        gate_r = gate_eval(model, gate, meta, mean, std)
        tasks = task_accuracy(model, s1, held, meta, mean, std)
        entry = {"stage": 1, "step": step, "gate": gate_r, "tasks": tasks, "seconds": time.time() - t0}
        if vb is not None:
            entry["visual_binding"] = visual_binding.accuracy(model, vb, vb_eval, s1["images"], norm,
                                                              meta["yes_id"], meta["no_id"])
            entry["visual_binding"]["qa"] = visual_binding.qa_accuracy(model, vb, vb_qa_eval, s1["images"], norm)
        record(entry)
        save(params, os.path.join(args.out, "weights.safetensors"))
        if gate_score(gate_r) >= best:
            best = gate_score(gate_r)
            save(params, os.path.join(args.out, "best.safetensors"))
        return best

    timing_start = None
    best = -1.0
    step = 0
    if resumed is not None and resumed["stage"] == 1:
        opt_lm.opt.load_state_dict(resumed["opt_lm"])
        opt_tower.opt.load_state_dict(resumed["opt_tower"])
        step, best = resumed["step"], resumed["best"]
    else:
        resumable.save(stage=1, step=0, best=best, params=params, opt_lm=opt_lm.opt.state_dict(),
                       opt_tower=opt_tower.opt.state_dict(), generator=g.get_state())
    while True:
        if total and step >= total:
            break
        if args.deadline_seconds and time.time() - start > args.deadline_seconds:
            record({"stage": 1, "deadline": True, "step": step})
            best = evaluate_and_save(step, best)
            break
        if not total and step == 60:
            per = (time.time() - timing_start) / 50
            total = max(int(args.stage1_seconds / per), 100)
            record({"stage": 1, "seconds_per_step": per, "steps": total})
        if step == 10:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            timing_start = time.time()
        planned = total or int(1e9)
        unfreeze = int(args.unfreeze_at * planned) if total else int(1e9)
        tower_on = step >= unfreeze
        if row_weights is None:
            rows = torch.randint(0, train_n, (args.batch,), generator=g).to(dev)
        else:
            rows = torch.multinomial(row_weights, args.batch, replacement=True, generator=g).to(dev)
        loss, states, labels, _, _ = lm_batch(model, s1, rows, mean, std, tower_on)
        full = loss
        if tower_on and states is not None:
            full = loss + args.aux_weight * head_loss(model.heads(states), labels, classes)
        vb_loss = None
        if vb is not None:
            vb_loss = visual_binding.loss(model, vb, vb.batch(args.visual_binding_batch), s1["images"], norm, tower_on)
            full = full + vb_loss
            if args.visual_binding_qa:
                full = full + visual_binding.qa_loss(model, vb, vb.qa_batch(args.visual_binding_qa), s1["images"],
                                                     norm, tower_on and vb.reference_grad)
        full.backward()
        lr = lr_at(step, planned, args.warmup, args.lr)
        opt_lm.step(lr)
        if tower_on:
            opt_tower.step(lr * args.tower_lr_scale)
        else:
            for p in tower:
                p.grad = None
        step += 1
        if step % 100 == 0:
            entry = {"stage": 1, "step": step, "loss": loss.item(), "lr": lr, "tower": tower_on, "seconds": time.time() - t0}
            if vb_loss is not None:
                entry["visual_binding_loss"] = vb_loss.item()
            record(entry)
        if (total and step == total) or step % args.eval_every == 0:
            best = evaluate_and_save(step, best)
        if resumable.due() or (total and step == total):
            resumable.save(stage=1, step=step, best=best, params=params, opt_lm=opt_lm.opt.state_dict(),
                           opt_tower=opt_tower.opt.state_dict(), generator=g.get_state())
    record({"done": True, "steps": step, "best_gate": best, "seconds": time.time() - t0})


if __name__ == "__main__":
    main()
