"""Greedy and beam search in numpy, with transformers 4.57's exact semantics.

Both searches drive a *step model*: ``step(tokens[N]) -> scores[N, V]`` for the live rows and
``select(idx)`` to keep/reorder rows. A plain :class:`ragrt.runtime.generator.DecoderStep` is one (its
scores are logits); RAG-Token wraps one so that its scores are doc-marginalized log-probs.

- :func:`greedy` is ``GenerationMixin._sample`` without sampling: processors on the raw scores,
  argmax, EOS ends a row. Finished rows are dropped from the decoder batch (their outputs
  cannot change any more), which transformers does not do; outputs are identical.
- :func:`beam_search` is the vectorized ``GenerationMixin._beam_search`` line for line:
  ``log_softmax`` then processors, top ``2 * num_beams`` continuations, the ``-1e9`` masking
  constants in float32, length penalty ``score / generated_len ** length_penalty``, the
  ``early_stopping`` heuristic (True / False / "never") and batch-level termination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ragrt.runtime.generation.params import GenerationParams
from ragrt.runtime.generation.processors import ProcessorList, build_processors
from ragrt.runtime.generation.streaming import FINISHED, Cancellation, Streamer, check_cancelled
from ragrt.tracing import Tracer

F32 = np.float32
BIG_NEG = F32(-1.0e9)


class StepModel(Protocol):
    def step(self, tokens: np.ndarray) -> np.ndarray: ...

    def select(self, idx: np.ndarray) -> None: ...


@dataclass
class TokenHypothesis:
    """Generated token ids (decoder start token excluded, EOS included if produced) + score.

    Beam search: the reference's beam score (sum of processed log-probs over
    ``generated_len ** length_penalty``). Greedy: sum of processed log-probs. RAG-Sequence:
    the marginal ``log p(y|x)`` it ranks by.
    """

    token_ids: list[int]
    score: float


Hypothesis = TokenHypothesis


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """float32 ``x - max - log(sum(exp(x - max)))`` (torch's formula)."""
    x = np.asarray(x, dtype=F32)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, F32(0))
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, F32(0))
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row of a 2-D array, largest first."""
    n = x.shape[1]
    if k < n:
        part = np.argpartition(-x, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(x, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def greedy(
    model: StepModel,
    n_rows: int,
    params: GenerationParams,
    *,
    normalized: bool = False,
    processors: ProcessorList | None = None,
    streamer: Streamer | None = None,
    stopping: Cancellation | None = None,
    tracer: Tracer | None = None,
) -> list[TokenHypothesis]:
    """Greedy decoding of ``n_rows`` independent rows (one hypothesis per row).

    ``normalized``: the model's scores are already log-probs (RAG-Token); otherwise the score
    of a token is its ``log_softmax``. ``streamer.put`` gets every step's tokens, one per row
    (:data:`~ragrt.runtime.generation.streaming.FINISHED` for rows that ended earlier), and
    ``streamer.end()`` follows the last step. ``stopping`` is checked before every step.
    """
    procs = build_processors(params) if processors is None else processors
    eos = params.eos_token_id
    seqs = np.full((n_rows, 1), params.decoder_start_token_id, dtype=np.int64)
    live = np.arange(n_rows)
    out: list[list[int]] = [[] for _ in range(n_rows)]
    scores = np.zeros(n_rows, dtype=np.float64)
    for _ in range(params.max_new_tokens):
        check_cancelled(stopping)
        raw = model.step(seqs[:, -1])
        if tracer is not None:
            tracer.step(len(live))
        processed = procs(seqs, np.array(raw, dtype=F32, copy=True))
        tok = np.argmax(processed, axis=-1)
        rows = np.arange(len(tok))
        # score = processed log-probs, as beam search accumulates them
        lp = processed if normalized else procs(seqs, log_softmax(raw))
        picked = lp[rows, tok]
        scores[live] += picked
        for r, t in zip(live.tolist(), tok.tolist()):
            out[r].append(t)
        if streamer is not None:
            emitted = np.full(n_rows, FINISHED, dtype=np.int64)
            emitted[live] = tok
            streamer.put(emitted)
        seqs = np.concatenate([seqs, tok[:, None].astype(np.int64)], axis=1)
        keep = tok != eos
        if not keep.all():
            if not keep.any():
                break
            kept = np.nonzero(keep)[0]
            model.select(kept)
            seqs, live = seqs[kept], live[kept]
    if streamer is not None:
        streamer.end()
    return [TokenHypothesis(out[r], float(scores[r])) for r in range(n_rows)]


def beam_fill_value(params: GenerationParams) -> int:
    """Filler after a finished beam: transformers' ``pad_token_id or eos_token_id``.

    A pad id of 0 (T5) is falsy there, so T5 beam outputs are padded with EOS.
    """
    return params.pad_token_id or params.eos_token_id


def beam_search(
    model: StepModel,
    batch_size: int,
    params: GenerationParams,
    *,
    num_return_sequences: int | None = None,
    processors: ProcessorList | None = None,
    stopping: Cancellation | None = None,
    tracer: Tracer | None = None,
) -> list[list[TokenHypothesis]]:
    """Beam search over ``batch_size`` items of ``num_beams`` rows each (rows item-major).

    The model's rows start as ``batch_size * num_beams`` copies; returns, per item, the best
    ``num_return_sequences`` hypotheses (default ``params.num_return_sequences``), best first.
    ``stopping`` is checked before every step.
    """
    procs = build_processors(params) if processors is None else processors
    K = params.num_beams
    B = batch_size
    nret = params.num_return_sequences if num_return_sequences is None else num_return_sequences
    max_length = params.max_length
    prompt = 1
    eos = params.eos_token_id
    lp_pow = float(params.length_penalty)
    early = params.early_stopping
    beams_to_keep = 2 * K  # max(2, 1 + n_eos_tokens) * num_beams with one EOS id
    top_num_beam_mask = np.arange(beams_to_keep) < K

    running_sequences = np.full((B, K, max_length), beam_fill_value(params), dtype=np.int64)
    running_sequences[:, :, 0] = params.decoder_start_token_id
    sequences = running_sequences.copy()
    running_beam_scores = np.zeros((B, K), dtype=F32)
    running_beam_scores[:, 1:] = BIG_NEG
    beam_scores = np.full((B, K), BIG_NEG, dtype=F32)
    is_sent_finished = np.zeros((B, K), dtype=bool)
    unsatisfied = np.ones((B, 1), dtype=bool)
    running_beam_indices = np.full((B, K, max_length - prompt), -1, dtype=np.int64)
    beam_indices = running_beam_indices.copy()
    batch_offset = (np.arange(B) * K)[:, None]

    cur_len = prompt
    while True:
        check_cancelled(stopping)
        flat_running = running_sequences[:, :, :cur_len].reshape(B * K, cur_len)
        raw = model.step(flat_running[:, -1])
        if tracer is not None:
            tracer.step(B * K)
        vocab = raw.shape[-1]
        log_probs = procs(flat_running, log_softmax(raw))
        log_probs = log_probs.reshape(B, K, vocab) + running_beam_scores[:, :, None]
        log_probs = log_probs.reshape(B, K * vocab)

        # _get_top_k_continuations
        topk_indices = topk(log_probs, beams_to_keep)
        topk_log_probs = np.take_along_axis(log_probs, topk_indices, axis=1)
        topk_current_beam = topk_indices // vocab
        topk_running_beam_indices = np.take_along_axis(
            running_beam_indices, topk_current_beam[:, :, None], axis=1
        )
        topk_running_sequences = np.take_along_axis(
            running_sequences, topk_current_beam[:, :, None], axis=1
        )
        topk_ids = topk_indices % vocab
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices[:, :, cur_len - prompt] = topk_current_beam + batch_offset

        # stopping criteria on the continuations: EOS or max length
        hits = (topk_ids == eos) | (cur_len + 1 >= max_length)

        # _get_running_beams_for_next_iteration
        topk_running_log_probs = topk_log_probs + hits.astype(F32) * BIG_NEG
        next_idx = topk(topk_running_log_probs, K)
        running_sequences = np.take_along_axis(topk_running_sequences, next_idx[:, :, None], axis=1)
        running_beam_scores = np.take_along_axis(topk_running_log_probs, next_idx, axis=1)
        running_beam_indices = np.take_along_axis(
            topk_running_beam_indices, next_idx[:, :, None], axis=1
        )

        # _update_finished_beams
        did_finish = hits & top_num_beam_mask[None, :]
        fin_lp = topk_log_probs / F32((cur_len + 1 - prompt) ** lp_pow)
        full = np.all(is_sent_finished, axis=-1, keepdims=True) & (early is True)
        fin_lp = fin_lp + full.astype(F32) * BIG_NEG
        fin_lp = fin_lp + (~unsatisfied).astype(F32) * BIG_NEG
        fin_lp = fin_lp + (~did_finish).astype(F32) * BIG_NEG
        merged_sequences = np.concatenate([sequences, topk_running_sequences], axis=1)
        merged_scores = np.concatenate([beam_scores, fin_lp], axis=1)
        merged_beam_indices = np.concatenate([beam_indices, topk_running_beam_indices], axis=1)
        merged_finished = np.concatenate([is_sent_finished, did_finish], axis=1)
        keep = topk(merged_scores, K)
        sequences = np.take_along_axis(merged_sequences, keep[:, :, None], axis=1)
        beam_scores = np.take_along_axis(merged_scores, keep, axis=1)
        beam_indices = np.take_along_axis(merged_beam_indices, keep[:, :, None], axis=1)
        is_sent_finished = np.take_along_axis(merged_finished, keep, axis=1)

        beam_idx = running_beam_indices[:, :, cur_len - prompt].reshape(-1)
        cur_len += 1

        # _check_early_stop_heuristic
        if early == "never" and lp_pow > 0.0:
            best_len = max_length - prompt
        else:
            best_len = cur_len - prompt
        best_possible = running_beam_scores[:, :1] / F32(best_len**lp_pow)
        worst_finished = np.where(
            is_sent_finished, np.min(beam_scores, axis=1, keepdims=True), BIG_NEG
        )
        unsatisfied = unsatisfied & np.any(best_possible > worst_finished, axis=-1, keepdims=True)

        # _beam_search_has_unfinished_sequences
        improvement_possible = bool(np.any(unsatisfied))
        exists_open_beam = not (bool(np.all(is_sent_finished)) and early is True)
        valid_continuations = not bool(np.all(hits))
        if not (improvement_possible and exists_open_beam and valid_continuations):
            break
        model.select(beam_idx)

    results = []
    for b in range(B):
        hyps = []
        for r in range(nret):
            n = int(np.sum(beam_indices[b, r] != -1))
            hyps.append(
                TokenHypothesis(
                    sequences[b, r, prompt : prompt + n].tolist(), float(beam_scores[b, r])
                )
            )
        results.append(hyps)
    return results
