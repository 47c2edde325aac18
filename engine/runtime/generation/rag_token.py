"""RAG-Token decoding (``RagTokenForGeneration.generate``) over a :class:`Seq2SeqGenerator`.

The encoder runs once on the ``B * n_docs`` contexts. The decoder batch is
``B * num_beams * n_docs`` rows (question-major, then beam, then doc), each reading the
encoder states of its (question, doc). Every step turns the ``n_docs`` rows of one
(question, beam) into one distribution::

    log p(y_t) = logsumexp_d( log_softmax(logits_d)[y_t] + log_softmax(doc_scores)_d )

and greedy/beam search act on those marginals, exactly as the reference. A beam reorder moves
whole groups of ``n_docs`` cache rows (the reference's ``_reorder_cache``).
"""

from __future__ import annotations

import numpy as np

from ragrt.errors import InputError
from ragrt.runtime.generation.params import GenerationParams
from ragrt.runtime.generation.search import (
    F32,
    TokenHypothesis,
    beam_search,
    greedy,
    log_softmax,
)
from ragrt.runtime.generation.streaming import Cancellation, Streamer
from ragrt.runtime.generator import DecoderStep, Generator
from ragrt.tracing import Tracer, stage


class RagTokenStep:
    """Wraps a decoder step so that its scores are doc-marginalized log-probs per (question, beam)."""

    def __init__(self, decoder: DecoderStep, doc_logprobs: np.ndarray):
        self.dec = decoder
        self.doc_lp = np.asarray(doc_logprobs, dtype=F32)  # [rows, n_docs]
        self.n_docs = self.doc_lp.shape[1]
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None

    def step(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.dec.step(np.repeat(np.asarray(tokens, dtype=np.int64), self.n_docs))
        return self.marginalize(logits)

    def marginalize(self, logits: np.ndarray) -> np.ndarray:
        """``logsumexp_d(log_softmax(logits_d) + doc_lp_d)`` per (question, beam).

        The arithmetic of :func:`log_softmax` then :func:`logsumexp`, element for element (the
        same bits), one (question, beam) group of ``n_docs`` rows at a time in two reused
        scratch arrays: at 80 rows x 50k vocab the whole-array version streams ten 16 MB
        temporaries through memory; a group's 1 MB stays in cache (about 2x less CPU).
        """
        x = np.asarray(logits, dtype=F32)
        n, vocab = self.n_docs, x.shape[-1]
        if self._scratch is None or self._scratch[0].shape != (n, vocab):
            self._scratch = (np.empty((n, vocab), F32), np.empty((n, vocab), F32))
        a, b = self._scratch
        out = np.empty((self.doc_lp.shape[0], vocab), F32)
        for g in range(out.shape[0]):
            xg = x[g * n : (g + 1) * n]
            m = np.max(xg, axis=-1, keepdims=True)
            m = np.where(np.isfinite(m), m, F32(0))
            np.subtract(xg, m, out=a)  # shifted
            np.exp(a, out=b)
            np.subtract(a, np.log(np.sum(b, axis=-1, keepdims=True)), out=a)  # log_softmax
            np.add(a, self.doc_lp[g][:, None], out=a)
            m = np.max(a, axis=0, keepdims=True)
            m = np.where(np.isfinite(m), m, F32(0))
            np.exp(np.subtract(a, m, out=b), out=b)
            np.add(np.log(np.sum(b, axis=0, keepdims=True)), m, out=out[g : g + 1])
        return out

    def select(self, idx: np.ndarray) -> None:
        idx = np.asarray(idx, dtype=np.int64)
        self.dec.select((idx[:, None] * self.n_docs + np.arange(self.n_docs)).reshape(-1))
        self.doc_lp = self.doc_lp[idx]


def check_inputs(
    context_ids: np.ndarray, context_mask: np.ndarray, doc_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    ids = np.asarray(context_ids, dtype=np.int64)
    mask = np.asarray(context_mask, dtype=np.int64)
    scores = np.asarray(doc_scores, dtype=F32)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise InputError(f"doc_scores must be [batch, n_docs], got shape {scores.shape}")
    batch, n_docs = scores.shape
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[0] != batch * n_docs:
        raise InputError(
            f"context ids/mask must both be [batch * n_docs, L] = [{batch * n_docs}, L], "
            f"got {ids.shape} and {mask.shape}"
        )
    return ids, mask, scores, batch, n_docs


def generate(
    generator: Generator,
    context_ids: np.ndarray,
    context_mask: np.ndarray,
    doc_scores: np.ndarray,
    config: GenerationParams,
    *,
    streamer: Streamer | None = None,
    stopping: Cancellation | None = None,
    tracer: Tracer | None = None,
) -> list[list[TokenHypothesis]]:
    """RAG-Token generation; per question, ``num_return_sequences`` hypotheses, best first.

    ``context_ids``/``context_mask``: ``[B * n_docs, L]`` (question-major), ``doc_scores``:
    ``[B, n_docs]`` (``n_docs`` is taken from its shape). Greedy decoding feeds ``streamer``
    (one token per question per step); beam search does not, its best hypothesis is only known
    at the end. ``stopping`` is checked before every decode step.
    """
    ids, mask, scores, batch, n_docs = check_inputs(context_ids, context_mask, doc_scores)
    with stage(tracer, "generator_encode"):
        states = generator.encode(ids, mask)
    K = config.num_beams
    src = np.arange(batch)[:, None, None] * n_docs + np.arange(n_docs)[None, None, :]
    src = np.broadcast_to(src, (batch, K, n_docs)).reshape(-1)
    model = RagTokenStep(
        generator.decoder_step(states, mask, src), np.repeat(log_softmax(scores, axis=1), K, axis=0)
    )
    with stage(tracer, "decode"):
        if K == 1:
            hyps = greedy(
                model,
                batch,
                config,
                normalized=True,
                streamer=streamer,
                stopping=stopping,
                tracer=tracer,
            )
            return [[h] for h in hyps]
        return beam_search(model, batch, config, stopping=stopping, tracer=tracer)
