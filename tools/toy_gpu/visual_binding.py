"""Visual name binding: a stage-1 task that teaches the toy base to compare an *instance*.

The toy world's identity detail is a tone that no word says, so nothing in the description-based
tasks ever asks the decoder to carry a tone from the image to the answer, and a learned concept
(soft tokens on a frozen base) has no circuit to steer: the twin (same description, other tone)
is accepted as readily as the subject. This task binds a name to *visual* evidence placed where a
concept's latents go, in the runtime's personal-prompt position:

    {system} USER: <image>\\n{Name} is <r_1>…<r_k>. {recognition question} ASSISTANT: Yes|No</s>

where every `<r_i>` row is the object token (`object_token`: the mean of the projected tokens
farthest from the photo's median token) averaged over one to three reference photos of an
instance (the largest object of a corpus image: combo and tone), exactly what a concept's latents
start at with `--init visual`. The query photo holds that instance (positive), its twin (same
combo, other tone), a look-alike (one attribute off) or something else, each as its largest
object. Samples are drawn from the stage-1 corpus's own images and stage-0 labels, so no new
corpus is needed: a run started with `--visual-binding-batch N` adds N such samples to every step.
"""

import torch
import torch.nn.functional as F

# The recognition questions of the toy base's templates (`concepts_templates.json`).
QUESTIONS = [
    "Can you see if {} is in this photo? Answer with a single word or phrase.",
    "Is {} in this photo? Answer with a single word or phrase.",
    "Can you see {} in this photo? Answer with a single word or phrase.",
    "Is {} in this image? Answer with a single word or phrase.",
    "Can you see if {} is in this image? Answer with a single word or phrase.",
]
NAMES = ["Ziggy", "Bobo", "Momo", "Kiki", "Lulu", "Pip", "Nox", "Zuzu", "Fifi", "Gigi", "Tiko", "Bibi",
         "Dodo", "Nemo", "Mimi", "Pogo", "Rolo", "Suki", "Tata", "Yoyo", "Zaza", "Bingo", "Biscuit"]
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
          "helpful, detailed, and polite answers to the human's questions.")
# Text-only A/B questions about a visually bound name (`--visual-binding-qa`): the values of each
# stage-0 head in label order (toy-world's `Shape::ALL`, `Colour::ALL`, `Pattern::ALL`).
SHAPES = ["circle", "square", "triangle", "star", "heart", "diamond", "cross", "hexagon", "ring", "moon"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black", "brown"]
PATTERNS = ["solid", "stripes", "dots", "checks", "border"]
QA = [("What shape is {}?", 0, SHAPES), ("What colour is {}?", 1, COLOURS), ("What pattern does {} have?", 2, PATTERNS)]
CHOICE_ANSWER = "Answer with the option's letter from the given choices directly."
# Share of queries by kind: the instance, its twin, a one-attribute look-alike, anything else.
KINDS = (0.5, 0.3, 0.1, 0.1)
# The object-token contrast (`--visual-binding-contrast`): logit = scale * (cosine - margin).
CONTRAST_SCALE, CONTRAST_MARGIN = 10.0, 0.7
# The share of a photo's tokens that make its object token (`object_token`): a sixth, as the
# runtime's `OBJECT_TOKEN_SHARE`.
OBJECT_TOKEN_SHARE = 6


class VisualBinding:
    def __init__(self, tokenizer_path, labels, image_seq_len, ref_tokens, generator, reference_grad=False,
                 contrast_weight=0.0, images=None, two_bindings=0.0, crowded=0.0):
        from tokenizers import Tokenizer

        self.images = images
        self.two_bindings = two_bindings
        self.crowded = crowded
        self.reference_grad = reference_grad
        self.contrast_weight = contrast_weight
        self.tok = Tokenizer.from_file(tokenizer_path)
        self.n_img = image_seq_len
        self.k = ref_tokens
        self.g = generator
        self.image_id = self.tok.token_to_id("<image>")
        self.unk_id = self.tok.token_to_id("<unk>")
        self.pad_id = self.tok.token_to_id("<pad>")
        lab = labels.cpu()
        combo = lab[:, :4]
        tone = lab[:, 5]
        # Dense keys: a combo, and an instance (combo + tone).
        combo_key = ((combo[:, 0] * 10 + combo[:, 1]) * 5 + combo[:, 2]) * 11 + combo[:, 3]
        inst_key = combo_key * 3 + tone
        self.combo_key, self.inst_key = combo_key, inst_key
        self.labels = lab
        self.by_inst = _groups(inst_key)
        self.by_combo = _groups(combo_key)
        # Look-alikes: images sharing three of the four attributes, under each masked attribute.
        radix = [10, 10, 5, 11]
        self.masked = []
        for j in range(4):
            m = combo.clone()
            m[:, j] = radix[j]  # out of range: "any"
            key = ((m[:, 0] * 11 + m[:, 1]) * 11 + m[:, 2]) * 12 + m[:, 3]
            self.masked.append((key, _groups(key)))
        # References: instances seen at least twice (one photo can be the reference, another the query).
        self.refs = torch.tensor([i for i, rows in self.by_inst.items() if len(rows) >= 2])
        self.cache = {}

    def _ids(self, name, q, answer, other=None, other_first=False):
        """Token ids binding `name` (and `other`, when given, before or after it) to reference
        rows, then asking about `name`; the image start, the two reference starts (the second
        -1 without `other`) in the order name, other, and the answer position."""
        key = (name, q, answer, other, other_first)
        if key not in self.cache:
            ref = " ".join(["<unk>"] * self.k)
            bindings = [f"{name} is {ref}."]
            if other is not None:
                bindings.insert(0 if other_first else 1, f"{other} is {ref}.")
            text = f"{SYSTEM} USER: <image>\n{' '.join(bindings)} {QUESTIONS[q].format(name)} ASSISTANT: {answer}</s>"
            ids = self.tok.encode(text, add_special_tokens=True).ids
            i = ids.index(self.image_id)
            ids = ids[:i] + [self.image_id] * self.n_img + ids[i + 1:]
            spans = [j for j in range(len(ids)) if ids[j] == self.unk_id][:: self.k]  # in prompt order
            mine = spans[1] if other is not None and other_first else spans[0]
            theirs = -1 if other is None else spans[0] if other_first else spans[1]
            self.cache[key] = (ids, i, mine, theirs, len(ids) - 2)  # answer token, then </s>
        return self.cache[key]

    def _crowd(self, rows):
        """A 48 px scene: a random corpus image with `rows`' images shrunk and pasted into it
        (as the trainer's crowded views, `trainer/src/views.rs`)."""
        canvas = self.images[int(torch.randint(0, len(self.inst_key), (1,), generator=self.g))].clone()
        side = canvas.shape[0]
        for i, row in enumerate(rows):
            # One patch: 45-65 % of the side anywhere; two: 38-50 % each, in opposite halves.
            f = (0.45 + 0.2 * float(torch.rand(1, generator=self.g))) if len(rows) == 1 else \
                (0.38 + 0.12 * float(torch.rand(1, generator=self.g)))
            px = max(int(round(side * f)), 8)
            small = F.interpolate(self.images[row].permute(2, 0, 1)[None].float(), size=(px, px),
                                  mode="bilinear", antialias=True, align_corners=False)[0]
            small = small.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
            lo, hi = (0, side - px) if len(rows) == 1 else ((0, side // 2 - px) if i == 0 else (side // 2, side - px))
            x = int(torch.randint(lo, hi + 1, (1,), generator=self.g))
            y = int(torch.randint(0, side - px + 1, (1,), generator=self.g))
            canvas[y:y + px, x:x + px] = small
        return canvas

    def _qa_ids(self, name, question, a, b, letter):
        key = (name, question, a, b, letter)
        if key not in self.cache:
            ref = " ".join(["<unk>"] * self.k)
            text = (f"{SYSTEM} USER: {name} is {ref}. {question.format(name)}\nA: {a}\nB: {b}\n{CHOICE_ANSWER} "
                    f"ASSISTANT: {letter}</s>")
            ids = self.tok.encode(text, add_special_tokens=True).ids
            ref_start = ids.index(self.unk_id)
            self.cache[key] = (ids, ref_start, len(ids) - 2)
        return self.cache[key]

    def qa_batch(self, n):
        """`n` text-only A/B questions (shape, colour or pattern) about a name bound to an
        instance's reference photos: ids/lens/answer_start/ref_start and the reference rows."""
        seqs, ref_start, answer_start, refs = [], [], [], []
        for _ in range(n):
            _, shuffled = self._draw()
            n_ref = min(1 + int(torch.randint(0, 3, (1,), generator=self.g)), len(shuffled))
            question, head, values = QA[int(torch.randint(0, len(QA), (1,), generator=self.g))]
            right = int(self.labels[shuffled[0], head])
            wrong = int(torch.randint(0, len(values) - 1, (1,), generator=self.g))
            wrong += wrong >= right
            first = bool(torch.rand(1, generator=self.g) < 0.5)
            a, b = (values[right], values[wrong]) if first else (values[wrong], values[right])
            name = NAMES[int(torch.randint(0, len(NAMES), (1,), generator=self.g))]
            ids, i_ref, i_ans = self._qa_ids(name, question, a, b, "A" if first else "B")
            seqs.append(ids)
            ref_start.append(i_ref)
            answer_start.append(i_ans)
            refs.append(_three(shuffled[:n_ref]))
        ids = self._pad(seqs)
        lt = lambda v: torch.tensor(v, dtype=torch.long)
        return {"ids": ids, "lens": lt([len(s) for s in seqs]), "answer_start": lt(answer_start),
                "ref_start": lt(ref_start), "refs": lt(refs)}

    def _draw(self):
        """A random instance seen at least twice: its image rows, shuffled."""
        inst = int(self.refs[int(torch.randint(0, len(self.refs), (1,), generator=self.g))])
        rows = self.by_inst[inst]
        return inst, [rows[p] for p in torch.randperm(len(rows), generator=self.g).tolist()]

    def _pad(self, seqs):
        ids = torch.full((len(seqs), max(len(s) for s in seqs)), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return ids

    def _pick(self, rows):
        return rows[int(torch.randint(0, len(rows), (1,), generator=self.g))]

    def batch(self, n):
        """`n` samples: ids/lens/answer_start/image_start/ref_start, reference image rows (`[n, 3]`,
        -1 where fewer are used), the second binding's (`other_start` -1 without one), the query
        `pixels` and the kind of each query."""
        seqs, image_start, ref_start, answer_start, refs, kinds = [], [], [], [], [], []
        other_start, others, pixels = [], [], []
        for _ in range(n):
            inst, rows = self._draw()
            r = torch.rand(3, generator=self.g)
            # One to three references; at least one photo of the instance is left for a query.
            n_ref = min(1 + int(r[0] * 3), len(rows) - 1)
            ref_rows = rows[:n_ref]
            u = float(r[1])
            kind = 0 if u < KINDS[0] else 1 if u < KINDS[0] + KINDS[1] else 2 if u < 1 - KINDS[3] else 3
            q = None
            if kind == 0:
                q = rows[n_ref]
            elif kind == 1:
                combo = int(self.combo_key[rows[0]])
                twins = [x for x in self.by_combo[combo] if int(self.inst_key[x]) != inst]
                q = self._pick(twins) if twins else None
            elif kind == 2:
                j = int(torch.randint(0, 4, (1,), generator=self.g))
                key, groups = self.masked[j]
                combo = int(self.combo_key[rows[0]])
                looks = [x for x in groups[int(key[rows[0]])] if int(self.combo_key[x]) != combo]
                q = self._pick(looks) if looks else None
            if q is None:
                kind = 3
                while True:
                    q = int(torch.randint(0, len(self.inst_key), (1,), generator=self.g))
                    if int(self.combo_key[q]) != int(self.combo_key[rows[0]]):
                        break
            name, other = [NAMES[i] for i in torch.randperm(len(NAMES), generator=self.g)[:2].tolist()]
            qi = int(torch.randint(0, len(QUESTIONS), (1,), generator=self.g))
            v = torch.rand(3, generator=self.g)
            two = float(v[0]) < self.two_bindings
            crowded = float(v[1]) < self.crowded
            other_refs = _three([])
            shown = [q]
            if two:
                # Another instance of another combo (instance keys are combo * 3 + tone), bound
                # too; in a crowded query it is there.
                while True:
                    o = int(self.refs[int(torch.randint(0, len(self.refs), (1,), generator=self.g))])
                    if o // 3 != inst // 3:
                        break
                orows = self.by_inst[o]
                orows = [orows[p] for p in torch.randperm(len(orows), generator=self.g).tolist()]
                other_refs = _three(orows[:n_ref])
                if crowded:
                    shown = [q, orows[-1]] if float(v[2]) < 0.5 else [orows[-1], q]
            ids, i_img, i_ref, i_other, i_ans = self._ids(name, qi, "Yes" if kind == 0 else "No",
                                                          other if two else None, float(v[2]) < 0.5)
            seqs.append(ids)
            image_start.append(i_img)
            ref_start.append(i_ref)
            other_start.append(i_other)
            answer_start.append(i_ans)
            pixels.append(self._crowd(shown) if crowded else self.images[q])
            refs.append(_three(ref_rows))
            others.append(other_refs)
            kinds.append(kind)
        ids = self._pad(seqs)
        lt = lambda v: torch.tensor(v, dtype=torch.long)
        return {
            "ids": ids, "lens": lt([len(s) for s in seqs]), "answer_start": lt(answer_start),
            "image_start": lt(image_start), "ref_start": lt(ref_start),
            "refs": lt(refs), "kind": lt(kinds), "other_start": lt(other_start), "other_refs": lt(others),
            "pixels": torch.stack(pixels),
        }


def _three(rows):
    """Up to three reference image rows, padded with -1."""
    return rows + [-1] * (3 - len(rows))


def _groups(keys):
    order = torch.argsort(keys)
    sk = keys[order]
    bounds = torch.nonzero(sk[1:] != sk[:-1]).squeeze(1) + 1
    starts = [0] + bounds.tolist()
    ends = bounds.tolist() + [len(sk)]
    return {int(sk[s]): order[s:e].tolist() for s, e in zip(starts, ends)}


def object_token(feats):
    """The mean of the sixth of each photo's projected tokens farthest from their element-wise
    median: the photo's main object rather than its background (`feats` `[n, 36, d]` -> `[n, d]`).
    The runtime's `Init::Visual` (`trainer/src/engine/init.rs`, `object_token`) starts a concept's
    latents at this, averaged over its photos."""
    m = max(feats.shape[1] // OBJECT_TOKEN_SHARE, 1)
    med = feats.median(1).values
    dist = (feats - med[:, None]).norm(dim=-1)
    top = dist.topk(m, dim=1).indices
    return torch.gather(feats, 1, top[..., None].expand(-1, -1, feats.shape[-1])).mean(1)


def reference_rows(model, images, refs, normalise, grad=False):
    """Object token averaged over each sample's reference photos: `[n, d]` (with `grad`, the
    projector and the tower learn from the reference side too)."""
    flat = refs.clamp(min=0).reshape(-1)
    with torch.set_grad_enabled(grad):
        feats = model.project(model.vision_states(normalise(images[flat])))  # [n*3, 36, d]
    per = object_token(feats).reshape(refs.shape[0], refs.shape[1], -1)
    w = (refs >= 0).float().unsqueeze(-1)
    return (per * w).sum(1) / w.sum(1)


def _splice(x, rows_at, starts, rows, k):
    """`x` with `rows[i]` written over the `k` positions from `starts[i]` of row `rows_at[i]`."""
    cols = starts[:, None] + torch.arange(k, device=x.device)[None]
    return x.index_put((rows_at[:, None].expand_as(cols), cols), rows[:, None, :].expand(len(rows_at), k, rows.shape[-1]))


def _hidden(model, vb, b, images, normalise, with_states):
    dev = images.device
    ids = b["ids"].to(dev)
    ref = reference_rows(model, images, b["refs"].to(dev), normalise, with_states and vb.reference_grad)
    px = normalise(b["pixels"].to(dev))
    if with_states:
        feats = model.project(model.vision_states(px))
    else:
        with torch.no_grad():
            states = [s.detach() for s in model.vision_states(px)]
        feats = model.project(states)
    x = model.embed(ids, b["image_start"].to(dev), feats)
    x = _splice(x, torch.arange(ids.shape[0], device=dev), b["ref_start"].to(dev), ref, vb.k)
    two = torch.nonzero(b["other_start"] >= 0).squeeze(1)
    if len(two):
        oref = reference_rows(model, images, b["other_refs"][two].to(dev), normalise,
                              with_states and vb.reference_grad)
        two = two.to(dev)
        x = _splice(x, two, b["other_start"].to(dev)[two], oref, vb.k)
    return model.decoder(x), ids, (ref, feats)


def loss(model, vb, b, images, normalise, with_states):
    """Answer-only cross-entropy of a visual-binding batch `b` (from `VisualBinding.batch`)."""
    dev = images.device
    hidden, ids, (ref, feats) = _hidden(model, vb, b, images, normalise, with_states)
    l = _answer_loss(model, hidden, ids, b)
    if vb.contrast_weight:
        # Instance-level contrast on the object tokens themselves: the reference's and the
        # query's agree (cosine above CONTRAST_MARGIN) exactly when the query is the instance.
        cos = F.cosine_similarity(ref, object_token(feats), dim=-1)
        same = (b["kind"].to(dev) == 0).float()
        l = l + vb.contrast_weight * F.binary_cross_entropy_with_logits(
            CONTRAST_SCALE * (cos - CONTRAST_MARGIN), same)
    return l


def accuracy(model, vb, b, images, normalise, yes_id, no_id):
    """Yes/no accuracy of batch `b` by query kind (p(Yes) > p(No) before the answer)."""
    dev = images.device
    out = {}
    with torch.no_grad():
        hidden, _, _ = _hidden(model, vb, b, images, normalise, False)
        at = b["answer_start"].to(dev) - 1
        lg = model.logits(hidden[torch.arange(hidden.shape[0], device=dev), at])
        yes = (lg[:, yes_id] > lg[:, no_id]).cpu()
    for k, name in enumerate(["positive", "twin", "lookalike", "other"]):
        m = b["kind"] == k
        if m.any():
            ok = yes[m] if k == 0 else ~yes[m]
            out[name] = ok.float().mean().item()
    return out


def _text_hidden(model, vb, b, images, normalise, grad):
    dev = images.device
    ids = b["ids"].to(dev)
    ref = reference_rows(model, images, b["refs"].to(dev), normalise, grad)
    x = model.embed(ids, torch.full((ids.shape[0],), -1, device=dev), None)
    x = _splice(x, torch.arange(ids.shape[0], device=dev), b["ref_start"].to(dev), ref, vb.k)
    return model.decoder(x), ids


def _answer_loss(model, hidden, ids, b):
    """Cross-entropy of the answer tokens (from `answer_start` to the end, `</s>` included)."""
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    target = (pos >= b["answer_start"].to(ids.device)[:, None]) & (pos < b["lens"].to(ids.device)[:, None])
    mask = target[:, 1:]
    return F.cross_entropy(model.logits(hidden[:, :-1][mask]), ids[:, 1:][mask])


def qa_loss(model, vb, b, images, normalise, grad):
    """Answer-only cross-entropy of a text-only batch from `VisualBinding.qa_batch`."""
    hidden, ids = _text_hidden(model, vb, b, images, normalise, grad)
    return _answer_loss(model, hidden, ids, b)


def qa_accuracy(model, vb, b, images, normalise):
    """Share of `qa_batch` questions answered with the right letter (greedy over the vocabulary)."""
    dev = images.device
    with torch.no_grad():
        hidden, ids = _text_hidden(model, vb, b, images, normalise, False)
        n = ids.shape[0]
        at = b["answer_start"].to(dev)
        pred = model.logits(hidden[torch.arange(n, device=dev), at - 1]).argmax(-1)
        return (pred == ids[torch.arange(n, device=dev), at]).float().mean().item()
