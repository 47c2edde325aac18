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
        **overrides: Any,
    ) -> GenerationRequest:
        """Defaults from a manifest's ``generation`` section, then ``overrides``
        (:class:`GenerationParams` field names; ``None`` means "the default").

        ``max_positions`` is the generator's position limit (0 when it has none, as T5):
        ``max_new_tokens`` may not exceed ``max_positions - 1``.
        """
        mode = check_mode(mode or defaults.rag_type)
        plain = {k: int(v) if isinstance(v, np.integer) else v for k, v in overrides.items()}
        params = GenerationParams.from_defaults(defaults, **plain)
        limit = max_positions - 1
        if limit <= 0:
            limit = MAX_NEW_TOKENS_NO_POSITIONS
        if params.max_new_tokens > limit:
            raise InputError(
                f"max_new_tokens={params.max_new_tokens} is more than this generator can produce "
                f"({limit}); ask for fewer"
            )
        return cls(mode, params)

    def with_n_docs(self, n_docs: int) -> GenerationRequest:
        """The same request over ``n_docs`` given docs (``generate_from_docs``)."""
        return replace(self, params=self.params.replace(n_docs=n_docs))
