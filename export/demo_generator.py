"""Train the small generator that ``ragrt demo`` ships: a BART trained on the demo corpus.

No pretrained generator can be downloaded offline, and an untrained one answers gibberish. This
script builds question/answer pairs from the bundled Python stdlib documentation, holds out a
seeded fifth of the documented objects (their questions *and* every passage about them), and
trains a small BART with its own byte-level BPE vocabulary, on CPU, in minutes:

- a question asks what an object does or is ("what does heapq.heappush do?", "what is the json
  module for?"); its answer is the first sentence of the object's first passage;
- the generator reads exactly what ragrt feeds it at inference: ``title / text // question``
  (:func:`ragrt.runtime.contexts.build_contexts`), the question being the all-MiniLM-L6-v2 ids
  decoded back (lower-cased), as the reference and ragrt's engine build it;
- phase 1 trains on the gold passage alone (learn to copy); phase 2 on the gold passage among
  passages retrieved with all-MiniLM-L6-v2 (the demo's encoder), with the RAG marginal losses
  (RAG-Token and RAG-Sequence, averaged) over the doc scores, so that answers stay right when
  ragrt marginalizes over several retrieved docs.

Run (writes the model folder, the held-out questions and a record of the run)::

    python -m ragrt.export.demo_generator --out export/demo_model \\
        --heldout engine/demo/heldout_questions.jsonl

Everything is seeded; torch runs with one thread. The committed model in ``export/demo_model``
was produced by this script; ``export/demo_model/training.json`` records the command, seed,
data split, losses and times.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ragrt.runtime.contexts import build_contexts

# `ragrt demo`'s default questions (the quality run records their retrieval for the tests)
DEMO_QUESTIONS = [
    "What does heapq.heappush do?",
    "What is the gzip module for?",
    "What does json.dumps do?",
    "What is pathlib.PurePosixPath?",
]
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # BART's ids 0..4
BOS, PAD, EOS = 0, 1, 2
MAX_COMBINED_LENGTH = 300  # what ragrt (and the reference) truncate contexts to
MAX_ANSWER_WORDS = 22
MIN_ANSWER_WORDS = 4

# (kind, template); two per kind, every item gets both
TEMPLATES = {
    "module": ("What is the {} module for?", "What does the {} module provide?"),
    "class": ("What is {}?", "What does the class {} represent?"),
    "function": ("What does {} do?", "What is {} used for?"),
}
_SIGNATURE = re.compile(r"^[\w.]+\(")
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)[.!?](\s|$)")
_CODE = (">>>", "::", "`", "<", "{")


@dataclass
class TrainConfig:
    """Everything that determines the trained model (recorded next to it)."""

    seed: int = 0
    heldout_fraction: float = 0.2
    vocab_size: int = 4096
    d_model: int = 192
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 4
    ffn_dim: int = 768
    max_positions: int = 320
    dropout: float = 0.05
    # 1.5e-3 with 60 warm-up steps collapsed the (post-LN) encoder to one vector for every
    # input within 100 steps (see _position_spread): the decoder then answered from its prior
    lr: float = 8e-4
    warmup_steps: int = 300
    gold_steps: int = 1800  # phase 1: gold passage only
    copy_examples: int = 3000  # phase 1 also copies other sentences of training passages
    scrambled_examples: int = 4000  # ... and word-scrambled passages (only copying predicts them)
    gold_batch: int = 24
    rag_steps: int = 80  # phase 2: gold among retrieved passages, marginal losses
    rag_batch: int = 8  # questions per step (x rag_docs contexts)
    rag_docs: int = 3
    gold_words: int = 32  # phase 1 reads the first N words of the passage (cheap; answer is there)
    threads: int = 1  # the committed run; 2 is faster, and rounds differently
    max_new_tokens: int = 47  # generation config: max_length = 48


@dataclass
class QAItem:
    """One documented object: its first passage holds the answer (a sentence of it)."""

    passage_id: str
    title: str
    kind: str
    answer: str
    questions: list[str] = field(default_factory=list)


def corpus_path() -> Path:
    return Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))


def model_path() -> Path:
    """The committed model folder (package data of ``ragrt.export``)."""
    return Path(str(resources.files("ragrt.export") / "demo_model"))


def heldout_path() -> Path:
    """The held-out questions written with the committed model (package data of ``ragrt``)."""
    return Path(str(resources.files("ragrt") / "demo" / "heldout_questions.jsonl"))


def read_passages(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def first_sentence(text: str) -> str | None:
    m = _SENTENCE_END.search(text)
    return text[: m.start() + 1] if m else None


def object_kind(title: str, modules: set[str]) -> str:
    if title in modules:
        return "module"
    return "class" if title.rsplit(".", 1)[-1][:1].isupper() else "function"


def qa_items(passages: list[dict[str, str]]) -> list[QAItem]:
    """Objects whose first passage opens with a plain sentence of 4-22 words (no signature,
    no code): that sentence is the answer."""
    modules = {p["title"] for p in passages if "." not in p["title"]}
    modules |= {"os.path", "http.client", "urllib.parse"}
    out = []
    for p in passages:
        if not p["id"].endswith("#0") or _SIGNATURE.match(p["text"]):
            continue
        s = first_sentence(p["text"])
        if s is None or not MIN_ANSWER_WORDS <= len(s.split()) <= MAX_ANSWER_WORDS:
            continue
        if any(c in s for c in _CODE):
            continue
        kind = object_kind(p["title"], modules)
        qs = [t.format(p["title"]) for t in TEMPLATES[kind]]
        out.append(QAItem(p["id"], p["title"], kind, s, qs))
    return out


def clean_sentences(text: str) -> list[tuple[int, str]]:
    """``(start offset, sentence)`` for every sentence of ``text`` that could be an answer:
    4-22 words, no code."""
    out = []
    pos = 0
    while pos < len(text):
        m = _SENTENCE_END.search(text, pos)
        if m is None:
            break
        s = text[pos : m.start() + 1].strip()
        if MIN_ANSWER_WORDS <= len(s.split()) <= MAX_ANSWER_WORDS and not any(
            c in s for c in _CODE
        ):
            out.append((pos + len(text[pos:]) - len(text[pos:].lstrip()), s))
        pos = m.end()
    return out


def split(items: list[QAItem], fraction: float, seed: int) -> tuple[list[QAItem], list[QAItem]]:
    """(train, held out): a seeded ``fraction`` of the objects is held out."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n = round(len(items) * fraction)
    held = sorted(order[:n])
    train = sorted(order[n:])
    return [items[i] for i in train], [items[i] for i in held]


# -- retrieval with the demo's encoder (torch side, as ragrt's index build embeds) -------------
class MiniLM:
    """all-MiniLM-L6-v2 as ragrt exports it: mean pooling + L2 norm; passages as the
    ``(title, text)`` pair ragrt's index build tokenizes (token type ids zero, 256 tokens)."""

    def __init__(self, path: Path):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()

    def embed(self, texts, batch_size: int = 64) -> np.ndarray:
        import torch

        out = []
        for s in range(0, len(texts), batch_size):
            chunk = texts[s : s + batch_size]
            if isinstance(chunk[0], tuple):
                enc = self.tok(
                    [c[0] for c in chunk],
                    [c[1] for c in chunk],
                    truncation=True,
                    max_length=256,
                    padding=True,
                    return_tensors="pt",
                )
            else:
                enc = self.tok(
                    chunk, truncation=True, max_length=256, padding=True, return_tensors="pt"
                )
            with torch.no_grad():
                h = self.model(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    token_type_ids=torch.zeros_like(enc["input_ids"]),
                ).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)

    def generator_questions(self, questions: list[str]) -> list[str]:
        """The question string the generator reads: MiniLM ids decoded back (lower-cased)."""
        ids = self.tok(questions, truncation=True, max_length=256)["input_ids"]
        return self.tok.batch_decode(ids, skip_special_tokens=True)


@dataclass
class _Doc:
    title: str
    text: str


# -- tokenizer and model -----------------------------------------------------------------------
def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE on the training texts with BART's special tokens and ids.

    ``add_prefix_space`` makes an answer's first word the same token as in the passage (it
    follows ``title / `` there), so copying it is one pointer, not a spelling change; the decoder
    strips that one leading space again, so answers print without it.
    """
    from tokenizers import ByteLevelBPETokenizer, decoders
    from tokenizers.processors import RobertaProcessing
    from transformers import BartTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=SPECIAL_TOKENS,
    )
    t = bpe._tokenizer
    t.post_processor = RobertaProcessing(("</s>", EOS), ("<s>", BOS), add_prefix_space=True)
    t.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    return BartTokenizerFast(
        tokenizer_object=t,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        add_prefix_space=True,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_COMBINED_LENGTH,
    )


def build_model(cfg: TrainConfig, vocab_size: int):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

    torch.manual_seed(cfg.seed)
    config = BartConfig(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_positions,
        dropout=cfg.dropout,
        bos_token_id=BOS,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
        forced_bos_token_id=BOS,
        forced_eos_token_id=EOS,
    )
    model = BartForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
        forced_bos_token_id=BOS,
        forced_eos_token_id=EOS,
        max_length=cfg.max_new_tokens + 1,
        num_beams=1,
    )
    return model


def _lr(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:  # linear warm-up, then cosine decay to a tenth
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _position_spread(hidden, mask) -> float:
    """How much the encoder's output varies across the positions of a context (variance across
    positions / total, over real tokens): near 0 means the encoder collapsed to one vector per
    input and the decoder can only answer from its own prior - the failure mode of a post-LN
    BART trained from scratch at too high a learning rate."""
    import torch

    with torch.no_grad():
        m = mask.unsqueeze(-1).to(hidden.dtype)
        n = m.sum(1).clamp(min=1)
        mean = (hidden * m).sum(1) / n
        var = (((hidden - mean[:, None]) ** 2) * m).sum(1) / n
        total = ((hidden**2) * m).sum(1) / n
        return float((var.sum(-1) / total.sum(-1).clamp(min=1e-12)).mean())


def marginal_losses(logits, labels, doc_scores):
    """RAG-Token and RAG-Sequence negative log-likelihoods per target token (mean over batch).

    ``logits`` ``[B * n, T, V]`` (question-major), ``labels`` ``[B, T]`` (-100 = ignored),
    ``doc_scores`` ``[B, n]``. RAG-Token marginalizes every position over the docs; RAG-Sequence
    marginalizes whole-sequence likelihoods (Lewis et al. 2020, eqs. 1-2).
    """
    import torch

    B, n = doc_scores.shape
    T = labels.shape[1]
    lp = torch.log_softmax(logits.float(), dim=-1).view(B, n, T, -1)
    doc_lp = torch.log_softmax(doc_scores, dim=1)
    mask = labels != -100
    tgt = labels.clamp(min=0)
    tok_lp = lp.gather(-1, tgt[:, None, :, None].expand(B, n, T, 1)).squeeze(-1)  # [B, n, T]
    tok_lp = tok_lp * mask[:, None, :]
    n_tokens = mask.sum().clamp(min=1)
    token_nll = -(torch.logsumexp(tok_lp + doc_lp[:, :, None], dim=1) * mask).sum() / n_tokens
    seq_nll = -torch.logsumexp(tok_lp.sum(-1) + doc_lp, dim=1).sum() / n_tokens
    return token_nll, seq_nll


# -- training ----------------------------------------------------------------------------------
@dataclass
class Example:
    question: str  # as the generator reads it
    answer: str
    docs: list[_Doc]  # gold first in phase 1; retrieved order (gold included) in phase 2
    scores: list[float]


def _encode(tok, contexts: list[str], answers: list[str]):
    x = tok(
        contexts,
        truncation=True,
        max_length=MAX_COMBINED_LENGTH,
        padding=True,
        return_tensors="pt",
    )
    y = tok(answers, padding=True, truncation=True, max_length=64, return_tensors="pt").input_ids
    y[y == PAD] = -100
    return x, y


def _clip(doc: _Doc, words: int) -> _Doc:
    return _Doc(doc.title, " ".join(doc.text.split()[:words])) if words > 0 else doc


def _sortish_batches(examples: list[Example], tok, size: int, rng: random.Random, docs=None):
    """Endless batches of similar context length (padding to the longest in a batch is what
    costs on CPU): shuffle, sort windows of 50 batches by length, cut, shuffle the batches."""
    fmt = argparse.Namespace(title_sep=" / ", doc_sep=" // ", prefix="")
    lengths = []
    for e in examples:
        ctx = build_contexts([e.question], [e.docs[:docs]], fmt)
        lengths.append(max(len(ids) for ids in tok(ctx, truncation=True, max_length=300).input_ids))
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        batches = []
        window = 50 * size
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk) - size + 1, size)]
        rng.shuffle(batches)
        for b in batches:
            yield [examples[i] for i in b]


def train(
    cfg: TrainConfig,
    tok,
    gold: list[Example],
    retrieved: list[Example],
    log=print,
    copies: list[Example] | None = None,
) -> tuple[object, dict]:
    import torch
    from transformers.models.bart.modeling_bart import shift_tokens_right

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    model = build_model(cfg, len(tok))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    total = cfg.gold_steps + cfg.rag_steps
    history: dict[str, list[float]] = {"gold": [], "rag_token": [], "rag_sequence": []}
    fmt = argparse.Namespace(title_sep=" / ", doc_sep=" // ", prefix="")
    clipped = [
        Example(e.question, e.answer, [_clip(e.docs[0], cfg.gold_words)], e.scores)
        for e in gold + (copies or [])
    ]
    gold_batches = _sortish_batches(clipped, tok, cfg.gold_batch, rng, docs=1)
    rag_batches = _sortish_batches(retrieved, tok, cfg.rag_batch, rng)
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = _lr(step, total, cfg)
        if step < cfg.gold_steps:
            batch = next(gold_batches)
            ctx = build_contexts([e.question for e in batch], [e.docs for e in batch], fmt)
            x, y = _encode(tok, ctx, [e.answer for e in batch])
            out = model(**x, labels=y)
            loss = out.loss
            history["gold"].append(loss.item())
        else:
            batch = next(rag_batches)
            ctx = build_contexts([e.question for e in batch], [e.docs for e in batch], fmt)
            x, y = _encode(tok, ctx, [e.answer for e in batch])
            n = len(batch[0].docs)
            dec_in = shift_tokens_right(y.repeat_interleave(n, dim=0), PAD, EOS)
            out = model(**x, decoder_input_ids=dec_in)
            scores = torch.tensor([e.scores for e in batch], dtype=torch.float32)
            tl, sl = marginal_losses(out.logits, y, scores)
            loss = 0.5 * (tl + sl)
            history["rag_token"].append(tl.item())
            history["rag_sequence"].append(sl.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == total - 1:
            spread = _position_spread(out.encoder_last_hidden_state, x["attention_mask"])
            log(
                f"step {step:5d}/{total} loss {loss.item():.4f} lr {_lr(step, total, cfg):.2e} "
                f"encoder spread {spread:.3f} cpu {time.process_time():.0f}s",
                flush=True,
            )
    model.eval()
    return model, history


def _tail(xs: list[float], n: int = 50) -> float | None:
    return round(float(np.mean(xs[-n:])), 4) if xs else None


def copy_examples(
    cfg: TrainConfig, passages, held_titles: set[str], qa_ids: set[str], encoder: MiniLM
) -> list[Example]:
    """Extra phase-1 examples that teach *copying* rather than memorizing ~700 answers: for
    every clean sentence of a training passage (held-out objects' passages excluded), the
    passage cut to start at that sentence, a question about the passage's object, and that
    sentence as the answer. A seeded sample of ``cfg.copy_examples`` of them."""
    modules = {p["title"] for p in passages if "." not in p["title"]}
    rng = random.Random(cfg.seed + 1)
    raw: list[tuple[str, str, str, str]] = []  # question, answer, title, text
    for p in passages:
        if p["title"] in held_titles:
            continue
        templates = TEMPLATES[object_kind(p["title"], modules)]
        for start, sent in clean_sentences(p["text"]):
            if start == 0 and p["id"] in qa_ids:
                continue  # a real question already asks for it
            raw.append(
                (rng.choice(templates).format(p["title"]), sent, p["title"], p["text"][start:])
            )
    rng.shuffle(raw)
    raw = raw[: cfg.copy_examples]
    gen_q = encoder.generator_questions([r[0] for r in raw])
    return [Example(q, a, [_Doc(t, x)], [0.0]) for q, (_, a, t, x) in zip(gen_q, raw)]


def scrambled_examples(
    cfg: TrainConfig, passages, held_titles: set[str], encoder: MiniLM
) -> list[Example]:
    """Phase-1 examples that no language model can answer: a training passage's words shuffled,
    a full stop after the first 4-22 of them, and those words (with the stop) as the answer.
    Their loss only drops by attending to the passage and copying it word by word, which is
    the skill every real question needs; without them a small model learns the answers'
    typical wording and gives one sentence to every question."""
    modules = {p["title"] for p in passages if "." not in p["title"]}
    rng = random.Random(cfg.seed + 2)
    pool = [p for p in passages if p["title"] not in held_titles]
    raw: list[tuple[str, str, str, str]] = []
    for _ in range(cfg.scrambled_examples):
        p = rng.choice(pool)
        words = [w.rstrip(".!?") for w in p["text"].split()]
        words = [w for w in words if w]
        if len(words) < MIN_ANSWER_WORDS + 1:
            continue
        rng.shuffle(words)
        k = rng.randint(MIN_ANSWER_WORDS, min(MAX_ANSWER_WORDS, len(words) - 1))
        text = " ".join(words[:k]) + ". " + " ".join(words[k:])
        q = rng.choice(TEMPLATES[object_kind(p["title"], modules)]).format(p["title"])
        raw.append((q, " ".join(words[:k]) + ".", p["title"], text))
    gen_q = encoder.generator_questions([r[0] for r in raw])
    return [Example(q, a, [_Doc(t, x)], [0.0]) for q, (_, a, t, x) in zip(gen_q, raw)]


def build_examples(cfg: TrainConfig, passages, train_items, held_items, encoder: MiniLM):
    """Phase-1 (gold) and phase-2 (retrieved) examples; retrieval only sees training passages."""
    held_titles = {it.title for it in held_items}
    pool = [p for p in passages if p["title"] not in held_titles]
    pool_emb = encoder.embed([(p["title"], p["text"]) for p in pool])
    row = {p["id"]: i for i, p in enumerate(pool)}
    raw_q = [q for it in train_items for q in it.questions]
    gen_q = encoder.generator_questions(raw_q)
    q_emb = encoder.embed(raw_q)
    owners = [it for it in train_items for _ in it.questions]
    gold, retrieved = [], []
    recall = 0
    for qi, (it, q) in enumerate(zip(owners, gen_q)):
        g = row[it.passage_id]
        scores = pool_emb @ q_emb[qi]
        top = list(np.argsort(-scores, kind="stable")[: cfg.rag_docs])
        recall += g in top
        if g not in top:
            top[-1] = g
            top.sort(key=lambda r: -scores[r])
        doc = lambda r: _Doc(pool[r]["title"], pool[r]["text"])  # noqa: E731
        gold.append(Example(q, it.answer, [doc(g)], [float(scores[g])]))
        retrieved.append(
            Example(q, it.answer, [doc(r) for r in top], [float(scores[r]) for r in top])
        )
    return gold, retrieved, recall / max(1, len(owners))


def gold_passage_scores(model, tok, items: list[QAItem], passages, encoder: MiniLM) -> dict:
    """Held-out EM / F1 (percent) of greedy answers read off each question's gold passage alone:
    the generator's copying skill apart from retrieval (the quality table measures both)."""
    import torch

    from ragrt.evaluation import exact_match, token_f1

    text = {p["id"]: p for p in passages}
    qs = [q for it in items for q in it.questions]
    docs = [
        [_Doc(text[it.passage_id]["title"], text[it.passage_id]["text"])]
        for it in items
        for _ in it.questions
    ]
    fmt = argparse.Namespace(title_sep=" / ", doc_sep=" // ", prefix="")
    ctx = build_contexts(encoder.generator_questions(qs), docs, fmt)
    answers = [it.answer for it in items for _ in it.questions]
    preds = []
    with torch.no_grad():
        for s in range(0, len(ctx), 32):
            x = tok(
                ctx[s : s + 32],
                truncation=True,
                max_length=MAX_COMBINED_LENGTH,
                padding=True,
                return_tensors="pt",
            )
            out = model.generate(**x, num_beams=1, do_sample=False)
            preds += tok.batch_decode(out, skip_special_tokens=True)
    em = float(np.mean([exact_match(p, [a]) for p, a in zip(preds, answers)]))
    f1 = float(np.mean([token_f1(p, [a]) for p, a in zip(preds, answers)]))
    return {
        "questions": len(qs),
        "exact_match": round(100 * em, 1),
        "f1": round(100 * f1, 1),
        "distinct_answers": len(set(preds)),
    }


def write_heldout(items: list[QAItem], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for it in items:
            for q in it.questions:
                row = {"question": q, "answers": [it.answer], "gold_ids": [it.passage_id]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    return n


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (Linux), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="model folder to write")
    ap.add_argument("--heldout", type=Path, required=True, help="held-out questions JSONL to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gold-steps", type=int, default=TrainConfig.gold_steps)
    ap.add_argument("--rag-steps", type=int, default=TrainConfig.rag_steps)
    ap.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="other TrainConfig field"
    )
    args = ap.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, gold_steps=args.gold_steps, rag_steps=args.rag_steps)
    for kv in args.set:
        name, _, value = kv.partition("=")
        setattr(cfg, name, type(getattr(cfg, name))(value))
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    import torch

    torch.set_num_threads(cfg.threads)  # MiniLM's embedding too, not only training
    from ragrt.export.fixtures import minilm_path

    passages = read_passages(corpus_path())
    items = qa_items(passages)
    train_items, held_items = split(items, cfg.heldout_fraction, cfg.seed)
    held_titles = {it.title for it in held_items}
    encoder = MiniLM(minilm_path())
    gold, retrieved, train_recall = build_examples(cfg, passages, train_items, held_items, encoder)
    copies = copy_examples(cfg, passages, held_titles, {it.passage_id for it in items}, encoder)
    copies += scrambled_examples(cfg, passages, held_titles, encoder)
    tok_texts = [f"{p['title']} / {p['text']}" for p in passages if p["title"] not in held_titles]
    tok_texts += [e.question for e in gold] + [e.answer for e in gold]
    tok = train_tokenizer(tok_texts, cfg.vocab_size)
    print(
        f"{len(items)} QA objects: {len(train_items)} train ({len(gold)} questions), "
        f"{len(held_items)} held out; train retrieval recall@{cfg.rag_docs} {train_recall:.3f}"
    )
    t_train_wall, t_train_cpu = time.perf_counter(), time.process_time()
    print(f"{len(copies)} copy examples; cpu {time.process_time() - t_cpu:.0f}s", flush=True)
    model, history = train(cfg, tok, gold, retrieved, copies=copies)
    train_wall = time.perf_counter() - t_train_wall
    train_cpu = time.process_time() - t_train_cpu
    gold_scores = gold_passage_scores(model, tok, held_items, passages, encoder)
    print("held out, gold passage alone:", json.dumps(gold_scores), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n_held = write_heldout(held_items, args.heldout)
    n_params = sum(p.numel() for p in model.parameters())
    record = {
        "command": "python -m ragrt.export.demo_generator " + " ".join(argv or sys.argv[1:]),
        "config": asdict(cfg),
        "data": {
            "corpus": "engine/demo/python_stdlib_docs.jsonl",
            "qa_objects": len(items),
            "train_objects": len(train_items),
            "train_questions": len(gold),
            "copy_examples": len(copies),
            "heldout_objects": len(held_items),
            "heldout_questions": n_held,
            "heldout_passages_excluded_from_training": sum(
                p["title"] in held_titles for p in passages
            ),
            "heldout_titles": sorted(held_titles),
            "train_retrieval_recall": round(train_recall, 4),
        },
        "model": {"parameters": n_params, "vocab_size": len(tok)},
        "heldout_gold_passage": gold_scores,
        "final_loss": {
            "gold_ce_last50": _tail(history["gold"]),
            "rag_token_nll_last50": _tail(history["rag_token"]),
            "rag_sequence_nll_last50": _tail(history["rag_sequence"]),
        },
        "time_s": {
            "training_wall": round(train_wall, 1),
            "training_cpu": round(train_cpu, 1),
            "total_wall": round(time.perf_counter() - t_wall, 1),
            "total_cpu": round(time.process_time() - t_cpu, 1),
        },
        "machine": {
            "cpu_model": cpu_model(),
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "torch": __import__("torch").__version__,
            "transformers": __import__("transformers").__version__,
            "note": f"{cfg.threads} torch thread(s); the cores were shared with other jobs",
        },
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["final_loss"]), json.dumps(record["time_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
