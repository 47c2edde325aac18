"""``ragrt bench``: ragrt against transformers and optimum, in one process, on the same work.

For each model size, every system is loaded once; then for each workload (batch, n_docs,
num_beams, new tokens) the systems are *interleaved*: every repeat runs each question batch
on every system, in an order rotated per batch, so slow drifts of a shared machine hit all
systems alike. min = max new tokens, so every system emits exactly the same number of tokens.

Recorded per call: latency, stage times (see :mod:`ragrt.benchmarks.systems`), peak RSS
during the call (``VmHWM`` after resetting it through ``/proc/self/clear_refs``), generated
token ids, retrieved doc ids and scores. Derived: p50/p90/p99, tokens/s, questions/s, ratios
against the reference, token agreement, the per-step overhead outside ONNX Runtime, and the
memory roofline of each decode step (:mod:`ragrt.benchmarks.roofline`).

Output (``--out``): ``bench_<device>.json`` (machine, versions, settings, every sample),
PNG plots and ``SUMMARY.md`` (:mod:`ragrt.benchmarks.report`).
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragrt.benchmarks.machine import (
    load_snapshot,
    machine_info,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    versions,
    wait_for_quiet,
)
from ragrt.benchmarks.stats import agreement, percentiles, summarize
from ragrt.benchmarks.systems import STAGES, Answer, Workload
from ragrt.benchmarks.targets import evaluate_targets, floors, rederive, roofline_points
from ragrt.errors import DeviceError, InputError

SCHEMA = "ragrt-bench/1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Questions about the bundled stdlib-docs corpus (answers are not judged: weights are random).
QUESTIONS = [
    "how do I parse command line arguments in python?",
    "what does json.dumps do with sort_keys?",
    "how can I count hashable items with a dictionary subclass?",
    "which function returns the n largest elements of a dataset?",
    "how do I run a command in a subprocess and capture its output?",
    "how do I copy a directory tree recursively?",
    "what is a named tuple and how do I create one?",
    "how do I compile a regular expression pattern?",
    "how do I wrap a long paragraph of text to a given width?",
    "how can I cache the results of an expensive function call?",
    "how do I iterate over the cartesian product of input iterables?",
    "how do I join path components on any operating system?",
    "how do I configure logging to write to a file?",
    "what does dataclasses.field default_factory do?",
    "how do I insert into a sorted list and keep it sorted?",
    "how do I choose a random element from a sequence?",
    "how do I compute the median of a list of numbers?",
    "how do I do exact decimal arithmetic with rounding control?",
    "how do I parse a date string into a datetime object?",
    "how do I read rows of a csv file as dictionaries?",
    "how do I open an sqlite database and run a query?",
    "how do I start a thread and wait for it to finish?",
    "how do I substitute placeholders in a template string?",
    "what is the difference between a deque and a list?",
]

DEFAULT_SYSTEMS_CPU = ("reference", "optimum", "optimum-longest", "ragrt-fp32", "ragrt-int8")
DEFAULT_SYSTEMS_CUDA = ("reference", "optimum", "ragrt-fp32", "ragrt-fp16")
HEADLINE = Workload(batch=1, n_docs=5, num_beams=1, new_tokens=32)


@dataclass
class Settings:
    """Everything a run depends on (stored verbatim in the JSON)."""

    sizes: list[str] = field(default_factory=lambda: ["bart-base", "bart-large"])
    encoder_size: str = "bert-base"
    systems: list[str] | None = None  # default: by device
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16])
    n_docs: list[int] = field(default_factory=lambda: [1, 5, 10])
    num_beams: list[int] = field(default_factory=lambda: [1, 4])
    new_tokens: list[int] = field(default_factory=lambda: [8, 32, 64])
    headline: dict[str, int] = field(default_factory=lambda: HEADLINE.to_dict())
    batch_systems: list[str] | None = None  # default: all systems
    sweep_systems: list[str] | None = None  # default: ragrt systems
    sweep_sizes: list[str] | None = None  # default: the first size
    repeats: int = 3
    questions: int = 8  # question batches per repeat (at batch 1; fewer at larger batches)
    warmup: int = 1
    device: str = "cpu"
    threads: int = 0  # 0 = all cores this process may use
    out: str = str(RESULTS)
    cache: str | None = None
    tag: str = ""
    plots: bool = True
    max_load: float | None = None  # wait until the 1-min load average is below this
    wait_s: float = 0.0
    bandwidth_mib: int = 512
    pause_s: float = 0.05  # untimed pause before each call (threads of the last system idle)
    resume: bool = False  # continue a killed run with the same settings
    smoke: bool = False

    @classmethod
    def smoke_settings(cls, out: str) -> Settings:
        """Smallest fixture, one repeat, every system and every kind of sweep (seconds)."""
        return cls(
            sizes=["bart-tiny"],
            encoder_size="bert-tiny",
            batch_sizes=[1, 2],
            n_docs=[1, 2],
            num_beams=[1, 2],
            new_tokens=[4],
            headline={"batch": 1, "n_docs": 2, "num_beams": 1, "new_tokens": 4},
            repeats=1,
            questions=2,
            warmup=0,
            out=out,
            bandwidth_mib=32,
            smoke=True,
        )


# -- plan ------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One workload on one size, run on ``systems``."""

    size: str
    workload: Workload
    systems: list[str]
    groups: list[str]  # headline | batch | n_docs | num_beams | new_tokens


def build_plan(s: Settings, systems: list[str]) -> list[Entry]:
    head = Workload(**s.headline)
    ragrt_sys = [x for x in systems if x.startswith("ragrt-")]
    batch_sys = [x for x in (s.batch_systems or systems) if x in systems]
    sweep_sys = [x for x in (s.sweep_systems or ragrt_sys) if x in systems]
    entries: dict[tuple[str, Workload], Entry] = {}

    def add(size: str, w: Workload, syss: list[str], group: str) -> None:
        key = (size, w)
        if key in entries:
            e = entries[key]
            e.systems += [x for x in syss if x not in e.systems]
            e.groups.append(group)
        else:
            entries[key] = Entry(size, w, list(syss), [group])

    for size in s.sizes:
        add(size, head, systems, "headline")
    for size in s.sweep_sizes or s.sizes[:1]:
        for b in s.batch_sizes:
            add(size, Workload(b, head.n_docs, head.num_beams, head.new_tokens), batch_sys, "batch")
        for n in s.n_docs:
            add(size, Workload(head.batch, n, head.num_beams, head.new_tokens), sweep_sys, "n_docs")
        for k in s.num_beams:
            add(size, Workload(head.batch, head.n_docs, k, head.new_tokens), sweep_sys, "num_beams")
        for t in s.new_tokens:
            add(size, Workload(head.batch, head.n_docs, head.num_beams, t), sweep_sys, "new_tokens")
    order = {size: i for i, size in enumerate(s.sizes)}
    return sorted(entries.values(), key=lambda e: order.get(e.size, 99))


def question_batches(w: Workload, per_repeat: int) -> list[list[str]]:
    calls = max(1, per_repeat // w.batch)
    out, k = [], 0
    for _ in range(calls):
        out.append([QUESTIONS[(k + j) % len(QUESTIONS)] for j in range(w.batch)])
        k += w.batch
    return out


# -- running ---------------------------------------------------------------------------------------
def check_device(device: str, systems: list[str]) -> None:
    if device == "cpu":
        bad = [x for x in systems if x == "ragrt-fp16"]
        if bad:
            raise InputError("ragrt-fp16 is a GPU variant: run it with --device cuda")
        return
    from ragrt.runtime.sessions import available_providers

    have = available_providers()
    if "CUDAExecutionProvider" not in have:
        raise DeviceError(
            f"--device {device} needs onnxruntime-gpu with the CUDA provider (available: "
            f"{', '.join(have)}); switch to the `gpu` extra on a machine with an NVIDIA GPU, "
            "or run --device cpu"
        )
    if any(x == "ragrt-int8" for x in systems):
        raise InputError("int8 (MatMulInteger) has no CUDA kernel: use ragrt-fp16 on GPUs")


def _ragrt_device(device: str, tensorrt: bool) -> str:
    return "tensorrt" if (device != "cpu" and tensorrt) else device


def run_call(system: Any, questions: list[str], w: Workload) -> tuple[Answer, dict[str, Any]]:
    before = rss_mib()
    can_reset = reset_peak_rss()
    ans = system.run(questions, w)
    peak = peak_rss_mib() if can_reset else None
    sample = {
        "latency_s": ans.latency_s,
        "stages": ans.stages,
        "detail": ans.detail,
        "peak_rss_mib": peak,
        "peak_rss_delta_mib": (peak - before) if (peak is not None and before) else None,
    }
    return ans, sample


class Bench:
    def __init__(self, s: Settings, log=print) -> None:
        self.s = s
        self.log = log
        self.systems = list(
            s.systems or (DEFAULT_SYSTEMS_CPU if s.device == "cpu" else DEFAULT_SYSTEMS_CUDA)
        )
        self.tensorrt = False

    def run(self) -> dict[str, Any]:
        s = self.s
        check_device(s.device, self.systems)
        import torch

        from ragrt.benchmarks import roofline
        from ragrt.benchmarks.models import prepare
        from ragrt.runtime.sessions import cpu_threads

        threads = s.threads or cpu_threads()
        torch.set_num_threads(threads)
        for name in ("transformers", "optimum"):
            import logging

            logging.getLogger(name).setLevel(logging.ERROR)
        start = (
            wait_for_quiet(s.max_load, s.wait_s, self.log)
            if s.max_load is not None
            else load_snapshot()
        )
        if start["others"] or start["loadavg_1_5_15"][0] >= 0.5:
            self.log(
                f"note: load average {start['loadavg_1_5_15']} and {len(start['others'])} other "
                "busy process(es): timings will be noisy (recorded in the JSON)"
            )
        result: dict[str, Any] = {
            "schema": SCHEMA,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(s.device),
            "versions": versions(),
            "settings": asdict(s) | {"systems": self.systems, "threads": threads},
            "load": {"start": start, "during": []},
            "models": {},
            "runs": [],
        }
        self.log(f"measuring memory bandwidth ({s.bandwidth_mib} MiB arrays) ...")
        bw = roofline.measure_bandwidth(s.bandwidth_mib, threads=threads)
        bw["matmul_gflops"] = roofline.measure_matmul_gflops(512 if s.smoke else 1024)
        if s.device != "cpu":  # the decode step streams GPU memory: that is its roofline
            bw["host"] = dict(bw)
            bw.update(roofline.measure_gpu_bandwidth())
        result["bandwidth"] = bw
        self.log(
            f"  read {bw['read_gbps']:.1f} GB/s, gemv {bw['gemv_gbps']:.1f} GB/s, copy "
            f"{bw['copy_gbps']:.1f} GB/s (r+w); sgemm {bw['matmul_gflops']:.0f} GFLOP/s"
        )
        precisions = tuple(
            sorted({x.split("-", 1)[1] for x in self.systems if x.startswith("ragrt-")} | {"fp32"})
        )
        plan = build_plan(s, self.systems)
        done: set[tuple[str, str]] = set()
        if s.resume:
            result, done = self._resume(result)
        for size in s.sizes:
            entries = [
                e
                for e in plan
                if e.size == size and (size, json.dumps(e.workload.to_dict())) not in done
            ]
            if not entries:
                continue
            enc = "bert-tiny" if size == "bart-tiny" else s.encoder_size
            bm = prepare(enc, size, precisions, cache=Path(s.cache) if s.cache else None)
            result["models"][size] = self._model_info(bm, precisions)
            needed = list(dict.fromkeys(x for e in entries for x in e.systems))
            loaded = self._load_systems(bm, needed, threads, result["models"][size])
            try:
                for e in entries:
                    result["runs"].extend(self._run_entry(e, loaded, bm))
                    result["load"]["during"].append(
                        {"size": size, "workload": e.workload.to_dict()} | load_snapshot()
                    )
                    self._checkpoint(result, bm)
            finally:
                for sys_ in loaded.values():
                    sys_.close()
                loaded.clear()
                gc.collect()
        result["load"]["end"] = load_snapshot()
        rederive(result)
        return result

    def _partial_path(self) -> Path:
        from ragrt.benchmarks.models import DEFAULT_CACHE

        return Path(self.s.cache or DEFAULT_CACHE) / f"partial_{self.s.device}.json"

    def _checkpoint(self, result: dict[str, Any], bm: Any) -> None:
        """Everything measured so far, next to the model cache (survives a killed run)."""
        try:
            p = self._partial_path()
            p.write_text(json.dumps(result, default=_json_default) + "\n")
        except OSError:
            pass

    def _resume(self, result: dict[str, Any]) -> tuple[dict[str, Any], set[tuple[str, str]]]:
        """Continue a killed run with the same settings: keep its finished workloads."""
        p = self._partial_path()
        try:
            old = json.loads(p.read_text())
        except (OSError, ValueError):
            self.log(f"--resume: no partial results at {p}; starting afresh")
            return result, set()
        ignore = {"out", "max_load", "wait_s", "resume", "plots", "tag"}

        def key(st: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in st.items() if k not in ignore}

        if key(old.get("settings", {})) != key(result["settings"]):
            self.log(f"--resume: {p} was measured with other settings; starting afresh")
            return result, set()
        old.setdefault("resumed", []).append(
            {"load": result["load"]["start"], "bandwidth": result["bandwidth"]}
        )
        done = {(r["size"], json.dumps(r["workload"])) for r in old["runs"]}
        self.log(f"--resume: keeping {len(done)} finished workload(s) from {p}")
        return old, done

    def _model_info(self, bm: Any, precisions: tuple[str, ...]) -> dict[str, Any]:
        from ragrt.benchmarks import roofline

        man = json.loads((bm.art / "manifest.json").read_text())
        info = {
            "encoder_size": bm.encoder_size,
            "generator_size": bm.generator_size,
            "cache_dir": str(bm.root),
            "generator": {
                k: man["generator"][k]
                for k in ("d_model", "encoder_layers", "decoder_layers", "num_heads", "vocab_size")
            },
            "step_weight_bytes": {},
        }
        info["encoder_weight_bytes"] = {}
        for p in precisions:
            if p in man["generator"]["onnx"]:
                info["step_weight_bytes"][p] = roofline.step_weights(bm.art, p)
                enc = bm.art / man["generator"]["onnx"][p]["encoder"]
                info["encoder_weight_bytes"][p] = roofline.graph_weight_bytes(enc)["streamed"]
        return info

    def _load_systems(
        self, bm: Any, names: list[str], threads: int, info: dict[str, Any]
    ) -> dict[str, Any]:
        from ragrt.benchmarks.systems import RagrtSystem, TorchRagSystem
        from ragrt.retrieval.index import PassageIndex

        index = None
        loaded: dict[str, Any] = {}
        info["load_rss_mib"] = {}
        for name in names:
            gc.collect()
            before = rss_mib()
            t0 = time.perf_counter()
            self.log(f"loading {name} ({bm.name}) ...")
            if name.startswith("ragrt-"):
                dev = _ragrt_device(self.s.device, self.tensorrt)
                loaded[name] = RagrtSystem(bm, name.split("-", 1)[1], dev, threads)
            elif name == "optimum-longest" and "optimum" in loaded:
                loaded[name] = loaded["optimum"].sibling(name)  # same sessions, other padding
            else:
                if index is None:
                    index = PassageIndex.open(bm.index, device="cpu")
                loaded[name] = TorchRagSystem(bm, index, name, self.s.device, threads)
            load_s = time.perf_counter() - t0
            after = rss_mib()
            # one call touches every mmapped weight page and sizes the arenas
            loaded[name].run([QUESTIONS[0]], Workload(**self.s.headline))
            warm = rss_mib()
            info["load_rss_mib"][name] = {
                "rss_increase": (after - before) if (after and before) else None,
                "resident_mib": (warm - before) if (warm and before) else None,
                "load_s": load_s,
            }
            info.setdefault("systems", {})[name] = getattr(loaded[name], "info", {})
        return loaded

    def _run_entry(self, e: Entry, loaded: dict[str, Any], bm: Any) -> list[dict[str, Any]]:
        """Every system of ``e`` on the same question batches, interleaved; one run each."""
        s, w = self.s, e.workload
        batches = question_batches(w, s.questions)
        names = [x for x in e.systems if x in loaded]
        self.log(
            f"[{e.size}] {'/'.join(e.groups)}: batch {w.batch}, n_docs {w.n_docs}, beams "
            f"{w.num_beams}, {w.new_tokens} tokens; {len(names)} systems x {s.repeats} repeats "
            f"x {len(batches)} calls"
        )
        for _ in range(s.warmup):
            for name in names:
                loaded[name].run(batches[0], w)
        samples, outputs, unstable = self._measure(names, loaded, batches, w)
        base = "reference" if "reference" in names else (names[0] if names else None)
        runs = []
        for name in names:
            run = {
                "size": e.size,
                "groups": e.groups,
                "workload": w.to_dict(),
                "system": name,
                "stats": summarize(samples[name], w),
                "samples": samples[name],
                "outputs_changed_between_repeats": unstable[name],
                "outputs": outputs[name],
            }
            if base and name != base:
                run["agreement"] = agreement(outputs[base], outputs[name]) | {"baseline": base}
            if name.startswith("ragrt-") and "optimum-longest" in names:
                # the same generator tensors through optimum's ONNX Runtime loop
                run["agreement_vs_optimum_longest"] = agreement(
                    outputs["optimum-longest"], outputs[name]
                )
            runs.append(run)
            self._log_run(run)
        _add_speedups(runs)
        return runs

    def _measure(
        self, names: list[str], loaded: dict[str, Any], batches: list[list[str]], w: Workload
    ) -> tuple[dict[str, list], dict[str, list], dict[str, int]]:
        """Samples and first-repeat outputs per system; the system order rotates per call so
        that slow drifts of a shared machine hit every system alike."""
        samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        outputs: dict[str, list[Any]] = {n: [] for n in names}
        unstable: dict[str, int] = {n: 0 for n in names}
        k = 0
        for rep in range(self.s.repeats):
            for bi, qs in enumerate(batches):
                order = names[k % len(names) :] + names[: k % len(names)]
                k += 1
                for name in order:
                    # let the previous system's idle threads (ORT spin-waits, OpenMP) settle
                    time.sleep(self.s.pause_s)
                    ans, sample = run_call(loaded[name], qs, w)
                    sample.update(repeat=rep, batch_index=bi)
                    samples[name].append(sample)
                    if rep == 0:
                        outputs[name].append(
                            {
                                "questions": qs,
                                "token_ids": ans.token_ids,
                                "doc_ids": ans.doc_ids,
                                "scores": ans.scores,
                                "margins": ans.detail.pop("margins", None),
                            }
                        )
                    else:
                        ans.detail.pop("margins", None)
                        unstable[name] += outputs[name][bi]["token_ids"] != ans.token_ids
        return samples, outputs, unstable

    def _log_run(self, run: dict[str, Any]) -> None:
        st = run["stats"]
        same = (
            f"  identical {run['agreement']['identical_sequences']:.0%}"
            if "agreement" in run
            else ""
        )
        self.log(
            f"    {run['system']:16s} p50 {st['p50'] * 1000:8.1f} ms  p90 "
            f"{st['p90'] * 1000:8.1f} ms  {st['tokens_per_s']:7.1f} tok/s{same}"
        )


def _add_speedups(runs: list[dict[str, Any]]) -> None:
    """End-to-end and generator speedups against the reference and optimum, in place."""
    by = {r["system"]: r for r in runs}
    ref = by.get("reference")
    for r in runs:
        if ref is not None:
            r["speedup_vs_reference"] = ref["stats"]["p50"] / r["stats"]["p50"]
            r["generator_speedup_vs_reference"] = (
                ref["stats"]["generator_p50"] / r["stats"]["generator_p50"]
            )
        if not r["system"].startswith("ragrt-"):
            continue
        for opt in ("optimum", "optimum-longest"):
            if opt in by:
                r[f"generator_speedup_vs_{opt}"] = (
                    by[opt]["stats"]["generator_p50"] / r["stats"]["generator_p50"]
                )


# -- entry point -----------------------------------------------------------------------------------
def write_outputs(result: dict[str, Any], s: Settings, log=print) -> dict[str, Path]:
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{s.device}" + (f"_{s.tag}" if s.tag else "")
    paths = {"json": out / f"{stem}.json"}
    paths["json"].write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    from ragrt.benchmarks import report

    if s.plots:
        paths.update(report.plots(result, out, stem))
    paths["summary"] = report.write_summary(result, out, stem, paths)
    for k, p in paths.items():
        log(f"wrote {k}: {p}")
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def main(s: Settings, tensorrt: bool = False, log=print) -> dict[str, Any]:
    b = Bench(s, log)
    b.tensorrt = tensorrt
    result = b.run()
    result["settings"]["tensorrt"] = tensorrt
    write_outputs(result, s, log)
    for t in result["targets"]:
        mark = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        v = t["value"]
        log(
            f"target {mark:6s} {t['target']}: {v:.3g} (goal {'>=' if t['higher_is_better'] else '<'}"
            f" {t['goal']}) {t['note']}"
            if v is not None
            else f"target n/a {t['target']}"
        )
    return result


__all__ = [
    "QUESTIONS",
    "SCHEMA",
    "STAGES",
    "Bench",
    "Settings",
    "agreement",
    "build_plan",
    "evaluate_targets",
    "floors",
    "load_snapshot",
    "machine_info",
    "main",
    "percentiles",
    "question_batches",
    "rederive",
    "roofline_points",
    "summarize",
]
