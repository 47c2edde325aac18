"""CTranslate2 as a peer: the same generator, converted, decoding the same contexts.

CTranslate2 is what a user who only needs fast seq2seq picks. It cannot marginalize over
retrieved documents, so the benchmark gives it the generator's share of a RAG call: the
``B * n_docs`` contexts ragrt built for a question, decoded greedily *per context* for the
same forced number of tokens (min = max), in one ``translate_batch`` call. That is the work
ragrt's generator does (encoder over the contexts, one decoder row per context) minus the
doc marginalization, so the comparison favours CTranslate2 slightly.

Conversion goes through CTranslate2's own ``TransformersConverter`` on a copy of the generator
folder, with two adjustments:

- transformers 4.57's ``BartConfig`` no longer stores ``normalize_before``,
  ``add_final_layer_norm`` and ``static_position_embeddings``, which the converter reads;
  they are written into the copy's ``config.json`` with BART's values (all false).
- The benchmark models keep BART's published 50265-token vocabulary with a smaller trained
  tokenizer; the converter wants one token string per embedding row, so rows past the
  tokenizer's vocabulary get placeholder names. Token ids are what is compared, and ids map
  to the same rows either way.

Bench/dev dependency only (``pip install ctranslate2``): the runtime never imports it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZATIONS = {"fp32": "float32", "int8": "int8"}
"""ragrt precision name -> CTranslate2 quantization / compute type."""

BART_CONFIG_FIXUPS = {
    "normalize_before": False,
    "add_final_layer_norm": False,
    "static_position_embeddings": False,
}
PLACEHOLDER = "<ragrt_row_{}>"


def generator_folder(ckpt: Path, out: Path) -> Path:
    """The generator of a RAG checkpoint as a standalone transformers folder (model + tokenizer).

    A folder that already holds a seq2seq model (``config.json`` without a ``generator``
    section) is returned as is.
    """
    cfg = json.loads((Path(ckpt) / "config.json").read_text())
    if "generator" not in cfg:
        return Path(ckpt)
    if (out / "config.json").is_file():
        return out
    from transformers import AutoTokenizer, RagTokenForGeneration

    model = RagTokenForGeneration.from_pretrained(ckpt).eval()
    tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=out.parent))
    try:
        model.rag.generator.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(Path(ckpt) / "generator_tokenizer").save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class _PaddedVocab:
    """A tokenizer whose vocabulary covers every embedding row (placeholders past its own)."""

    def __init__(self, tokenizer: Any, rows: int) -> None:
        self._tok = tokenizer
        self._rows = rows

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._tok.get_vocab())
        used = set(vocab.values())
        for i in range(self._rows):
            if i not in used:
                vocab[PLACEHOLDER.format(i)] = i
        return vocab

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def convert(gen_dir: Path, out: Path, precision: str) -> Path:
    """Convert a BART/T5 generator folder to a CTranslate2 model folder (once; reused after)."""
    import ctranslate2.converters as ct2c

    if (out / "model.bin").is_file():
        return out
    quant = QUANTIZATIONS[precision]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(gen_dir, src)
        cfg = json.loads((src / "config.json").read_text())
        rows = int(cfg["vocab_size"])
        if cfg.get("model_type") == "bart":
            for k, v in BART_CONFIG_FIXUPS.items():
                cfg.setdefault(k, v)
            (src / "config.json").write_text(json.dumps(cfg, indent=1))

        class Converter(ct2c.TransformersConverter):
            def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
                tok = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
                return _PaddedVocab(tok, rows)

        staged = Path(tmp) / "out"
        Converter(str(src)).convert(str(staged), quantization=quant, force=True)
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    return out


@dataclass
class Ct2Output:
    """Token ids per context (decoder start token excluded)."""

    token_ids: list[list[int]]


class Ct2Generator:
    """A converted generator on CTranslate2's ``Translator`` (greedy, forced length)."""

    def __init__(self, model_dir: Path, precision: str, threads: int) -> None:
        import ctranslate2

        self.precision = precision
        self.translator = ctranslate2.Translator(
            str(model_dir),
            device="cpu",
            compute_type=QUANTIZATIONS[precision],
            intra_threads=threads,
            inter_threads=1,
        )
        vocab = json.loads((Path(model_dir) / "shared_vocabulary.json").read_text())
        self.tokens = list(vocab)
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    def generate(self, context_ids: np.ndarray, context_mask: np.ndarray, new_tokens: int):
        """Greedy decoding of every context (``[N, L]`` padded ids/mask) for ``new_tokens``."""
        lens = np.asarray(context_mask).sum(1)
        source = [[self.tokens[t] for t in row[:n]] for row, n in zip(context_ids.tolist(), lens)]
        res = self.translator.translate_batch(
            source,
            beam_size=1,
            max_decoding_length=new_tokens,
            min_decoding_length=new_tokens,
            max_input_length=0,
        )
        return Ct2Output([[self.ids[t] for t in r.hypotheses[0]] for r in res])
