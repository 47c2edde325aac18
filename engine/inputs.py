"""Request validation shared by the engine and the client (no heavy imports here)."""

from __future__ import annotations

from typing import Any

from ragrt.errors import InputError

#: the default cap on one question's size (UTF-8 bytes). The question encoder reads at most
#: a few hundred tokens, so a longer question is truncated anyway; without a cap a huge one
#: costs seconds to minutes of tokenizing (and gigabytes) before that truncation.
DEFAULT_MAX_QUESTION_BYTES = 64 * 1024


def check_max_question_bytes(value: Any) -> int | None:
    """``max_question_bytes``: a positive int, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(
            f"max_question_bytes must be a positive integer (or None: no limit), got {value!r}"
        )
    return value


def question_size_error(question: str | bytes, max_bytes: int | None) -> str | None:
    """Why ``question`` is over ``max_bytes`` UTF-8 bytes, or None. Cheap for huge strings:
    the length in characters bounds the UTF-8 size (1 to 4 bytes each), so only a question
    near the limit is encoded to be measured."""
    if max_bytes is None:
        return None
    if isinstance(question, bytes):
        n = len(question)
    elif len(question) * 4 <= max_bytes:
        return None
    elif len(question) > max_bytes:
        return (
            f"is too long: at least {len(question):,} bytes of UTF-8, the limit is "
            f"{max_bytes:,} (max_question_bytes)"
        )
    else:
        n = len(question.encode("utf-8", "surrogatepass"))
    if n <= max_bytes:
        return None
    return f"is too long: {n:,} bytes of UTF-8, the limit is {max_bytes:,} (max_question_bytes)"


def check_questions(
    questions: Any, *, require_text: bool = True, max_bytes: int | None = None
) -> list[str]:
    """A non-empty list of strings; with ``require_text``, none of them blank; with
    ``max_bytes``, none longer than that in UTF-8 (checked before any tokenizing)."""
    if isinstance(questions, str):
        raise InputError("questions must be a list of strings; wrap a single question in [...]")
    qs = list(questions)
    if not qs:
        raise InputError("no questions given")
    for i, q in enumerate(qs):
        if not isinstance(q, str):
            raise InputError(f"question {i} is {type(q).__name__}, not a string")
        too_long = question_size_error(q, max_bytes)
        if too_long:
            raise InputError(f"question {i} {too_long}")
        if require_text and not q.strip():
            raise InputError(f"question {i} is empty; ask something")
    return qs
