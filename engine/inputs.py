"""Request validation shared by the engine and the client (no heavy imports here)."""

from __future__ import annotations

from typing import Any

from ragrt.errors import InputError


def check_questions(questions: Any, *, require_text: bool = True) -> list[str]:
    """A non-empty list of strings; with ``require_text``, none of them blank."""
    if isinstance(questions, str):
        raise InputError("questions must be a list of strings; wrap a single question in [...]")
    qs = list(questions)
    if not qs:
        raise InputError("no questions given")
    for i, q in enumerate(qs):
        if not isinstance(q, str):
            raise InputError(f"question {i} is {type(q).__name__}, not a string")
        if require_text and not q.strip():
            raise InputError(f"question {i} is empty; ask something")
    return qs
