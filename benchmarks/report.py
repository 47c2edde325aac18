"""Plots and the markdown summary of a ``ragrt bench`` result JSON.

Regenerate them from a stored result without re-running anything::

    python -m ragrt.benchmarks.report benchmarks/results/bench_cpu.json

A hand-written ``<stem>_notes.md`` next to the JSON (analysis: where the time goes, what
would close a missed target) is included verbatim at the end of the summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ragrt.benchmarks.plots import plots  # re-exported: report.plots
from ragrt.benchmarks.results_view import (
    STAGE_ORDER,
    SYSTEM_ORDER,
    group_runs,
    headline_runs,
    other_seconds,
)


# -- markdown ------------------------------------------------------------------------------------
def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(result: dict[str, Any], paths: dict[str, Path] | None = None) -> str:
    """The whole summary: machine and settings, targets, per-size headline tables, sweeps,
    roofline, physical floor, plots and how it was measured."""
    md = _header(result) + _targets(result)
    for size in result["settings"]["sizes"]:
        md += _size_section(result, size)
    md += _sweeps(result) + _roofline(result) + _floors(result)
    if paths:
        md.append("\n## Plots\n")
        md += [f"![{k[5:]}]({Path(p).name})" for k, p in paths.items() if k.startswith("plot_")]
    md.append(HOW_MEASURED)
    return "\n".join(md) + "\n"


def _header(result: dict[str, Any]) -> list[str]:
    s, m, ld = result["settings"], result["machine"], result["load"]
    head = s["headline"]
    title = "ragrt benchmark" + (" (smoke run)" if s.get("smoke") else "")
    md = [f"# {title}: {s['device'].upper()}, {result['created']}"]
    where = f"{m['cpu']}, {m['usable_cpus']} usable cores, {m['mem_total_gib']} GiB RAM"
    if s["device"] != "cpu":
        where += f"; GPU: {m.get('gpu')}"
    md.append(f"\n**Machine**: {where} ({m['os']}, Python {m['python']}).")
    md += _bandwidth(result)
    others = ld["start"].get("others") or []
    md.append(
        f"Load average at start {ld['start']['loadavg_1_5_15']}, at end "
        f"{ld.get('end', {}).get('loadavg_1_5_15')}; {len(others)} other busy process(es) at "
        "start" + (": " + "; ".join(o["cmd"][:60] for o in others) if others else "") + "."
    )
    vs = ", ".join(f"{k} {val}" for k, val in result["versions"].items() if val)
    md.append(f"\n**Versions**: {vs}.")
    md.append(
        f"\n**Settings**: sizes {', '.join(s['sizes'])} (question encoder {s['encoder_size']}); "
        f"headline workload batch {head['batch']}, n_docs {head['n_docs']}, beams "
        f"{head['num_beams']}, {head['new_tokens']} new tokens (min = max); {s['repeats']} "
        f"repeats x {s['questions']} questions, interleaved; {s['threads']} threads for every "
        "system (ONNX Runtime intra-op and torch)."
    )
    return md


def _bandwidth(result: dict[str, Any]) -> list[str]:
    bw = result["bandwidth"]
    host = bw.get("host", bw)
    if result["settings"]["device"] != "cpu":
        return [
            f"Measured GPU memory bandwidth: **{bw['limit_gbps']:.0f} GB/s** (read + write, "
            f"{bw.get('method')}); host: {host['read_gbps']:.1f} GB/s read."
        ]
    md = []
    if bw.get("sessions"):
        md.append(
            f"This run was resumed after its process was killed: {len(bw['sessions'])} "
            "sessions; bandwidth and sgemm below are the best of the sessions' readings ("
            + "; ".join(
                f"{x['read_gbps']:.1f} GB/s, {x['matmul_gflops']:.0f} GFLOP/s"
                for x in bw["sessions"]
            )
            + ")."
        )
    md.append(
        f"Measured memory bandwidth: **{bw['read_gbps']:.1f} GB/s read** (threaded sum), "
        f"{bw['gemv_gbps']:.1f} GB/s matrix-vector, {bw['copy_gbps']:.1f} GB/s copy (read "
        f"+ write); sgemm {bw['matmul_gflops']:.0f} GFLOP/s."
    )
    return md


def _targets(result: dict[str, Any]) -> list[str]:
    if not result.get("targets"):
        return []
    rows = []
    for t in result["targets"]:
        val = t["value"]
        goal = ("≥ " if t["higher_is_better"] else "< ") + (
            f"{t['goal']:.0%}" if not t["higher_is_better"] else f"{t['goal']}x"
        )
        shown = (
            "-" if val is None else (f"{val:.1%}" if not t["higher_is_better"] else f"{val:.2f}x")
        )
        verdict = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
        by = t.get("ratio_to_goal")
        rows.append(
            [
                t["target"],
                goal,
                shown,
                verdict + (f" ({by:.2f}x of goal)" if by else ""),
                t["note"],
            ]
        )
    return ["\n## Targets\n", _table(["target", "goal", "measured", "verdict", "note"], rows)]


def _size_section(result: dict[str, Any], size: str) -> list[str]:
    runs = headline_runs(result, size)
    if not runs:
        return []
    mi = result["models"].get(size, {})
    md = [
        f"\n## {size} (+ {mi.get('encoder_size')} DPR): headline workload\n\n"
        "Latency per call (one question), throughput, memory and agreement with the "
        "reference (same questions, own retrieval per system).",
        "\n" + _headline_table(runs, mi),
    ]
    md += _agreement_details(runs)
    md.append("\nStage breakdown (median ms per call) and the decode step:\n")
    md.append(_stage_table(runs))
    md += _decode_detail(runs)
    return md


def _headline_table(runs: list[dict[str, Any]], mi: dict[str, Any]) -> str:
    rows = []
    for r in runs:
        st, ag = r["stats"], r.get("agreement") or {}
        load = mi.get("load_rss_mib", {}).get(r["system"], {})
        rows.append(
            [
                r["system"],
                _ms(st["p50"]),
                _ms(st["p90"]),
                _ms(st["p99"]),
                f"{st['tokens_per_s']:.1f}",
                _x(r.get("speedup_vs_reference")),
                _ms(st["generator_p50"]),
                _x(r.get("generator_speedup_vs_reference")),
                f"{(load.get('resident_mib') or load.get('rss_increase') or 0):.0f}",
                f"{(st.get('peak_rss_delta_mib') or 0):.0f}",
                _pct(ag.get("identical_sequences")) if ag else "baseline",
                _pct(ag.get("token_agreement")) if ag else "-",
                _pct(ag.get("same_docs")) if ag else "-",
            ]
        )
    head = ["system", "p50 ms", "p90 ms", "p99 ms", "tok/s", "vs ref", "generator ms"]
    head += ["gen vs ref", "resident MiB", "call peak +MiB", "identical seqs", "token agr."]
    return _table([*head, "same docs"], rows)


def _agreement_details(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in runs:
        bits = []
        same = r.get("agreement_vs_optimum_longest")
        if same is not None:
            bits.append(
                f"identical to optimum-longest (same tensors, ONNX Runtime) on "
                f"{_pct(same['identical_sequences'])} of questions"
            )
        divs = (r.get("agreement") or {}).get("divergences") or []
        if divs:
            shown = ", ".join(_divergence(d) for d in divs[:6])
            bits.append(f"{len(divs)} question(s) differ from the reference: first at {shown}")
        if bits:
            lines.append(f"- `{r['system']}`: " + "; ".join(bits) + ".")
    if not lines:
        return []
    ref_ag = next((r.get("agreement") for r in runs if r.get("agreement")), {}) or {}
    med = ref_ag.get("base_margin_median")
    return [
        "\nAgreement details (margin = the reference's best minus second-best marginal "
        "log-prob at the first differing step; near 0 means a float near-tie"
        + (f"; the reference's median margin over all steps is {med:.2g}" if med else "")
        + "):\n",
        *lines,
    ]


def _divergence(d: dict[str, Any]) -> str:
    margin = d.get("base_margin_at_diff")
    return (
        f"step {d['first_diff_step']}"
        + ("" if d["same_docs"] else " (other docs)")
        + (f" margin {margin:.2g}" if margin is not None else "")
    )


def _stage_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        st = r["stats"]
        rows.append(
            [r["system"]]
            + [_ms(st["stages"].get(k)) for k, _ in STAGE_ORDER]
            + [
                _ms(other_seconds(r)),
                _f2(st.get("step_ms")),
                _f2(st.get("step_ort_ms")),
                _f2(st.get("step_overhead_ms")),
                _pct(st.get("overhead_fraction")),
            ]
        )
    extra = ["other", "step ms", "model ms/step", "outside ms/step", "outside %"]
    return _table(["system"] + [lab for _, lab in STAGE_ORDER] + extra, rows)


def _decode_detail(runs: list[dict[str, Any]]) -> list[str]:
    detail = [r for r in runs if r["system"].startswith("ragrt-")]
    if not detail:
        return []
    keys = ("decode_feeds", "decode_select", "decode_search", "decode_first_step")
    rows = [
        [r["system"]] + [_ms(r["stats"]["stages"].get(k)) for k in (*keys, "decode_ort_first")]
        for r in detail
    ]
    return [
        "\nragrt's time outside ONNX Runtime in the decode loop, split (median ms per "
        "call): `feeds` = inside the decoder-step object but outside `session.run` "
        "(building feeds, first-step expansion, dtype casts); `select` = row selection; "
        "`search` = marginalization, logits processors, argmax and the Python loop.\n",
        _table(["system", "feeds", "select", "search", "first step", "ORT first step"], rows),
    ]


SWEEPS = (
    ("batch", "batch size"),
    ("n_docs", "n_docs"),
    ("num_beams", "num_beams"),
    ("new_tokens", "new tokens"),
)


def _sweeps(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    sweep_size = (s.get("sweep_sizes") or s["sizes"][:1])[0]
    rank = {n: i for i, n in enumerate(SYSTEM_ORDER)}
    md = []
    for key, label in SWEEPS:
        rs = group_runs(result, sweep_size, key)
        if not rs:
            continue
        md.append(f"\n## Sweep: {label} ({sweep_size}; other settings as the headline)\n")
        rows = []
        for r in sorted(rs, key=lambda r: (r["workload"][key], rank.get(r["system"], 99))):
            st, ag = r["stats"], r.get("agreement") or {}
            rows.append(
                [
                    str(r["workload"][key]),
                    r["system"],
                    _ms(st["p50"]),
                    _ms(st["p90"]),
                    f"{st['questions_per_s']:.2f}",
                    f"{st['tokens_per_s']:.1f}",
                    _x(r.get("speedup_vs_reference")),
                    _f2(st.get("step_ms")),
                    _pct(st.get("overhead_fraction")),
                    (f"{ag['baseline']}: " + _pct(ag.get("identical_sequences"))) if ag else "-",
                ]
            )
        head = [label, "system", "p50 ms", "p90 ms", "questions/s", "tok/s", "vs ref"]
        md.append(_table([*head, "step ms", "outside %", "identical seqs"], rows))
    return md


def _roofline(result: dict[str, Any]) -> list[str]:
    pts = result.get("roofline") or []
    if not pts:
        return []
    rows = []
    for p in pts:
        w, b = p["workload"], p["bytes"]
        rows.append(
            [
                p["size"],
                p["system"],
                f"b{w['batch']} d{w['n_docs']} k{w['num_beams']} t{w['new_tokens']}",
                str(p["rows"]),
                str(p["context_len"]),
                f"{b['weights'] / 1e6:.0f}",
                f"{(b['self_kv'] + b['cross_kv']) / 1e6:.0f}",
                f"{b['total'] / 1e6:.0f}",
                f"{p['floor_ms']:.2f}",
                f"{p['ort_step_ms']:.2f}",
                f"{p['step_ms']:.2f}",
                _pct(p["ort_fraction_of_limit"]),
                _pct(p["step_fraction_of_limit"]),
            ]
        )
    head = ["size", "system", "workload", "rows", "ctx len", "weights MB", "KV MB", "total MB"]
    head += ["floor ms", "ORT step ms", "whole step ms", "ORT % of limit", "whole % of limit"]
    return [
        f"\n## Roofline of the decode step (limit {result['bandwidth']['limit_gbps']:.1f} GB/s "
        "read)\n\n"
        "Bytes one decoder-with-past step must read (weights it multiplies with, the "
        "self-attention cache read and copied, the cross-attention cache, logits "
        "written), the time that takes at the measured bandwidth (floor), and the "
        "measured step: inside ONNX Runtime, and whole (with the loop around it).",
        "\n" + _table(head, rows),
    ]


def _floors(result: dict[str, Any]) -> list[str]:
    fl = result.get("floors") or []
    if not fl:
        return []
    rows = []
    for f in fl:
        g = f["generator_floor"]
        ragged = f.get("max_speedup_ragged_vs_reference")
        rows.append(
            [
                f["size"],
                f["system"],
                str(f["batch"]),
                str(f["context_len"]),
                _ms(f["fixed_s"]),
                _ms(g["encoder_s"]),
                _ms(g["first_step_s"]),
                _ms(g["steps_s"]) + f" ({g.get('step_bound', '')})",
                _ms(f["floor_s"]),
                _ms(f["measured_s"]),
                _pct(f["fraction_of_floor"]),
                _x(f.get("max_speedup_vs_reference"))
                + (f" ({_x(ragged)} ragged)" if ragged else ""),
                f"{f['ceiling_questions_per_s']:.2f} / {f['measured_questions_per_s']:.2f}",
                _x(f.get("ideal_gain_vs_headline_batch")),
            ]
        )
    head = ["size", "system", "batch", "ctx len", "qenc+search+ctx ms", "encoder floor ms"]
    head += ["first step floor ms", "later steps floor ms", "floor ms", "measured p50 ms"]
    head += ["floor / measured", "max speedup vs ref", "questions/s ceiling / measured"]
    return [FLOORS_INTRO, _table([*head, "ideal gain vs batch 1"], rows)]


def _f2(x: float | None) -> str:
    return f"{x:.2f}" if x else "-"


FLOORS_INTRO = (
    "\n## Physical floor (what this machine allows)\n\n"
    "Measured question encoding + search + contexts, plus the generator at this "
    "machine's limits: the encoder and the first decode step (cross-attention K/V "
    "projections) at the measured sgemm rate; every later step at the larger of its "
    "bytes / measured bandwidth and its arithmetic / sgemm rate; with the context "
    "length ragrt ran (padded to the longest context). 'max speedup' = reference p50 / "
    "floor: the most any implementation of the same computation could reach here; "
    "going below the floor takes less work (unpadded contexts, smaller weights), not "
    "faster code. 'ideal gain' = throughput ceiling at this batch over the ceiling at "
    "batch 1. fp32 only (the roof is the fp32 sgemm rate); 'ragged' = the same with "
    "every context encoded at its own length.\n"
)

HOW_MEASURED = (
    "\n## How this was measured\n\n"
    "- One process; every system loaded once per size; systems interleaved per call in a "
    "rotating order; warm-up calls excluded. Latency = one `generate` call for a batch of "
    "questions, from question strings to token ids (question encoding, FAISS search, "
    "context building, generator).\n"
    "- `reference`: transformers `RagTokenForGeneration` (PyTorch), contexts from "
    "`RagRetriever.postprocess_docs` padded to 300, doc scores `q . d` in torch. "
    "`optimum`: the same pipeline with optimum's `ORTModelForSeq2SeqLM` (ragrt's own fp32 "
    "graphs) as the generator; `optimum-longest` pads contexts to the longest instead of "
    "300 (the exact tensors ragrt feeds its generator). `ragrt-*`: `RagEngine.generate`.\n"
    "- Models: published DPR (BERT-base) and BART configurations, BART's 50265-token "
    "vocabulary included, with seeded random weights (generator init std 0.2, so that "
    "answers depend on the question); generator tokenizer: a byte-level BPE trained "
    "offline (~5.6k tokens). Index: the bundled stdlib-docs corpus re-cut into 100-word "
    "passages as DPR's Wikipedia (351 passages, flat index), so search costs far less "
    "than on a 21M-passage index.\n"
    "- Agreement: generated token ids per question against the reference's (first "
    "repeat; outputs are checked to be identical across repeats), retrieved doc ids, and "
    "the largest difference in sequence score.\n"
    "- Memory: 'resident' = RSS added by loading the system and running one call "
    "(mmapped weights are touched then); 'call peak +' = `VmHWM` during a call (reset "
    "through `/proc/self/clear_refs` before it) minus RSS before it: the transient "
    "working memory of the call."
)


def write_summary(
    result: dict[str, Any], out: Path, stem: str, paths: dict[str, Path] | None = None
) -> Path:
    text = summary_markdown(result, paths)
    notes = out / f"{stem}_notes.md"
    if notes.exists():
        text += "\n" + notes.read_text()
    name = "SUMMARY.md" if stem == f"bench_{result['settings']['device']}" else f"{stem}_SUMMARY.md"
    p = out / name
    p.write_text(text)
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__)
        return 2
    src = Path(args[0])
    result = json.loads(src.read_text())
    stem = src.stem
    paths = {"json": src}
    paths.update(plots(result, src.parent, stem))
    print(write_summary(result, src.parent, stem, paths))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
