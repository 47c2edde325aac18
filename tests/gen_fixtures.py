"""Session fixtures for the decoding tests: seeded RAG checkpoints + optimum generator exports.

Until ``ragrt.export.export_artifacts`` lands, the generator is exported here exactly as the
export pipeline will: ``onnx_export_from_model(rag.generator, dir,
task="text2text-generation-with-past")``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragrt.runtime.generation import GenerationParams


@dataclass
class GenFixture:
    family: str
    rag_type: str
    ckpt: Path
    onnx_dir: Path
    model: object  # RagTokenForGeneration / RagSequenceForGeneration (torch, eval mode)
    generator: object  # ragrt.runtime.generator.Seq2SeqGenerator

    @property
    def gcfg(self):
        # RAG-Sequence decodes with the generator's own generate (and its generation config)
        if self.rag_type == "sequence":
            return self.model.generator.generation_config
        return self.model.generation_config

    def params(self, **kw) -> GenerationParams:
        g = self.gcfg
        base = dict(
            decoder_start_token_id=g.decoder_start_token_id,
            eos_token_id=g.eos_token_id,
            pad_token_id=g.pad_token_id,
            bos_token_id=g.bos_token_id,
            forced_bos_token_id=g.forced_bos_token_id,
            forced_eos_token_id=g.forced_eos_token_id,
        )
        base.update(kw)
        return GenerationParams(**base)


class RecordingStreamer:
    """A :class:`ragrt.runtime.generation.streaming.Streamer` that keeps every step's tokens."""

    def __init__(self) -> None:
        self.steps: list[list[int]] = []
        self.ended = False

    def put(self, token_ids: np.ndarray) -> None:
        self.steps.append(np.asarray(token_ids).tolist())

    def end(self) -> None:
        self.ended = True


def build_fixture(root: Path, family: str, rag_type: str = "token") -> GenFixture:
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import RagSequenceForGeneration, RagTokenForGeneration

    from ragrt.export.fixtures import build_rag_checkpoint
    from ragrt.runtime.generator import Seq2SeqGenerator
    from ragrt.runtime.sessions import SessionOptions

    ckpt = build_rag_checkpoint(
        root / f"ckpt_{family}_{rag_type}", generator=family, rag_type=rag_type
    )
    cls = RagTokenForGeneration if rag_type == "token" else RagSequenceForGeneration
    model = cls.from_pretrained(ckpt).eval()
    onnx_dir = root / f"onnx_{family}_{rag_type}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the export mutates the model it is given (T5 stacks' use_cache): export a copy
        onnx_export_from_model(
            copy.deepcopy(model.generator), onnx_dir, task="text2text-generation-with-past"
        )
    gen = Seq2SeqGenerator(
        onnx_dir / "encoder_model.onnx",
        onnx_dir / "decoder_model.onnx",
        onnx_dir / "decoder_with_past_model.onnx",
        SessionOptions(intra_op_threads=1),
    )
    return GenFixture(family, rag_type, ckpt, onnx_dir, model, gen)


def as_sequence_fixture(fx: GenFixture) -> GenFixture:
    """The same checkpoint and ONNX generator, loaded as ``RagSequenceForGeneration``.

    A RAG checkpoint's weights do not depend on its class (``rag.*`` either way), so this
    saves a second build + export.
    """
    from transformers import RagSequenceForGeneration

    model = RagSequenceForGeneration.from_pretrained(fx.ckpt).eval()
    return GenFixture(fx.family, "sequence", fx.ckpt, fx.onnx_dir, model, fx.generator)


def random_contexts(
    fx: GenFixture, batch: int, n_docs: int, seed: int, max_len: int = 14
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded random contexts of varied lengths (masks matter) and doc scores."""
    rng = np.random.default_rng(seed)
    vocab = fx.model.config.generator.vocab_size
    pad = fx.model.config.generator.pad_token_id
    eos = fx.model.config.generator.eos_token_id
    ids = rng.integers(5, vocab, size=(batch * n_docs, max_len))
    mask = np.ones_like(ids)
    for i in range(batch * n_docs):
        n = int(rng.integers(4, max_len + 1))
        ids[i, n - 1] = eos
        ids[i, n:] = pad
        mask[i, n:] = 0
    scores = (rng.normal(size=(batch, n_docs)) * 2).astype(np.float32)
    return ids.astype(np.int64), mask.astype(np.int64), scores


def pad_hypotheses(rows: list[list[int]], start: int, fill: int, width: int) -> np.ndarray:
    """``[start] + ids`` right-filled to ``width``: the layout of the reference's output."""
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        assert len(r) + 1 <= width, (len(r), width)
        out[i, 0] = start
        out[i, 1 : 1 + len(r)] = r
    return out


def assert_diverse(ref: np.ndarray, start_col: int = 1, min_distinct: int = 4) -> None:
    """Guard against vacuous parity: outputs must use many tokens and differ across rows."""
    body = ref[:, start_col:]
    assert len(np.unique(body)) >= min_distinct, f"reference output is degenerate: {ref}"
    if ref.shape[0] > 1:
        assert len({tuple(r) for r in body.tolist()}) > 1, f"all reference rows equal: {ref}"


def assert_same_ranked(
    ours: np.ndarray,
    ref: np.ndarray,
    our_scores: np.ndarray | None = None,
    ref_scores: np.ndarray | None = None,
    per_item: int = 1,
    tie_tol: float = 1e-3,
    rtol: float = 5e-4,
) -> int:
    """Rows must equal the reference's, in order, and (beam search) scores must match per row.

    ONNX Runtime's and torch's fp32 kernels differ by ~1e-4 on these large-init fixtures, so
    two hypotheses whose scores tie within that noise may be ranked or pruned differently.
    The one tolerated difference is a row whose token ids differ while its score equals the
    reference row's score at that rank *and* that score ties (within ``tie_tol``) with another
    hypothesis of the same item. Returns the number of tolerated rows.
    """
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if our_scores is None:
        np.testing.assert_array_equal(ours, ref)
        return 0
    np.testing.assert_allclose(our_scores, ref_scores, atol=tie_tol, rtol=rtol)
    ties = 0
    for q in range(0, len(ref), per_item):
        a, b = ours[q : q + per_item], ref[q : q + per_item]
        s = np.asarray(ref_scores[q : q + per_item], dtype=np.float64)
        for i in range(per_item):
            if np.array_equal(a[i], b[i]):
                continue
            partners = [j for j in range(per_item) if j != i and abs(s[j] - s[i]) <= tie_tol]
            assert partners, (
                f"item {q // per_item} row {i}: ours {a[i]} != reference {b[i]} (no tie)"
            )
            ties += 1
    return ties
