"""Tokenization on the `tokenizers` library, reproducing transformers' fast tokenizers.

The export step saves each Hugging Face tokenizer as a single ``tokenizer.json``; here it is
loaded without transformers. Two details matter for token-exact parity with the reference:
truncation/padding are set explicitly per call, and ``decode`` applies transformers'
``clean_up_tokenization`` when the source tokenizer had ``clean_up_tokenization_spaces``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragrt.errors import ArtifactError


def clean_up_tokenization(text: str) -> str:
    """transformers' ``PreTrainedTokenizerBase.clean_up_tokenization``, verbatim."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


@dataclass(frozen=True)
class TokenBatch:
    """Tokenized texts: ``ids``/``mask`` int64 ``[B, L]``; ``truncated`` lists the rows that
    were longer than ``max_length`` and cut."""

    ids: np.ndarray
    mask: np.ndarray
    truncated: list[int]


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with the settings ragrt needs (numpy in and out).

    Thread-safe: truncation is a setting of the shared Rust tokenizer, so each call that sets
    it holds a lock (a ``tokenizers.Tokenizer`` also refuses concurrent mutable borrows).
    Tokenizing is cheap next to inference; ONNX Runtime calls still run concurrently.
    """

    def __init__(self, path: str | os.PathLike, *, pad_token_id: int, clean_up: bool = True):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise ArtifactError(
                f"cannot load tokenizer {path}: {e}; re-run `ragrt export`"
            ) from None
        self._tok.no_truncation()
        self._tok.no_padding()
        self.pad_token_id = int(pad_token_id)
        self.clean_up = clean_up
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def tokenize(
        self, texts: Sequence[str], max_length: int, pad_to: int | None = None
    ) -> TokenBatch:
        """Token ids and attention mask, int64 ``[B, L]``, and which rows were truncated.

        Truncates to ``max_length`` (special tokens kept, as transformers' ``truncation=True``)
        and right-pads to the longest row, or to ``pad_to`` when given. Truncation is read off
        the one encoding (its overflow), so nothing is tokenized twice.
        """
        with self._lock:
            self._tok.enable_truncation(max_length=max_length)
            try:
                encs = self._tok.encode_batch(list(texts))
            finally:
                self._tok.no_truncation()
        longest = max((len(e.ids) for e in encs), default=0)
        width = max(longest, pad_to or 0)
        ids = np.full((len(encs), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = 1
        return TokenBatch(ids, mask, [i for i, e in enumerate(encs) if e.overflowing])

    def encode_batch(
        self, texts: Sequence[str], max_length: int, pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)`` of :meth:`tokenize`."""
        batch = self.tokenize(texts, max_length, pad_to)
        return batch.ids, batch.mask

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        with self._lock:
            text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up else text
