"""Selecting runs from a ``ragrt bench`` result (shared by the summary and the plots)."""

from __future__ import annotations

from typing import Any

STAGE_ORDER = [
    ("question_encoding", "question encoding"),
    ("search", "search"),
    ("contexts", "contexts + tokenization"),
    ("generator_encoder", "generator encoder"),
    ("decode_ort", "decode: model (ORT / torch)"),
    ("decode_overhead", "decode: outside the model"),
]
SYSTEM_ORDER = [
    "reference",
    "optimum",
    "optimum-longest",
    "ragrt-fp32",
    "ragrt-fp16",
    "ragrt-int8",
]


def system_order(names: list[str]) -> list[str]:
    known = [n for n in SYSTEM_ORDER if n in names]
    return known + sorted(n for n in names if n not in known)


def group_runs(result: dict[str, Any], size: str, group: str) -> list[dict[str, Any]]:
    return [r for r in result["runs"] if r["size"] == size and group in r["groups"]]


def headline_runs(result: dict[str, Any], size: str) -> list[dict[str, Any]]:
    runs = {r["system"]: r for r in group_runs(result, size, "headline")}
    return [runs[n] for n in system_order(list(runs))]


def other_seconds(r: dict[str, Any]) -> float:
    st = r["stats"]["stages"]
    known = sum(st.get(k, 0.0) for k, _ in STAGE_ORDER)
    return max(0.0, r["stats"]["p50"] - known)
