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


def _order(names: list[str]) -> list[str]:
    known = [n for n in SYSTEM_ORDER if n in names]
    return known + sorted(n for n in names if n not in known)


def _runs(result: dict[str, Any], size: str, group: str) -> list[dict[str, Any]]:
    return [r for r in result["runs"] if r["size"] == size and group in r["groups"]]


def _headline(result: dict[str, Any], size: str) -> list[dict[str, Any]]:
    runs = {r["system"]: r for r in _runs(result, size, "headline")}
    return [runs[n] for n in _order(list(runs))]


def _other_s(r: dict[str, Any]) -> float:
    st = r["stats"]["stages"]
    known = sum(st.get(k, 0.0) for k, _ in STAGE_ORDER)
    return max(0.0, r["stats"]["p50"] - known)


# -- plots ---------------------------------------------------------------------------------------
def plots(result: dict[str, Any], out: Path, stem: str) -> dict[str, Path]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    sizes = result["settings"]["sizes"]
    where = f"{result['machine']['cpu']} ({result['machine']['usable_cpus']} cores)"
    if result["settings"]["device"] != "cpu":
        gpus = result["machine"].get("gpu", {}).get("gpus") or [{}]
        where = gpus[0].get("name", "GPU")

    # latency by system (headline workload)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 3.8), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        runs = _headline(result, size)
        names = [r["system"] for r in runs]
        p50 = [r["stats"]["p50"] for r in runs]
        p90 = [r["stats"]["p90"] for r in runs]
        p99 = [r["stats"]["p99"] for r in runs]
        y = range(len(runs))
        ax.barh(y, p50, color=["#888" if n in ("reference",) else "#4a7" for n in names])
        ax.errorbar(p90, y, fmt="|", color="k", ms=10, label="p90")
        ax.errorbar(p99, y, fmt="x", color="r", ms=5, label="p99")
        for i, r in enumerate(runs):
            sp = r.get("speedup_vs_reference")
            if sp:
                ax.text(p50[i] / 2, i, f"{sp:.2f}x", va="center", ha="center", fontsize=8)
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlabel("latency per question batch (s), bar = p50")
        w = result["settings"]["headline"]
        ax.set_title(
            f"{size}: batch {w['batch']}, {w['n_docs']} docs, {w['new_tokens']} tokens", fontsize=9
        )
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"RAG-Token end-to-end latency ({where})", fontsize=10)
    fig.tight_layout()
    paths["plot_latency"] = out / f"{stem}_latency.png"
    fig.savefig(paths["plot_latency"], dpi=110)
    plt.close(fig)

    # throughput vs batch
    sweep_size = (result["settings"].get("sweep_sizes") or sizes[:1])[0]
    bruns = _runs(result, sweep_size, "batch")
    if bruns:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for name in _order(list({r["system"] for r in bruns})):
            rs = sorted(
                (r for r in bruns if r["system"] == name), key=lambda r: r["workload"]["batch"]
            )
            b = [r["workload"]["batch"] for r in rs]
            axes[0].plot(b, [r["stats"]["questions_per_s"] for r in rs], "o-", label=name)
            axes[1].plot(b, [r["stats"]["tokens_per_s"] for r in rs], "o-", label=name)
        for ax, lab in zip(axes, ("questions / s", "generated tokens / s")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size (questions per call)")
            ax.set_ylabel(lab)
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Throughput vs batch, {sweep_size} ({where})", fontsize=10)
        fig.tight_layout()
        paths["plot_throughput"] = out / f"{stem}_throughput.png"
        fig.savefig(paths["plot_throughput"], dpi=110)
        plt.close(fig)

    # stage breakdown
    fig, axes = plt.subplots(len(sizes), 1, figsize=(9, 2.6 * len(sizes) + 0.6), squeeze=False)
    colors = ["#c94", "#dc5", "#9c6", "#59c", "#36a", "#c55", "#aaa"]
    for ax, size in zip(axes[:, 0], sizes):
        runs = _headline(result, size)
        y = list(range(len(runs)))
        left = [0.0] * len(runs)
        for (key, label), col in zip(STAGE_ORDER + [("other", "other")], colors):
            vals = [
                (_other_s(r) if key == "other" else r["stats"]["stages"].get(key, 0.0))
                for r in runs
            ]
            ax.barh(y, vals, left=left, color=col, label=label)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_yticks(y, [r["system"] for r in runs])
        ax.invert_yaxis()
        ax.set_xlabel("seconds (median per call)")
        ax.set_title(f"{size}: stage breakdown, headline workload", fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths["plot_stages"] = out / f"{stem}_stages.png"
    fig.savefig(paths["plot_stages"], dpi=110)
    plt.close(fig)

    # roofline
    pts = result.get("roofline") or []
    if pts:
        fig, ax = plt.subplots(figsize=(7.5, 5))
        bw = result["bandwidth"]["limit_gbps"]
        xs = [p["bytes"]["total"] / 1e6 for p in pts]
        lo, hi = min(xs) * 0.7, max(xs) * 1.4
        ax.plot([lo, hi], [lo / bw, hi / bw], "k-", label=f"memory limit ({bw:.1f} GB/s)")
        markers = {"fp32": "o", "int8": "s", "fp16": "^"}
        for size_i, size in enumerate(sizes):
            for prec, m in markers.items():
                sel = [p for p in pts if p["size"] == size and p["system"] == f"ragrt-{prec}"]
                if not sel:
                    continue
                ax.scatter(
                    [p["bytes"]["total"] / 1e6 for p in sel],
                    [p["ort_step_ms"] for p in sel],
                    marker=m,
                    color=f"C{size_i}",
                    label=f"{size} {prec}: ORT step",
                )
                ax.scatter(
                    [p["bytes"]["total"] / 1e6 for p in sel],
                    [p["step_ms"] for p in sel],
                    marker=m,
                    facecolors="none",
                    edgecolors=f"C{size_i}",
                    label=f"{size} {prec}: whole step",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("bytes read per decode step (MB): weights + KV cache + logits")
        ax.set_ylabel("time per decode step (ms)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax.set_title(f"Decode-step roofline ({where})", fontsize=10)
        fig.tight_layout()
        paths["plot_roofline"] = out / f"{stem}_roofline.png"
        fig.savefig(paths["plot_roofline"], dpi=110)
        plt.close(fig)

    # sweeps
    axes_keys = [("n_docs", "n_docs"), ("num_beams", "num_beams"), ("new_tokens", "new tokens")]
    have = [(k, lab) for k, lab in axes_keys if _runs(result, sweep_size, k)]
    if have:
        fig, axes = plt.subplots(1, len(have), figsize=(4.2 * len(have), 3.6), squeeze=False)
        for ax, (key, lab) in zip(axes[0], have):
            rs_all = _runs(result, sweep_size, key)
            for name in _order(list({r["system"] for r in rs_all})):
                rs = sorted(
                    (r for r in rs_all if r["system"] == name), key=lambda r: r["workload"][key]
                )
                ax.plot(
                    [r["workload"][key] for r in rs],
                    [r["stats"]["p50"] * 1000 for r in rs],
                    "o-",
                    label=name,
                )
            ax.set_xlabel(lab)
            ax.set_ylabel("p50 latency (ms)")
            ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        fig.suptitle(f"Sweeps around the headline workload, {sweep_size}, batch 1", fontsize=10)
        fig.tight_layout()
        paths["plot_sweeps"] = out / f"{stem}_sweeps.png"
        fig.savefig(paths["plot_sweeps"], dpi=110)
        plt.close(fig)
    return paths


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
    s = result["settings"]
    m = result["machine"]
    v = result["versions"]
    ld = result["load"]
    head = s["headline"]
    md = []
    title = "ragrt benchmark" + (" (smoke run)" if s.get("smoke") else "")
    md.append(f"# {title}: {s['device'].upper()}, {result['created']}")
    where = f"{m['cpu']}, {m['usable_cpus']} usable cores, {m['mem_total_gib']} GiB RAM"
    if s["device"] != "cpu":
        where += f"; GPU: {m.get('gpu')}"
    md.append(f"\n**Machine**: {where} ({m['os']}, Python {m['python']}).")
    bw = result["bandwidth"]
    host = bw.get("host", bw)
    if s["device"] != "cpu":
        md.append(
            f"Measured GPU memory bandwidth: **{bw['limit_gbps']:.0f} GB/s** (read + write, "
            f"{bw.get('method')}); host: {host['read_gbps']:.1f} GB/s read."
        )
    else:
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
    others = ld["start"].get("others") or []
    md.append(
        f"Load average at start {ld['start']['loadavg_1_5_15']}, at end "
        f"{ld.get('end', {}).get('loadavg_1_5_15')}; {len(others)} other busy process(es) at "
        "start" + (": " + "; ".join(o["cmd"][:60] for o in others) if others else "") + "."
    )
    vs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    md.append(f"\n**Versions**: {vs}.")
    md.append(
        f"\n**Settings**: sizes {', '.join(s['sizes'])} (question encoder {s['encoder_size']}); "
        f"headline workload batch {head['batch']}, n_docs {head['n_docs']}, beams "
        f"{head['num_beams']}, {head['new_tokens']} new tokens (min = max); {s['repeats']} "
        f"repeats x {s['questions']} questions, interleaved; {s['threads']} threads for every "
        "system (ONNX Runtime intra-op and torch)."
    )

    if result.get("targets"):
        md.append("\n## Targets\n")
        rows = []
        for t in result["targets"]:
            val = t["value"]
            goal = ("≥ " if t["higher_is_better"] else "< ") + (
                f"{t['goal']:.0%}" if not t["higher_is_better"] else f"{t['goal']}x"
            )
            shown = (
                "-"
                if val is None
                else (f"{val:.1%}" if not t["higher_is_better"] else f"{val:.2f}x")
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
        md.append(_table(["target", "goal", "measured", "verdict", "note"], rows))

    for size in s["sizes"]:
        runs = _headline(result, size)
        if not runs:
            continue
        mi = result["models"].get(size, {})
        md.append(
            f"\n## {size} (+ {mi.get('encoder_size')} DPR): headline workload\n\n"
            "Latency per call (one question), throughput, memory and agreement with the "
            "reference (same questions, own retrieval per system)."
        )
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
        md.append(
            "\n"
            + _table(
                [
                    "system",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "tok/s",
                    "vs ref",
                    "generator ms",
                    "gen vs ref",
                    "resident MiB",
                    "call peak +MiB",
                    "identical seqs",
                    "token agr.",
                    "same docs",
                ],
                rows,
            )
        )
        lines = []
        for r in runs:
            ag = r.get("agreement") or {}
            divs = ag.get("divergences") or []
            same = r.get("agreement_vs_optimum_longest")
            bits = []
            if same is not None:
                bits.append(
                    f"identical to optimum-longest (same tensors, ONNX Runtime) on "
                    f"{_pct(same['identical_sequences'])} of questions"
                )
            if divs:
                shown = ", ".join(
                    f"step {d['first_diff_step']}"
                    + ("" if d["same_docs"] else " (other docs)")
                    + (
                        f" margin {d['base_margin_at_diff']:.2g}"
                        if d.get("base_margin_at_diff") is not None
                        else ""
                    )
                    for d in divs[:6]
                )
                bits.append(f"{len(divs)} question(s) differ from the reference: first at {shown}")
            if bits:
                lines.append(f"- `{r['system']}`: " + "; ".join(bits) + ".")
        if lines:
            ref_ag = next((r.get("agreement") for r in runs if r.get("agreement")), {}) or {}
            med = ref_ag.get("base_margin_median")
            md.append(
                "\nAgreement details (margin = the reference's best minus second-best marginal "
                "log-prob at the first differing step; near 0 means a float near-tie"
                + (f"; the reference's median margin over all steps is {med:.2g}" if med else "")
                + "):\n"
            )
            md.extend(lines)
        md.append("\nStage breakdown (median ms per call) and the decode step:\n")
        rows = []
        for r in runs:
            st = r["stats"]
            sg = st["stages"]
            rows.append(
                [r["system"]]
                + [_ms(sg.get(k)) for k, _ in STAGE_ORDER]
                + [
                    _ms(_other_s(r)),
                    f"{st['step_ms']:.2f}" if st.get("step_ms") else "-",
                    f"{st['step_ort_ms']:.2f}" if st.get("step_ort_ms") else "-",
                    f"{st['step_overhead_ms']:.2f}" if st.get("step_overhead_ms") else "-",
                    _pct(st.get("overhead_fraction")),
                ]
            )
        md.append(
            _table(
                ["system"]
                + [lab for _, lab in STAGE_ORDER]
                + ["other", "step ms", "model ms/step", "outside ms/step", "outside %"],
                rows,
            )
        )
        detail = [r for r in runs if r["system"].startswith("ragrt-")]
        if detail:
            md.append(
                "\nragrt's time outside ONNX Runtime in the decode loop, split (median ms per "
                "call): `feeds` = inside the decoder-step object but outside `session.run` "
                "(building feeds, first-step expansion, dtype casts); `select` = row selection; "
                "`search` = marginalization, logits processors, argmax and the Python loop.\n"
            )
            md.append(
                _table(
                    ["system", "feeds", "select", "search", "first step", "ORT first step"],
                    [
                        [
                            r["system"],
                            _ms(r["stats"]["stages"].get("decode_feeds")),
                            _ms(r["stats"]["stages"].get("decode_select")),
                            _ms(r["stats"]["stages"].get("decode_search")),
                            _ms(r["stats"]["stages"].get("decode_first_step")),
                            _ms(r["stats"]["stages"].get("decode_ort_first")),
                        ]
                        for r in detail
                    ],
                )
            )

    sweep_size = (s.get("sweep_sizes") or s["sizes"][:1])[0]
    for group, key, label in (
        ("batch", "batch", "batch size"),
        ("n_docs", "n_docs", "n_docs"),
        ("num_beams", "num_beams", "num_beams"),
        ("new_tokens", "new_tokens", "new tokens"),
    ):
        rs = _runs(result, sweep_size, group)
        if not rs:
            continue
        md.append(f"\n## Sweep: {label} ({sweep_size}; other settings as the headline)\n")
        rows = []
        rank = {n: i for i, n in enumerate(SYSTEM_ORDER)}
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
                    f"{st['step_ms']:.2f}" if st.get("step_ms") else "-",
                    _pct(st.get("overhead_fraction")),
                    (f"{ag['baseline']}: " + _pct(ag.get("identical_sequences"))) if ag else "-",
                ]
            )
        md.append(
            _table(
                [
                    label,
                    "system",
                    "p50 ms",
                    "p90 ms",
                    "questions/s",
                    "tok/s",
                    "vs ref",
                    "step ms",
                    "outside %",
                    "identical seqs",
                ],
                rows,
            )
        )

    pts = result.get("roofline") or []
    if pts:
        md.append(
            f"\n## Roofline of the decode step (limit {bw['limit_gbps']:.1f} GB/s read)\n\n"
            "Bytes one decoder-with-past step must read (weights it multiplies with, the "
            "self-attention cache read and copied, the cross-attention cache, logits "
            "written), the time that takes at the measured bandwidth (floor), and the "
            "measured step: inside ONNX Runtime, and whole (with the loop around it)."
        )
        rows = []
        for p in pts:
            w = p["workload"]
            b = p["bytes"]
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
        md.append(
            "\n"
            + _table(
                [
                    "size",
                    "system",
                    "workload",
                    "rows",
                    "ctx len",
                    "weights MB",
                    "KV MB",
                    "total MB",
                    "floor ms",
                    "ORT step ms",
                    "whole step ms",
                    "ORT % of limit",
                    "whole % of limit",
                ],
                rows,
            )
        )

    fl = result.get("floors") or []
    if fl:
        md.append(
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
        rows = []
        for f in fl:
            g = f["generator_floor"]
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
                    + (
                        f" ({_x(f['max_speedup_ragged_vs_reference'])} ragged)"
                        if f.get("max_speedup_ragged_vs_reference")
                        else ""
                    ),
                    f"{f['ceiling_questions_per_s']:.2f} / {f['measured_questions_per_s']:.2f}",
                    _x(f.get("ideal_gain_vs_headline_batch")),
                ]
            )
        md.append(
            _table(
                [
                    "size",
                    "system",
                    "batch",
                    "ctx len",
                    "qenc+search+ctx ms",
                    "encoder floor ms",
                    "first step floor ms",
                    "later steps floor ms",
                    "floor ms",
                    "measured p50 ms",
                    "floor / measured",
                    "max speedup vs ref",
                    "questions/s ceiling / measured",
                    "ideal gain vs batch 1",
                ],
                rows,
            )
        )

    if paths:
        md.append("\n## Plots\n")
        for k, p in paths.items():
            if k.startswith("plot_"):
                md.append(f"![{k[5:]}]({Path(p).name})")
    md.append(
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
    return "\n".join(md) + "\n"


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
