"""One generation request: the decoding mode and every decoding parameter, resolved once.

Callers (``RagEngine.generate``/``generate_each``/``generate_from_docs``/``stream``, the Triton
models, the CLI) pass options as keywords or wire tensors; :meth:`GenerationRequest.resolve`
turns them into one immutable, validated value: the manifest's generation defaults first, then
the overrides, the mode defaulted to the checkpoint's class. Nothing downstream re-reads a
default or re-checks a value. The request is hashable, so requests with equal options can be
batched together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ragrt.errors import InputError
from ragrt.runtime.generation.params import GenerationParams
from ragrt.runtime.manifest import GenerationDefaults

MODES = ("token", "sequence")
# T5 has relative positions (no hard limit): cap generation at something still sane
MAX_NEW_TOKENS_NO_POSITIONS = 2048
#: decoder rows (num_beams x n_docs) one question may occupy in-process, as a served model's
#: default ``max_decoder_rows``: a huge num_beams is refused instead of allocating gigabytes
MAX_DECODER_ROWS = 4096


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(
            f"unknown mode {mode!r}: choose 'token' (RAG-Token) or 'sequence' (RAG-Sequence)"
        )
    return mode


@dataclass(frozen=True)
class GenerationRequest:
    """``mode`` ("token" = RAG-Token, "sequence" = RAG-Sequence) and the decoding ``params``
    (``n_docs``, ``num_beams``, lengths, processors, ...; see :class:`GenerationParams`)."""

    mode: str
    params: GenerationParams

    @property
    def n_docs(self) -> int:
        return self.params.n_docs

    @property
    def num_beams(self) -> int:
        return self.params.num_beams

    @property
    def decoder_rows(self) -> int:
        """Decoder rows one question occupies (``num_beams * n_docs``): what memory scales with."""
        return self.params.num_beams * self.params.n_docs

    @classmethod
    def resolve(
        cls,
        defaults: GenerationDefaults,
        *,
        max_positions: int,
        mode: str | None = None,
        vocab_size: int | None = None,
        max_decoder_rows: int | None = MAX_DECODER_ROWS,
        **overrides: Any,
    ) -> GenerationRequest:
        """Defaults from a manifest's ``generation`` section, then ``overrides``
        (:class:`GenerationParams` field names; ``None`` means "the default").

        ``max_positions`` is the generator's position limit (0 when it has none, as T5):
        ``max_new_tokens`` may not exceed ``max_positions - 1``. With ``vocab_size``, token id
        parameters must name tokens of the vocabulary. ``num_beams * n_docs`` may not exceed
        ``max_decoder_rows`` (None: no limit).
        """
        mode = check_mode(mode or defaults.rag_type)
        plain = {
            k: int(v)
            if isinstance(v, np.integer)
            else float(v)
            if isinstance(v, np.floating)
            else v
            for k, v in overrides.items()
        }
        params = GenerationParams.from_defaults(defaults, **plain)
        if vocab_size is not None:
            params.check_vocabulary(vocab_size)
        req = cls(mode, params)
        if max_decoder_rows is not None:
            req.check_decoder_rows(max_decoder_rows)
        limit = max_positions - 1
        if limit <= 0:
            limit = MAX_NEW_TOKENS_NO_POSITIONS
        if params.max_new_tokens > limit:
            raise InputError(
                f"max_new_tokens={params.max_new_tokens} is more than this generator can produce "
                f"({limit}); ask for fewer"
            )
        return req

    def check_decoder_rows(self, limit: int) -> GenerationRequest:
        """Refuse more than ``limit`` decoder rows (``num_beams * n_docs``) per question."""
        if self.decoder_rows > limit:
            raise InputError(
                f"num_beams={self.num_beams} x n_docs={self.n_docs} = {self.decoder_rows} "
                f"decoder rows per question; at most {limit} are allowed (memory grows with "
                "them): use fewer beams or docs"
            )
        return self

    def with_n_docs(self, n_docs: int) -> GenerationRequest:
        """The same request over ``n_docs`` given docs (``generate_from_docs``)."""
        return replace(self, params=self.params.replace(n_docs=n_docs))
