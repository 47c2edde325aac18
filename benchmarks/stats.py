"""Statistics of benchmark samples: latency percentiles, per-stage medians and per-step costs
(:func:`summarize`), and how far one system's answers agree with another's (:func:`agreement`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ragrt.benchmarks.systems import Workload


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "n": int(a.size),
    }


def summarize(samples: list[dict[str, Any]], w: Workload) -> dict[str, Any]:
    lat = [s["latency_s"] for s in samples]
    st = percentiles(lat)
    stages = {
        k: float(np.median([s["stages"].get(k, 0.0) for s in samples]))
        for k in sorted({k for s in samples for k in s["stages"]})
    }
    top = ("question_encoding", "search", "contexts", "generator")
    stages["other"] = float(
        np.median(
            [max(0.0, s["latency_s"] - sum(s["stages"].get(k, 0.0) for k in top)) for s in samples]
        )
    )
    steps = stages.get("decode_steps") or w.new_tokens
    loop = stages.get("decode_loop", 0.0)
    st.update(
        questions_per_s=w.batch / st["p50"],
        tokens_per_s=w.batch * w.new_tokens / st["p50"],
        stages=stages,
        step_ms=1000 * loop / steps if steps else None,
        step_ort_ms=1000 * stages.get("decode_ort", 0.0) / steps if steps else None,
        step_overhead_ms=1000 * stages.get("decode_overhead", 0.0) / steps if steps else None,
        overhead_fraction=(stages.get("decode_overhead", 0.0) / loop) if loop else None,
        generator_p50=float(np.median([s["stages"].get("generator", 0.0) for s in samples])),
        peak_rss_mib=max((s.get("peak_rss_mib") or 0.0) for s in samples) or None,
        peak_rss_delta_mib=max((s.get("peak_rss_delta_mib") or 0.0) for s in samples) or None,
    )
    return st


def agreement(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement of ``other``'s answers with ``base``'s over the same calls.

    Each element is one call's outputs: ``token_ids``, ``doc_ids`` and ``scores`` per question,
    and (reference, greedy) ``margins``: per question and step, the best minus the second-best
    marginal log-prob. For every question whose tokens differ, ``divergences`` gives the first
    differing step, whether the docs were the same, and the base's margin at that step: a
    margin near 0 is a float near-tie that rounding legitimately flips.
    """
    seq_same = tok_same = tok_total = doc_same = n = 0
    score_diff = 0.0
    distinct = []
    divergences = []
    for call, (b, o) in enumerate(zip(base, other)):
        for i in range(len(b["token_ids"])):
            n += 1
            x, y = b["token_ids"][i], o["token_ids"][i]
            seq_same += x == y
            tok_same += sum(p == q for p, q in zip(x, y))
            tok_total += max(len(x), len(y))
            same_docs = b["doc_ids"][i] == o["doc_ids"][i]
            doc_same += same_docs
            score_diff = max(score_diff, abs(b["scores"][i] - o["scores"][i]))
            distinct.append(len(set(x)))
            if x != y:
                t = next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
                m = (b.get("margins") or [None] * (i + 1))[i]
                divergences.append(
                    {
                        "call": call,
                        "question": i,
                        "first_diff_step": t,
                        "same_docs": same_docs,
                        "base_margin_at_diff": m[t] if m and t < len(m) else None,
                    }
                )
    margins = [v for b in base for m in (b.get("margins") or []) if m for v in m if v is not None]
    return {
        "questions": n,
        "identical_sequences": seq_same / n if n else None,
        "token_agreement": tok_same / tok_total if tok_total else None,
        "same_docs": doc_same / n if n else None,
        "max_abs_score_diff": score_diff,
        "base_distinct_tokens_mean": float(np.mean(distinct)) if distinct else None,
        "base_margin_median": float(np.median(margins)) if margins else None,
        "divergences": divergences,
    }
