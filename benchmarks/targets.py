"""What ``ragrt bench`` derives from its samples: each decode step against its memory roofline,
the physical floor of a call, and the project's performance targets, met or missed.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def rederive(result: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute everything derived from the samples: roofline, floors, agreement, targets.

    A resumed run measured the machine's bandwidth and sgemm rate once per session; the roof
    is the best of them (a roof is a maximum; a low reading is a disturbed measurement).
    """
    sessions = [result["bandwidth"]] + [x["bandwidth"] for x in result.get("resumed", [])]
    if len(sessions) > 1:
        best = dict(sessions[0])
        for k in ("read_gbps", "gemv_gbps", "copy_gbps", "limit_gbps", "matmul_gflops"):
            vals = [b[k] for b in sessions if k in b]
            if vals:
                best[k] = max(vals)
        best["sessions"] = [
            {k: b.get(k) for k in ("read_gbps", "gemv_gbps", "copy_gbps", "matmul_gflops")}
            for b in sessions
        ]
        result["bandwidth"] = best
    result["roofline"] = roofline_points(result)
    result["floors"] = floors(result)
    result["agreement"] = [
        {"size": r["size"], "workload": r["workload"], "system": r["system"]} | r["agreement"]
        for r in result["runs"]
        if r.get("agreement")
    ]
    result["targets"] = evaluate_targets(result)
    return result


def roofline_points(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ragrt run's decode step against its memory floor."""
    from ragrt.benchmarks.roofline import step_bytes

    limit = result["bandwidth"]["limit_gbps"] * 1e9
    pts = []
    for r in result["runs"]:
        if not r["system"].startswith("ragrt-"):
            continue
        prec = r["system"].split("-", 1)[1]
        model = result["models"][r["size"]]
        wb = model["step_weight_bytes"].get(prec)
        if not wb:
            continue
        w = r["workload"]
        ctx = [s["detail"].get("context_len") or 0 for s in r["samples"]]
        calls = [s["detail"].get("ort_past_calls") or 0 for s in r["samples"]]
        ort_past = [s["stages"].get("decode_ort_past", 0.0) for s in r["samples"]]
        per_call = [t / c for t, c in zip(ort_past, calls) if c]
        if not per_call:
            continue
        rows = w["batch"] * w["num_beams"] * w["n_docs"]
        b = step_bytes(
            wb["streamed"], model["generator"], rows, int(np.median(ctx)), w["new_tokens"]
        )
        t_ort = float(np.median(per_call))
        st = r["stats"]
        t_step = (st["step_ms"] or 0) / 1000
        floor = b["total"] / limit
        pts.append(
            {
                "size": r["size"],
                "system": r["system"],
                "workload": w,
                "rows": rows,
                "context_len": int(np.median(ctx)),
                "bytes": b,
                "floor_ms": 1000 * floor,
                "ort_step_ms": 1000 * t_ort,
                "step_ms": 1000 * t_step,
                "ort_fraction_of_limit": floor / t_ort if t_ort else None,
                "step_fraction_of_limit": floor / t_step if t_step else None,
                "achieved_gbps": b["total"] / t_ort / 1e9 if t_ort else None,
            }
        )
    return pts


BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}


def floors(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Physical lower bounds of ragrt's headline and batch-sweep calls.

    floor = measured (question encoding + search + contexts) + generator floor
    (:func:`ragrt.benchmarks.roofline.generator_floor`) at the context length ragrt ran
    (padded to the longest context of the call). For the headline: the largest speedup over
    the reference the floor allows; for batches: the throughput ceiling and the batch-B over
    batch-1 gain an ideal implementation would get.
    """
    # fp32 on CPU only: the compute roof is the measured fp32 sgemm rate of the host
    if result["settings"]["device"] != "cpu":
        return []
    head = result["settings"]["headline"]
    out = []
    for size in result["models"]:
        ref = _find(result, size, head, "reference")
        for r in result["runs"]:
            if r["size"] == size and r["system"] == "ragrt-fp32" and _same_but_batch(r, head):
                item = _floor(result, r, ref)
                if item is not None:
                    out.append(item)
    for item in out:  # ideal batch gain: ceiling at batch B over ceiling at the headline batch
        one = next(
            (
                x
                for x in out
                if x["size"] == item["size"] and x["system"] == item["system"] and x["headline"]
            ),
            None,
        )
        if one is not None:
            item["ideal_gain_vs_headline_batch"] = (
                item["ceiling_questions_per_s"] / one["ceiling_questions_per_s"]
            )
    return out


def _same_but_batch(r: dict[str, Any], head: dict[str, int]) -> bool:
    w = r["workload"]
    return {k: v for k, v in w.items() if k != "batch"} == {
        k: v for k, v in head.items() if k != "batch"
    }


def _floor(result: dict[str, Any], r: dict[str, Any], ref: dict | None) -> dict[str, Any] | None:
    """The floor of one ragrt run (None without the weight sizes it needs)."""
    from ragrt.benchmarks.roofline import generator_floor, step_bytes

    bw = result["bandwidth"]
    head = result["settings"]["headline"]
    model = result["models"][r["size"]]
    w = r["workload"]
    prec = r["system"].split("-", 1)[1]
    wb = model["step_weight_bytes"].get(prec)
    eb = model.get("encoder_weight_bytes", {}).get(prec)
    if not wb or not eb:
        return None
    st = r["stats"]["stages"]
    ctx = int(np.median([s["detail"].get("context_len") or 0 for s in r["samples"]]))
    rows = w["batch"] * w["num_beams"] * w["n_docs"]
    fixed = sum(st.get(k, 0.0) for k in ("question_encoding", "search", "contexts"))
    sb = step_bytes(wb["streamed"], model["generator"], rows, ctx, w["new_tokens"])
    g = generator_floor(
        eb,
        sb,
        model["generator"],
        rows,
        w["batch"] * w["n_docs"],
        ctx,
        w["new_tokens"],
        bw["limit_gbps"],
        bw["matmul_gflops"],
        BYTES_PER_PARAM.get(prec, 4.0),
        int(np.median([s["detail"].get("context_tokens") or 0 for s in r["samples"]])),
    )
    total = fixed + g["total_s"]
    item = {
        "size": r["size"],
        "system": r["system"],
        "batch": w["batch"],
        "headline": w == head,
        "context_len": ctx,
        "fixed_s": fixed,
        "generator_floor": g,
        "floor_s": total,
        "measured_s": r["stats"]["p50"],
        "measured_generator_s": r["stats"]["generator_p50"],
        "fraction_of_floor": total / r["stats"]["p50"],
        "ceiling_questions_per_s": w["batch"] / total,
        "measured_questions_per_s": r["stats"]["questions_per_s"],
    }
    if "total_ragged_s" in g:
        item["floor_ragged_s"] = fixed + g["total_ragged_s"]
    if ref is not None and w == head:
        item["max_speedup_vs_reference"] = ref["stats"]["p50"] / total
        if "floor_ragged_s" in item:
            item["max_speedup_ragged_vs_reference"] = ref["stats"]["p50"] / item["floor_ragged_s"]
    return item


def _find(result: dict[str, Any], size: str, w: dict[str, int], system: str) -> dict | None:
    for r in result["runs"]:
        if r["size"] == size and r["workload"] == w and r["system"] == system:
            return r
    return None


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, on the headline workload of the first size (bart-base when run)."""
    s = result["settings"]
    size = "bart-base" if "bart-base" in s["sizes"] else s["sizes"][0]
    head = s["headline"]
    fp32 = _find(result, size, head, "ragrt-fp32")
    int8 = _find(result, size, head, "ragrt-int8")
    out: list[dict[str, Any]] = []

    def target(name: str, value: float | None, goal: float, higher: bool, note: str) -> None:
        met = None if value is None else (value >= goal if higher else value < goal)
        by = None
        if value is not None and value != 0:
            by = value / goal if higher else goal / value
        out.append(
            {
                "target": name,
                "size": size,
                "value": value,
                "goal": goal,
                "higher_is_better": higher,
                "met": met,
                "ratio_to_goal": by,
                "note": note,
            }
        )

    if fp32:
        _fp32_targets(fp32, target)
    if int8 and "speedup_vs_reference" in int8:
        ag = int8.get("agreement", {})
        target(
            "ragrt int8 end-to-end speedup vs transformers",
            int8["speedup_vs_reference"],
            5.0,
            True,
            f"token agreement {ag.get('token_agreement')}, identical sequences "
            f"{ag.get('identical_sequences')}",
        )
    bsizes = sorted(s["batch_sizes"])
    lo = _find(result, size, head | {"batch": bsizes[0]}, "ragrt-fp32")
    hi = _find(result, size, head | {"batch": bsizes[-1]}, "ragrt-fp32")
    if len(bsizes) > 1 and lo and hi:
        target(
            f"ragrt fp32 throughput batch {bsizes[-1]} / batch {bsizes[0]}",
            hi["stats"]["questions_per_s"] / lo["stats"]["questions_per_s"],
            6.0,
            True,
            "questions/s",
        )
    if fp32 and fp32["stats"].get("overhead_fraction") is not None:
        target(
            "ragrt fp32 per-step overhead outside ONNX Runtime",
            fp32["stats"]["overhead_fraction"],
            0.10,
            False,
            f"{fp32['stats']['step_overhead_ms']:.2f} ms of a {fp32['stats']['step_ms']:.2f} ms step",
        )
    return out


def _fp32_targets(fp32: dict[str, Any], target: Any) -> None:
    """fp32 end-to-end speedup vs transformers, generator speedup vs optimum."""
    if "speedup_vs_reference" in fp32:
        ag = fp32.get("agreement", {})
        target(
            "ragrt fp32 end-to-end speedup vs transformers",
            fp32["speedup_vs_reference"],
            3.0,
            True,
            f"identical sequences {ag.get('identical_sequences')}",
        )
    for opt in ("optimum-longest", "optimum"):
        key = f"generator_speedup_vs_{opt}"
        if key in fp32:
            target(
                f"ragrt fp32 generator speedup vs {opt}",
                fp32[key],
                1.5,
                True,
                "same tensors" if opt == "optimum-longest" else "optimum fed 300-padded",
            )
