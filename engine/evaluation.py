"""Answer quality of a RAG model on a question file: exact match, token F1, recall@k, latency.

The metrics are the ones the RAG paper reports for open-domain QA, computed as SQuAD's
official script does: both the prediction and each gold answer are normalised (lower case,
punctuation and the articles a/an/the removed, whitespace collapsed); exact match and token F1
take the maximum over the gold answers. Retrieval recall@k is the fraction of questions with at
least one gold passage id among the top ``k`` retrieved. Latency is wall time per
:meth:`RagEngine.generate` call (retrieval + generation, end to end).

Question files are JSON lines: ``{"question": str, "answers": [str, ...], "gold_ids": [...]}``
(``gold_ids`` optional). A malformed line raises :class:`~ragrt.errors.InputError` naming
``FILE:LINE`` and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
import string
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragrt.errors import InputError

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
DEFAULT_RECALL_AT = (1, 5)
LATENCY_PERCENTILES = (50, 90, 99)


# -- metrics ------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD's ``normalize_answer``: lower, drop punctuation, drop a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not p or not g:  # SQuAD: two empty answers agree, one empty one does not
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Bag-of-tokens F1 of the normalised strings, maximum over the gold answers."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def recall_at(retrieved_ids: Sequence[str], gold_ids: Sequence[str], k: int) -> float:
    """1.0 if any gold id is among the first ``k`` retrieved ids, else 0.0."""
    gold = {str(g) for g in gold_ids}
    return float(any(str(r) in gold for r in list(retrieved_ids)[:k]))


# -- question files -----------------------------------------------------------------------------
@dataclass
class EvalQuestion:
    """One line of a question file (``line`` is 1-based, for error messages and reports)."""

    question: str
    answers: list[str]
    gold_ids: list[str] | None = None
    line: int = 0


def _string_list(value: Any, where: str, key: str, allow_int: bool = False) -> list[str]:
    ok = (str, int) if allow_int else (str,)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, ok) and not isinstance(v, bool) for v in value)
    ):
        kind = "strings or integers" if allow_int else "strings"
        raise InputError(f'{where}: "{key}" must be a non-empty list of {kind}, got {value!r}')
    if not allow_int and not all(v.strip() for v in value):
        raise InputError(f'{where}: "{key}" holds an empty answer; remove it')
    return [str(v) for v in value]


def read_questions(path: str | os.PathLike) -> list[EvalQuestion]:
    """Parse a JSONL question file; blank lines are skipped, other keys are ignored."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such question file (JSON lines with question and answers)")
    out = []
    with p.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{p}:{n}"
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise InputError(
                    f'{where}: expected a JSON object {{"question": ..., "answers": [...]}}, '
                    f"got {type(row).__name__}"
                )
            q = row.get("question")
            if not isinstance(q, str) or not q.strip():
                raise InputError(f'{where}: "question" must be a non-empty string, got {q!r}')
            if "answers" not in row:
                raise InputError(f'{where}: missing "answers" (a list of gold answer strings)')
            answers = _string_list(row["answers"], where, "answers")
            gold = row.get("gold_ids")
            gold_ids = None if gold is None else _string_list(gold, where, "gold_ids", True)
            out.append(EvalQuestion(q, answers, gold_ids, n))
    if not out:
        raise InputError(f"{p}: no questions in the file")
    return out


# -- scoring and the loop ------------------------------------------------------------------------
@dataclass
class Prediction:
    """What one question got: the answer, the retrieved ids (best first) and its scores."""

    question: str
    answer: str
    retrieved_ids: list[str]
    em: float
    f1: float
    line: int = 0


@dataclass
class EvalReport:
    """Aggregate scores (percentages, as papers report them) and latency in milliseconds."""

    questions: int
    exact_match: float
    f1: float
    recall: dict[int, float] = field(default_factory=dict)  # k -> recall@k (%), gold ids only
    with_gold_ids: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p90/p99 per call
    batch_size: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    predictions: list[Prediction] = field(default_factory=list)

    def to_dict(self, predictions: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["recall"] = {f"@{k}": v for k, v in self.recall.items()}
        if not predictions:
            d.pop("predictions")
        return d

    def summary(self) -> str:
        """A few aligned lines for a terminal."""
        s = self.settings
        what = ", ".join(f"{k} {v}" for k, v in s.items() if v is not None)
        lines = [
            f"questions     {self.questions}" + (f"  ({what})" if what else ""),
            f"exact match   {self.exact_match:.1f}",
            f"token F1      {self.f1:.1f}",
        ]
        if self.recall:
            rec = "   ".join(f"recall@{k} {v:.1f}" for k, v in self.recall.items())
            lines.append(f"retrieval     {rec}  ({self.with_gold_ids} questions with gold ids)")
        if self.latency_ms:
            lat = "  ".join(f"{k} {v:.1f}" for k, v in self.latency_ms.items())
            per = "question" if self.batch_size == 1 else f"batch of {self.batch_size}"
            lines.append(f"latency (ms)  {lat}  (per {per}, retrieval + generation)")
        return "\n".join(lines)


def score(
    questions: Sequence[EvalQuestion],
    answers: Sequence[str],
    retrieved_ids: Sequence[Sequence[str]] | None = None,
    recall_k: Sequence[int] = DEFAULT_RECALL_AT,
) -> EvalReport:
    """EM / F1 over all questions and recall@k over those with gold ids (percentages)."""
    if len(answers) != len(questions):
        raise InputError(f"{len(answers)} answers for {len(questions)} questions")
    rids = retrieved_ids if retrieved_ids is not None else [[] for _ in questions]
    preds = [
        Prediction(
            q.question,
            a,
            [str(r) for r in ids],
            exact_match(a, q.answers),
            token_f1(a, q.answers),
            q.line,
        )
        for q, a, ids in zip(questions, answers, rids)
    ]
    n = max(1, len(preds))
    recall: dict[int, float] = {}
    gold = [(q, p) for q, p in zip(questions, preds) if q.gold_ids]
    if gold and retrieved_ids is not None:
        for k in recall_k:
            hits = sum(recall_at(p.retrieved_ids, q.gold_ids or [], k) for q, p in gold)
            recall[int(k)] = round(100.0 * hits / len(gold), 2)
    return EvalReport(
        questions=len(preds),
        exact_match=round(100.0 * sum(p.em for p in preds) / n, 2),
        f1=round(100.0 * sum(p.f1 for p in preds) / n, 2),
        recall=recall,
        with_gold_ids=len(gold),
        predictions=preds,
    )


def latency_percentiles(seconds: Sequence[float]) -> dict[str, float]:
    if not len(seconds):
        return {}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {f"p{p}": round(float(np.percentile(ms, p)), 2) for p in LATENCY_PERCENTILES}


def evaluate(
    engine: Any,
    questions: Sequence[EvalQuestion],
    *,
    batch_size: int = 1,
    recall_k: Sequence[int] = DEFAULT_RECALL_AT,
    progress: bool = True,
    **generate_kwargs: Any,
) -> EvalReport:
    """Answer every question with ``engine.generate`` and score it.

    ``generate_kwargs`` go to :meth:`ragrt.engine.RagEngine.generate` (``mode``, ``n_docs``,
    ``num_beams``, ``sequence_decoding``, ...). Latency is timed per ``generate`` call
    (``batch_size`` questions each, default 1: per-question latency). With gold ids, the top
    ``max(recall_k)`` passages are retrieved once more, outside the timed calls.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    ks = sorted({int(k) for k in recall_k})
    if any(k <= 0 for k in ks):
        raise InputError(f"recall@k needs positive k, got {list(recall_k)}")
    qs = list(questions)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(qs), desc="evaluating", unit="question", dynamic_ncols=True)
    answers: list[str] = []
    retrieved: list[list[str]] = []
    times: list[float] = []
    try:
        for s in range(0, len(qs), batch_size):
            chunk = qs[s : s + batch_size]
            texts = [q.question for q in chunk]
            t0 = time.perf_counter()
            results = engine.generate(texts, **generate_kwargs)
            times.append(time.perf_counter() - t0)
            answers += [r.text for r in results]
            retrieved += [[d.id for d in r.docs] for r in results]
            if ks and any(q.gold_ids for q in chunk) and max(ks) > len(results[0].docs):
                docs = engine.retrieve(texts, k=max(ks))
                retrieved[-len(chunk) :] = [[d.id for d in row] for row in docs]
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    report = score(qs, answers, retrieved, ks)
    report.latency_ms = latency_percentiles(times)
    report.batch_size = batch_size
    return report
