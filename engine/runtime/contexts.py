"""Generator inputs built exactly as transformers' ``RagRetriever.postprocess_docs``.

For question ``q`` (the question-encoder ids decoded back with special tokens skipped, see
:func:`question_strings`) and each retrieved doc, the generator reads::

    (prefix + title + title_sep + text + doc_sep + q).replace("  ", " ")

with one leading and one trailing ``"`` stripped from the title. Strings are question-major
(``B * n_docs`` rows, doc order as retrieved) and tokenized with the generator tokenizer,
truncated to ``max_combined_length``. The reference pads to exactly ``max_combined_length``;
ragrt pads to the longest row, which the attention mask makes equivalent (up to float
rounding) and is much cheaper for short passages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ragrt.errors import InputError


def strip_title(title: str) -> str:
    """``title.removeprefix('"').removesuffix('"')`` (one quote each side, as the reference)."""
    if title.startswith('"'):
        title = title[1:]
    if title.endswith('"'):
        title = title[:-1]
    return title


def context_string(
    question: str,
    title: str,
    text: str,
    *,
    prefix: str = "",
    title_sep: str = " / ",
    doc_sep: str = " // ",
) -> str:
    return (prefix + strip_title(title) + title_sep + text + doc_sep + question).replace("  ", " ")


def _attr(params: Any, name: str, default: Any) -> Any:
    v = getattr(params, name, default)
    return default if v is None else v


def build_contexts(questions: Sequence[str], docs: Sequence[Sequence[Any]], gen: Any) -> list[str]:
    """Context strings, question-major: ``len(questions) * n_docs`` of them.

    ``questions`` must already be the *decoded question-encoder ids* (what the reference
    concatenates, e.g. lower-cased by an uncased BERT vocabulary); ``docs[i]`` are the
    :class:`ragrt.results.Doc` of question ``i`` (anything with ``title`` and ``text``), all
    lists of one length. ``gen`` supplies ``prefix``, ``title_sep`` and ``doc_sep``
    (a manifest's ``GenerationDefaults``).
    """
    if len(questions) != len(docs):
        raise InputError(f"{len(questions)} questions but {len(docs)} doc lists")
    sizes = {len(d) for d in docs}
    if len(sizes) > 1 or 0 in sizes:
        raise InputError(
            f"every question needs the same non-zero number of docs, got {sorted(sizes)}"
        )
    prefix = _attr(gen, "prefix", "")
    title_sep = _attr(gen, "title_sep", " / ")
    doc_sep = _attr(gen, "doc_sep", " // ")
    return [
        context_string(q, d.title, d.text, prefix=prefix, title_sep=title_sep, doc_sep=doc_sep)
        for q, ds in zip(questions, docs)
        for d in ds
    ]


def question_strings(tokenizer: Any, ids: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
    """The reference's ``question_encoder_tokenizer.batch_decode(ids, skip_special_tokens=True)``.

    ``tokenizer`` is a :class:`ragrt.runtime.text.TextTokenizer` (its ``decode`` applies transformers'
    ``clean_up_tokenization``); padding is dropped via ``mask`` when given.
    """
    rows = np.asarray(ids)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        return [tokenizer.decode(r[k].tolist()) for r, k in zip(rows, keep)]
    return [tokenizer.decode(r.tolist()) for r in rows]


def tokenize_contexts(
    tokenizer: Any,
    strings: Sequence[str],
    max_combined_length: int = 300,
    pad_to: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` int64 ``[N, L]``: truncated to ``max_combined_length``, padded to the
    longest row (or ``pad_to``, e.g. 300 to reproduce the reference's shapes)."""
    if not strings:
        raise InputError("no context strings to tokenize")
    return tokenizer.encode_batch(list(strings), max_length=max_combined_length, pad_to=pad_to)


def build_generator_inputs(
    questions: Sequence[str], docs: Sequence[Sequence[Any]], tokenizer: Any, gen: Any
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`build_contexts` then :func:`tokenize_contexts` with ``gen.max_combined_length``."""
    strings = build_contexts(questions, docs, gen)
    return tokenize_contexts(tokenizer, strings, int(_attr(gen, "max_combined_length", 300)))
