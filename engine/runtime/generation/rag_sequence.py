"""RAG-Sequence "thorough" decoding (``RagSequenceForGeneration.generate``).

For each question:

1. generate on each of its ``n_docs`` contexts separately (beam search with
   ``num_return_sequences = num_beams``, or greedy when ``num_beams == 1``); the candidates of
   one question share one width, padded as transformers pads one ``generate`` call (greedy:
   ``pad_token_id``; beam search: ``pad_token_id or eos_token_id``, so EOS for T5);
2. drop duplicate candidates (``do_deduplication``, first occurrence kept);
3. teacher-force every candidate against every doc with a full decoder pass and score it as
   the reference's ``get_nll``: ``log_softmax(doc_scores)`` is added at the second position,
   positions whose target is ``pad_token_id`` are masked, the first (BOS) position is skipped
   when ``exclude_bos_score`` and every candidate starts with ``bos_token_id``, then
   ``logsumexp`` over docs;
4. return the ``num_return_sequences`` best candidates.

``sequence_decoding="fast"`` (:func:`fast_candidates`) skips step 3, as the paper's fast
decoding does.

The per-doc generation of all questions runs as one batch (beam search items are
independent, see :func:`ragrt.runtime.generation.search.beam_search`); rescoring runs per question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ragrt.runtime.generation.params import GenerationParams
from ragrt.runtime.generation.rag_token import check_inputs
from ragrt.runtime.generation.search import (
    F32,
    TokenHypothesis,
    beam_fill_value,
    beam_search,
    greedy,
    log_softmax,
    logsumexp,
    topk,
)
from ragrt.runtime.generation.streaming import Cancellation, check_cancelled
from ragrt.runtime.generator import Generator
from ragrt.tracing import Tracer, stage


@dataclass
class SequenceCandidates:
    """All candidates of one question: ``ids`` ``[C, T]`` (decoder start + tokens + fill)."""

    ids: np.ndarray
    token_ids: list[list[int]]
    scores: np.ndarray  # [C] log p(y | x), marginalized over docs
    best: np.ndarray  # indices of the returned candidates, best first


def _pad_candidates(rows: list[list[int]], start: int, fill: int) -> np.ndarray:
    width = 1 + max(len(r) for r in rows)
    out = np.full((len(rows), width), fill, dtype=np.int64)
    out[:, 0] = start
    for i, r in enumerate(rows):
        out[i, 1 : 1 + len(r)] = r
    return out


def sequence_log_likelihood(
    lp: np.ndarray, cands: np.ndarray, doc_logprobs: np.ndarray, params: GenerationParams
) -> np.ndarray:
    """The reference's ``-get_nll(..., exclude_bos_score)`` for one question.

    ``lp``: ``[C, n_docs, T, V]`` log-softmaxed teacher-forced logits of ``cands`` ``[C, T]``.
    """
    C, n_docs, T, _ = lp.shape
    pad = params.pad_token_id
    target = np.concatenate([cands[:, 1:], np.full((C, 1), pad, dtype=np.int64)], axis=1)
    idx = np.broadcast_to(target[:, None, :, None], (C, n_docs, T, 1))
    ll = np.take_along_axis(lp, idx, axis=-1)[..., 0]  # [C, n_docs, T]
    if T > 1:
        ll[:, :, 1] = ll[:, :, 1] + doc_logprobs[None, :]
    ll = np.where((target == pad)[:, None, :], F32(0), ll)
    use_bos = params.bos_token_id is not None and bool(np.all(target[:, 0] == params.bos_token_id))
    per_doc = ll[:, :, 1:].sum(axis=2) if params.exclude_bos_score and use_bos else ll.sum(axis=2)
    return logsumexp(per_doc.astype(F32), axis=1)


def _search_per_doc(
    generator: Generator,
    ids: np.ndarray,
    mask: np.ndarray,
    items: int,
    config: GenerationParams,
    stopping: Cancellation | None,
    tracer: Tracer | None,
) -> tuple[np.ndarray, list[list[TokenHypothesis]], int]:
    """Step 1 of both decodings: encode every (question, doc) row, then one greedy or beam
    search per row. Returns the encoder states, each row's hypotheses and the token that pads
    finished hypotheses (the pad id for greedy, the beam scorer's fill value otherwise)."""
    with stage(tracer, "generator_encode"):
        states = generator.encode(ids, mask)
    K = config.num_beams
    with stage(tracer, "decode"):
        dec = generator.decoder_step(states, mask, np.repeat(np.arange(items), K))
        if K == 1:
            hyps = greedy(dec, items, config, stopping=stopping, tracer=tracer)
            return states, [[h] for h in hyps], config.pad_token_id
        per_item = beam_search(
            dec, items, config, num_return_sequences=K, stopping=stopping, tracer=tracer
        )
        return states, per_item, beam_fill_value(config)


def candidates(
    generator: Generator,
    context_ids: np.ndarray,
    context_mask: np.ndarray,
    doc_scores: np.ndarray,
    config: GenerationParams,
    *,
    stopping: Cancellation | None = None,
    tracer: Tracer | None = None,
) -> list[SequenceCandidates]:
    """Steps 1-3 of the module docstring for every question (the padded, scored candidates).

    ``stopping`` is checked before every decode step and before each question's rescoring.
    """
    ids, mask, scores, batch, n_docs = check_inputs(context_ids, context_mask, doc_scores)
    states, per_item, fill = _search_per_doc(
        generator, ids, mask, batch * n_docs, config, stopping, tracer
    )
    doc_lp = log_softmax(scores, axis=1)
    out = []
    with stage(tracer, "rescore"):
        for b in range(batch):
            check_cancelled(stopping)
            out.append(_rescore(generator, states, mask, b, n_docs, per_item, fill, doc_lp, config))
    return out


def _rescore(
    generator: Generator,
    states: np.ndarray,
    mask: np.ndarray,
    b: int,
    n_docs: int,
    per_item: list[list[TokenHypothesis]],
    fill: int,
    doc_lp: np.ndarray,
    config: GenerationParams,
) -> SequenceCandidates:
    """Question ``b``: pad and deduplicate its candidates, score each against every doc."""
    rows = [h.token_ids for d in range(n_docs) for h in per_item[b * n_docs + d]]
    cands = _pad_candidates(rows, config.decoder_start_token_id, fill)
    if config.do_deduplication:
        seen: dict[tuple[int, ...], int] = {}
        for i, r in enumerate(map(tuple, cands.tolist())):
            seen.setdefault(r, i)
        keep = np.array(sorted(seen.values()))
        cands, rows = cands[keep], [rows[i] for i in keep]
    C, T = cands.shape
    src = b * n_docs + np.tile(np.arange(n_docs), C)
    logits = generator.teacher_forced_logits(states, mask, src, np.repeat(cands, n_docs, axis=0))
    lp = log_softmax(logits).reshape(C, n_docs, T, -1)
    ll = sequence_log_likelihood(lp, cands, doc_lp[b], config)
    best = topk(ll[None, :], min(config.num_return_sequences, C))[0]
    return SequenceCandidates(cands, rows, ll, best)


def generate(
    generator: Generator,
    context_ids: np.ndarray,
    context_mask: np.ndarray,
    doc_scores: np.ndarray,
    config: GenerationParams,
    *,
    stopping: Cancellation | None = None,
    tracer: Tracer | None = None,
) -> list[list[TokenHypothesis]]:
    """RAG-Sequence generation; per question, up to ``num_return_sequences`` hypotheses.

    Scores are the marginal ``log p(y|x)`` the candidates were ranked by. Nothing streams: the
    answer is only known after rescoring (or, for fast decoding, after every doc's search).
    ``config.sequence_decoding`` picks thorough (:func:`candidates`) or fast
    (:func:`fast_candidates`) decoding.
    """
    find = fast_candidates if config.sequence_decoding == "fast" else candidates
    found = find(
        generator, context_ids, context_mask, doc_scores, config, stopping=stopping, tracer=tracer
    )
    return [
        [TokenHypothesis(list(c.token_ids[i]), float(c.scores[i])) for i in c.best] for c in found
    ]


def beam_log_prob(hyp: TokenHypothesis, config: GenerationParams) -> float:
    """The log-probability a per-doc search gave ``hyp``: the sum of the (processed) log-probs
    it ranked by. Greedy scores are that sum; a beam score is it divided by
    ``len(tokens) ** length_penalty`` (the reference's beam scorer), undone here."""
    if config.num_beams == 1:
        return float(hyp.score)
    return float(hyp.score) * float(len(hyp.token_ids)) ** float(config.length_penalty)


def fast_candidates(
    generator: Generator,
    context_ids: np.ndarray,
    context_mask: np.ndarray,
    doc_scores: np.ndarray,
    config: GenerationParams,
    *,
    stopping: Cancellation | None = None,
    tracer: Tracer | None = None,
) -> list[SequenceCandidates]:
    """RAG-Sequence "fast decoding" (Lewis et al. 2020, section 2.5): no rescoring pass.

    Step 1 is thorough decoding's (a beam search, or greedy, per doc). A candidate ``y`` that
    doc ``z``'s search did not produce is taken to have ``p(y | x, z) ~ 0``, so its score is
    ``logsumexp`` over only the docs whose searches produced it of
    ``log_softmax(doc_scores)_z + log p(y | x, z)``, the latter being that search's own
    :func:`beam_log_prob`. Identical candidates are always merged (that sum is the point), so
    ``do_deduplication`` does not apply; ties keep the first candidate (doc order, then beam).
    """
    ids, mask, scores, batch, n_docs = check_inputs(context_ids, context_mask, doc_scores)
    _, per_item, fill = _search_per_doc(
        generator, ids, mask, batch * n_docs, config, stopping, tracer
    )
    doc_lp = log_softmax(scores, axis=1).astype(np.float64)
    out = []
    for b in range(batch):
        hyps = [(d, h) for d in range(n_docs) for h in per_item[b * n_docs + d]]
        padded = _pad_candidates(
            [h.token_ids for _, h in hyps], config.decoder_start_token_id, fill
        )
        first: dict[tuple[int, ...], int] = {}
        terms: dict[tuple[int, ...], list[float]] = {}
        for i, ((d, h), row) in enumerate(zip(hyps, map(tuple, padded.tolist()))):
            first.setdefault(row, i)
            terms.setdefault(row, []).append(doc_lp[b, d] + beam_log_prob(h, config))
        keep = sorted(first.values())
        rows = [tuple(padded[i].tolist()) for i in keep]
        ll = np.array([logsumexp(np.array(terms[r]), axis=0) for r in rows], dtype=F32)
        best = topk(ll[None, :], min(config.num_return_sequences, len(keep)))[0]
        out.append(SequenceCandidates(padded[keep], [hyps[i][1].token_ids for i in keep], ll, best))
    return out
