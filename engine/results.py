"""Plain result types shared by the engine, the CLI, the Triton models and the client."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Doc:
    """One retrieved passage. ``score`` is the doc score the generator used (``q . d``)."""

    id: str
    title: str
    text: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Hypothesis:
    """One generated sequence: ids exclude the decoder start token."""

    text: str
    token_ids: list[int]
    score: float


@dataclass
class GenerationResult:
    """The answer to one question: the best hypothesis plus the docs it was conditioned on.

    ``sequences`` holds all ``num_return_sequences`` hypotheses, best first (the first one is
    repeated in ``text``/``token_ids``/``score``).
    """

    question: str
    text: str
    token_ids: list[int]
    score: float
    docs: list[Doc]
    sequences: list[Hypothesis] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        """The CLI's ``--json`` line: question, answer, token_ids, score, docs."""
        return {
            "question": self.question,
            "answer": self.text,
            "token_ids": list(self.token_ids),
            "score": float(self.score),
            "docs": [d.to_dict() for d in self.docs],
        }
