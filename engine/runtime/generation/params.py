"""Generation parameters with the reference's semantics, validated up front."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from ragrt.errors import InputError

EARLY_STOPPING = (True, False, "never")
SEQUENCE_DECODING = ("thorough", "fast")  # RAG-Sequence: rescore every candidate, or not
TOKEN_ID_FIELDS = (
    "decoder_start_token_id",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)


@dataclass(frozen=True)
class GenerationParams:
    """Everything the decode loop needs; lengths count *new* tokens (no decoder start token).

    ``max_new_tokens = N`` is the reference's ``max_length = N + 1`` and ``min_new_tokens = M``
    its ``min_length = M + 1`` (transformers counts the decoder start token in both).
    """

    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    bos_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    max_new_tokens: int = 19
    min_new_tokens: int = 0
    num_beams: int = 1
    num_return_sequences: int = 1
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    n_docs: int = 5
    # transformers' RagSequenceForGeneration.generate always rescores with
    # exclude_bos_score=True (the checkpoint's config value only affects the training loss)
    exclude_bos_score: bool = True
    do_deduplication: bool = True
    # RAG-Sequence only: "thorough" rescores every candidate against every doc (the
    # reference's generate); "fast" scores it under the docs whose beams produced it
    sequence_decoding: str = "thorough"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def max_length(self) -> int:
        """The reference's ``max_length`` (decoder start token included)."""
        return self.max_new_tokens + 1

    @property
    def min_length(self) -> int:
        """The reference's ``min_length`` equivalent of ``min_new_tokens``."""
        return self.min_new_tokens + 1 if self.min_new_tokens > 0 else 0

    def validate(self) -> None:
        def _int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")

        _int("max_new_tokens", 1)
        _int("min_new_tokens", 0)
        _int("num_beams", 1)
        _int("num_return_sequences", 1)
        _int("no_repeat_ngram_size", 0)
        _int("n_docs", 1)
        for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            _int(name, 0)
        for name in ("bos_token_id", "forced_bos_token_id", "forced_eos_token_id"):
            if getattr(self, name) is not None:
                _int(name, 0)
        if self.num_return_sequences > self.num_beams:
            raise InputError(
                f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                f"({self.num_beams}); raise num_beams or ask for fewer sequences"
            )
        if self.min_new_tokens > self.max_new_tokens:
            raise InputError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                f"({self.max_new_tokens})"
            )
        if self.early_stopping not in EARLY_STOPPING or (
            isinstance(self.early_stopping, int) and not isinstance(self.early_stopping, bool)
        ):
            raise InputError(
                f"early_stopping must be true, false or 'never', got {self.early_stopping!r}"
            )
        if self.sequence_decoding not in SEQUENCE_DECODING:
            raise InputError(
                f"sequence_decoding must be 'thorough' or 'fast', got {self.sequence_decoding!r}"
            )
        lp = self.length_penalty
        if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not math.isfinite(lp):
            raise InputError(f"length_penalty must be a finite number, got {lp!r}")
        for name in ("exclude_bos_score", "do_deduplication"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def check_vocabulary(self, vocab_size: int) -> None:
        """Every token id parameter names a token of a ``vocab_size`` vocabulary, and beam
        search has enough tokens to choose ``num_beams`` beams from."""
        for name in TOKEN_ID_FIELDS:
            v = getattr(self, name)
            if v is not None and v >= vocab_size:
                raise InputError(
                    f"{name}={v} is not a token of this generator (its vocabulary has "
                    f"{vocab_size} tokens: 0..{vocab_size - 1})"
                )
        if self.num_beams > vocab_size:
            raise InputError(
                f"num_beams={self.num_beams} is more than the generator's vocabulary "
                f"({vocab_size} tokens)"
            )

    @classmethod
    def from_defaults(cls, defaults: Any, **overrides: Any) -> GenerationParams:
        """Build from a manifest's ``GenerationDefaults`` (or anything with its attributes).

        ``max_length``/``min_length`` (reference meaning) become ``max_new_tokens``/
        ``min_new_tokens``; ``overrides`` use this class's field names and win. ``None``
        overrides are ignored, so CLI flags can be passed through unconditionally.
        """
        names = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise InputError(f"unknown generation parameter(s): {', '.join(bad)}")
        d: dict[str, Any] = {}
        for name in names - {"max_new_tokens", "min_new_tokens", "exclude_bos_score"}:
            if hasattr(defaults, name):
                d[name] = getattr(defaults, name)
        max_length = int(getattr(defaults, "max_length", 20))
        min_length = int(getattr(defaults, "min_length", 0) or 0)
        d["max_new_tokens"] = max(1, max_length - 1)
        d["min_new_tokens"] = max(0, min_length - 1)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)

    def replace(self, **changes: Any) -> GenerationParams:
        return replace(self, **changes)
