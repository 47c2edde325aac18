"""Request validation shared by the engine and the client (no heavy imports here)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from typing import Any

from ragrt.errors import InputError


def text_problem(s: str) -> str | None:
    """Why ``s`` is not text that can be encoded as UTF-8, or None when it is.

    Python strings can hold what UTF-8 cannot: lone surrogates (``"\\ud800"``) and the
    stand-ins for undecodable bytes (``surrogateescape``: a command-line argument that was not
    UTF-8 arrives as U+DC80..U+DCFF). The message names the first one and never echoes the text.
    """
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        cp = ord(s[e.start])
        if 0xDC80 <= cp <= 0xDCFF:
            return f"not valid UTF-8 (byte 0x{cp - 0xDC00:02x} at character {e.start})"
        return f"not valid Unicode text (a lone surrogate U+{cp:04X} at character {e.start})"
    return None


def check_question(q: Any, i: int = 0, *, require_text: bool = True) -> str:
    """One question: a string; with ``require_text``, of valid text and not blank (the
    client checks only types here and reports those per question)."""
    if not isinstance(q, str):
        raise InputError(f"question {i} is {type(q).__name__}, not a string")
    if not require_text:
        return q
    problem = text_problem(q)
    if problem is not None:
        raise InputError(f"question {i} is {problem}")
    if not q.strip():
        raise InputError(f"question {i} is empty; ask something")
    return q


def question_list(questions: Any) -> list[Any]:
    """``questions`` as a list (any ordered iterable: list, tuple, generator), items not yet
    checked. A single string, a mapping or a set is refused: iterating one does not give a
    list of questions (characters; keys; no order)."""
    if isinstance(questions, (str, bytes)):
        raise InputError("questions must be a list of strings; wrap a single question in [...]")
    if isinstance(questions, (Mapping, Set)):
        raise InputError(
            f"questions must be a list of strings, got a {type(questions).__name__} "
            "(pass a list of the questions themselves)"
        )
    if not isinstance(questions, Iterable):
        raise InputError(f"questions must be a list of strings, got {type(questions).__name__}")
    return list(questions)


def check_questions(questions: Any, *, require_text: bool = True) -> list[str]:
    """A non-empty list of strings (:func:`question_list`); with ``require_text``, each valid
    text and not blank (:func:`check_question`)."""
    qs = question_list(questions)
    if not qs:
        raise InputError("no questions given")
    for i, q in enumerate(qs):
        check_question(q, i, require_text=require_text)
    return qs
