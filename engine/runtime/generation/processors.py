"""numpy logits processors mirroring transformers' (``generation/logits_process.py``).

Each processor takes ``seqs`` (``[N, cur_len]`` int64, decoder start token included, exactly
the ``input_ids`` transformers passes) and ``scores`` (``[N, V]`` float32) and returns the
processed scores; they modify ``scores`` in place. :func:`build_processors` applies them in the
order of transformers' ``GenerationMixin._get_logits_processor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ragrt.runtime.generation.params import GenerationParams

NEG_INF = np.float32(-np.inf)


class LogitsProcessor:
    def __call__(self, seqs: np.ndarray, scores: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class MinNewTokens(LogitsProcessor):
    """Ban EOS while fewer than ``min_new_tokens`` tokens follow the ``prompt_length`` prefix."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_id: int):
        self.prompt_length = int(prompt_length)
        self.min_new_tokens = int(min_new_tokens)
        self.eos = int(eos_token_id)

    def __call__(self, seqs: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if seqs.shape[-1] - self.prompt_length < self.min_new_tokens:
            scores[:, self.eos] = NEG_INF
        return scores


class NoRepeatNGram(LogitsProcessor):
    """Ban every token that would repeat an n-gram already present in the row (fairseq's rule).

    Like transformers, n-grams are taken over the whole row, decoder start token included.
    """

    def __init__(self, ngram_size: int):
        if ngram_size <= 0:
            raise ValueError("ngram_size must be > 0")
        self.n = int(ngram_size)

    def banned(self, row: list[int]) -> list[int]:
        n, cur_len = self.n, len(row)
        if cur_len + 1 < n:
            return []
        prefix = tuple(row[cur_len + 1 - n : cur_len])
        out = []
        for i in range(cur_len - n + 1):
            if tuple(row[i : i + n - 1]) == prefix:
                out.append(row[i + n - 1])
        return out

    def __call__(self, seqs: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if seqs.shape[-1] + 1 < self.n:
            return scores
        for i, row in enumerate(seqs.tolist()):
            ban = self.banned(row)
            if ban:
                scores[i, ban] = NEG_INF
        return scores


class ForcedBOS(LogitsProcessor):
    """At the first step (``cur_len == 1``) only ``bos_token_id`` is allowed (score 0)."""

    def __init__(self, bos_token_id: int):
        self.bos = int(bos_token_id)

    def __call__(self, seqs: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if seqs.shape[-1] == 1:
            scores[:] = NEG_INF
            scores[:, self.bos] = 0.0
        return scores


class ForcedEOS(LogitsProcessor):
    """When ``cur_len == max_length - 1`` only ``eos_token_id`` is allowed (score 0)."""

    def __init__(self, max_length: int, eos_token_id: int):
        self.max_length = int(max_length)
        self.eos = int(eos_token_id)

    def __call__(self, seqs: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if seqs.shape[-1] == self.max_length - 1:
            scores[:] = NEG_INF
            scores[:, self.eos] = 0.0
        return scores


class ProcessorList(list):
    def __call__(self, seqs: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for p in self:
            scores = p(seqs, scores)
        return scores


def build_processors(params: GenerationParams, prompt_length: int = 1) -> ProcessorList:
    """The processors ``params`` implies, in ``_get_logits_processor``'s order.

    transformers applies: no_repeat_ngram, min_length, min_new_tokens, forced_bos, forced_eos.
    ragrt expresses the minimum as ``min_new_tokens`` after the one-token decoder prompt, the
    same rule as the reference's ``MinLengthLogitsProcessor(min_length = min_new_tokens + 1)``.
    """
    procs = ProcessorList()
    if params.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGram(params.no_repeat_ngram_size))
    if params.min_new_tokens > 0:
        procs.append(MinNewTokens(prompt_length, params.min_new_tokens, params.eos_token_id))
    if params.forced_bos_token_id is not None:
        procs.append(ForcedBOS(params.forced_bos_token_id))
    if params.forced_eos_token_id is not None:
        procs.append(ForcedEOS(params.max_new_tokens + prompt_length, params.forced_eos_token_id))
    return procs
