"""The PNG plots of a ``ragrt bench`` result: latency by system, throughput against the batch
size, the stage breakdown, the decode-step roofline and the sweeps (one function per figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragrt.benchmarks.results_view import (
    STAGE_ORDER,
    group_runs,
    headline_runs,
    other_seconds,
    system_order,
)


def plots(result: dict[str, Any], out: Path, stem: str) -> dict[str, Path]:
    """Write the PNG plots of a result next to its JSON; returns them by name."""
    import matplotlib

    matplotlib.use("Agg")
    where = f"{result['machine']['cpu']} ({result['machine']['usable_cpus']} cores)"
    if result["settings"]["device"] != "cpu":
        gpus = result["machine"].get("gpu", {}).get("gpus") or [{}]
        where = gpus[0].get("name", "GPU")
    paths: dict[str, Path] = {}
    for name, draw in (
        ("latency", _latency),
        ("throughput", _throughput),
        ("stages", _stages),
        ("roofline", _roofline_plot),
        ("sweeps", _sweeps_plot),
    ):
        fig = draw(result, where)
        if fig is None:
            continue
        import matplotlib.pyplot as plt

        paths[f"plot_{name}"] = out / f"{stem}_{name}.png"
        fig.savefig(paths[f"plot_{name}"], dpi=110)
        plt.close(fig)
    return paths


def _sweep_size(result: dict[str, Any]) -> str:
    s = result["settings"]
    return (s.get("sweep_sizes") or s["sizes"][:1])[0]


def _latency(result: dict[str, Any], where: str) -> Any:
    """Latency by system, headline workload, one panel per size."""
    import matplotlib.pyplot as plt

    sizes = result["settings"]["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 3.8), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        runs = headline_runs(result, size)
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
    return fig


def _throughput(result: dict[str, Any], where: str) -> Any:
    """Questions/s and tokens/s against the batch size (None without a batch sweep)."""
    import matplotlib.pyplot as plt

    sweep_size = _sweep_size(result)
    bruns = group_runs(result, sweep_size, "batch")
    if not bruns:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name in system_order(list({r["system"] for r in bruns})):
        rs = sorted((r for r in bruns if r["system"] == name), key=lambda r: r["workload"]["batch"])
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
    return fig


def _stages(result: dict[str, Any], where: str) -> Any:
    """Stacked stage times per system, headline workload, one panel per size."""
    import matplotlib.pyplot as plt

    sizes = result["settings"]["sizes"]
    fig, axes = plt.subplots(len(sizes), 1, figsize=(9, 2.6 * len(sizes) + 0.6), squeeze=False)
    colors = ["#c94", "#dc5", "#9c6", "#59c", "#36a", "#c55", "#aaa"]
    for ax, size in zip(axes[:, 0], sizes):
        runs = headline_runs(result, size)
        y = list(range(len(runs)))
        left = [0.0] * len(runs)
        for (key, label), col in zip(STAGE_ORDER + [("other", "other")], colors):
            vals = [
                (other_seconds(r) if key == "other" else r["stats"]["stages"].get(key, 0.0))
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
    return fig


def _roofline_plot(result: dict[str, Any], where: str) -> Any:
    """Decode-step time against bytes read, with the memory-bandwidth line."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    pts = result.get("roofline") or []
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    bw = result["bandwidth"]["limit_gbps"]
    xs = [p["bytes"]["total"] / 1e6 for p in pts]
    lo, hi = min(xs) * 0.7, max(xs) * 1.4
    ax.plot([lo, hi], [lo / bw, hi / bw], "k-", label=f"memory limit ({bw:.1f} GB/s)")
    markers = {"fp32": "o", "int8": "s", "fp16": "^"}
    for size_i, size in enumerate(result["settings"]["sizes"]):
        for prec, m in markers.items():
            sel = [p for p in pts if p["size"] == size and p["system"] == f"ragrt-{prec}"]
            if not sel:
                continue
            x = [p["bytes"]["total"] / 1e6 for p in sel]
            c = f"C{size_i}"
            ax.scatter(
                x,
                [p["ort_step_ms"] for p in sel],
                marker=m,
                color=c,
                label=f"{size} {prec}: ORT step",
            )
            ax.scatter(
                x,
                [p["step_ms"] for p in sel],
                marker=m,
                facecolors="none",
                edgecolors=c,
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
    return fig


def _sweeps_plot(result: dict[str, Any], where: str) -> Any:
    """p50 latency along the n_docs / num_beams / new_tokens sweeps."""
    import matplotlib.pyplot as plt

    sweep_size = _sweep_size(result)
    axes_keys = [("n_docs", "n_docs"), ("num_beams", "num_beams"), ("new_tokens", "new tokens")]
    have = [(k, lab) for k, lab in axes_keys if group_runs(result, sweep_size, k)]
    if not have:
        return None
    fig, axes = plt.subplots(1, len(have), figsize=(4.2 * len(have), 3.6), squeeze=False)
    for ax, (key, lab) in zip(axes[0], have):
        rs_all = group_runs(result, sweep_size, key)
        for name in system_order(list({r["system"] for r in rs_all})):
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
    return fig
