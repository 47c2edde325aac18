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
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragrt.benchmarks.systems import STAGES, Answer, Workload
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


# -- machine -------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


BUSY_NAMES = ("pytest", "tritonserver", "index_bench", "serving_bench", "ragrt bench")


def other_busy_processes() -> list[dict[str, Any]]:
    """Other processes whose command line says they load the machine (tests, servers, benches)."""
    out = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in (me, os.getppid()):
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in BUSY_NAMES):
            out.append({"pid": int(d.name), "cmd": cmd.strip()[:160]})
    return out


def load_snapshot() -> dict[str, Any]:
    la = os.getloadavg()
    return {
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "loadavg_1_5_15": [round(x, 2) for x in la],
        "others": other_busy_processes(),
    }


def gpu_info() -> dict[str, Any]:
    """GPU name, memory and driver (nvidia-smi), plus what ONNX Runtime / torch see."""
    info: dict[str, Any] = {}
    try:
        q = "name,memory.total,driver_version"
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        rows = [r.split(", ") for r in out.stdout.strip().splitlines() if r.strip()]
        info["gpus"] = [dict(zip(q.split(","), r)) for r in rows]
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    try:
        import onnxruntime as ort

        info["ort_providers"] = ort.get_available_providers()
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    return info


def machine_info(device: str) -> dict[str, Any]:
    from ragrt.runtime.sessions import cpu_threads

    m = {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": cpu_threads(),
        "mem_total_gib": _mem_total_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }
    if device != "cpu":
        m["gpu"] = gpu_info()
    return m


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in (
        "ragrt",
        "onnxruntime",
        "onnxruntime-gpu",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "faiss-cpu",
        "faiss-gpu-cu12",
        "numpy",
        "tokenizers",
        "onnx",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        out["git_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def wait_for_quiet(max_load: float, wait_s: float, log=print) -> dict[str, Any]:
    """Wait (up to ``wait_s``) until the 1-min load average is below ``max_load``."""
    t0 = time.monotonic()
    snap = load_snapshot()
    while snap["loadavg_1_5_15"][0] >= max_load and time.monotonic() - t0 < wait_s:
        log(f"load {snap['loadavg_1_5_15'][0]:.2f} >= {max_load}: waiting for a quiet machine")
        time.sleep(min(30.0, max(1.0, wait_s - (time.monotonic() - t0))))
        snap = load_snapshot()
    snap["waited_s"] = round(time.monotonic() - t0, 1)
    snap["quiet"] = snap["loadavg_1_5_15"][0] < max_load
    return snap


# -- memory --------------------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    v = _status_kib("VmRSS")
    return None if v is None else v / 1024


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    v = _status_kib("VmHWM")
    return None if v is None else v / 1024


# -- statistics ------------------------------------------------------------------------------------
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
        samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        outputs: dict[str, list[Any]] = {n: [] for n in names}
        unstable: dict[str, int] = {n: 0 for n in names}
        k = 0
        for rep in range(s.repeats):
            for bi, qs in enumerate(batches):
                order = names[k % len(names) :] + names[: k % len(names)]
                k += 1
                for name in order:
                    # let the previous system's idle threads (ORT spin-waits, OpenMP) settle
                    time.sleep(s.pause_s)
                    ans, sample = run_call(loaded[name], qs, w)
                    sample.update(repeat=rep, batch_index=bi)
                    samples[name].append(sample)
                    out = {
                        "questions": qs,
                        "token_ids": ans.token_ids,
                        "doc_ids": ans.doc_ids,
                        "scores": ans.scores,
                        "margins": ans.detail.pop("margins", None),
                    }
                    if rep == 0:
                        outputs[name].append(out)
                    elif outputs[name][bi]["token_ids"] != ans.token_ids:
                        unstable[name] += 1
        base = "reference" if "reference" in names else (names[0] if names else None)
        runs = []
        for name in names:
            st = summarize(samples[name], w)
            run = {
                "size": e.size,
                "groups": e.groups,
                "workload": w.to_dict(),
                "system": name,
                "stats": st,
                "samples": samples[name],
                "outputs_changed_between_repeats": unstable[name],
            }
            run["outputs"] = outputs[name]
            if base and name != base:
                run["agreement"] = agreement(outputs[base], outputs[name]) | {"baseline": base}
            if name.startswith("ragrt-") and "optimum-longest" in names:
                # the same generator tensors through optimum's ONNX Runtime loop
                run["agreement_vs_optimum_longest"] = agreement(
                    outputs["optimum-longest"], outputs[name]
                )
            runs.append(run)
            self.log(
                f"    {name:16s} p50 {st['p50'] * 1000:8.1f} ms  p90 {st['p90'] * 1000:8.1f} ms  "
                f"{st['tokens_per_s']:7.1f} tok/s"
                + (
                    f"  identical {run['agreement']['identical_sequences']:.0%}"
                    if "agreement" in run
                    else ""
                )
            )
        ref = next((r for r in runs if r["system"] == "reference"), None)
        for r in runs:
            if ref is not None:
                r["speedup_vs_reference"] = ref["stats"]["p50"] / r["stats"]["p50"]
                r["generator_speedup_vs_reference"] = (
                    ref["stats"]["generator_p50"] / r["stats"]["generator_p50"]
                )
            for opt in ("optimum", "optimum-longest"):
                o = next((x for x in runs if x["system"] == opt), None)
                if o is not None and r["system"].startswith("ragrt-"):
                    r[f"generator_speedup_vs_{opt}"] = (
                        o["stats"]["generator_p50"] / r["stats"]["generator_p50"]
                    )
        return runs


# -- derived -------------------------------------------------------------------------------------
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
    from ragrt.benchmarks.roofline import generator_floor, step_bytes

    bw = result["bandwidth"]
    out = []
    head = result["settings"]["headline"]
    for size, model in result["models"].items():
        ref = _find(result, size, head, "reference")
        for r in result["runs"]:
            w = r["workload"]
            same_but_batch = {k: v for k, v in w.items() if k != "batch"} == {
                k: v for k, v in head.items() if k != "batch"
            }
            # fp32 on CPU only: the compute roof is the measured fp32 sgemm rate of the host
            if r["size"] != size or r["system"] != "ragrt-fp32" or not same_but_batch:
                continue
            if result["settings"]["device"] != "cpu":
                continue
            prec = r["system"].split("-", 1)[1]
            wb = model["step_weight_bytes"].get(prec)
            eb = model.get("encoder_weight_bytes", {}).get(prec)
            if not wb or not eb:
                continue
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
                "size": size,
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
                    item["max_speedup_ragged_vs_reference"] = (
                        ref["stats"]["p50"] / item["floor_ragged_s"]
                    )
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

    if fp32 and "speedup_vs_reference" in fp32:
        ag = fp32.get("agreement", {})
        target(
            "ragrt fp32 end-to-end speedup vs transformers",
            fp32["speedup_vs_reference"],
            3.0,
            True,
            f"identical sequences {ag.get('identical_sequences')}",
        )
    if fp32:
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
    if len(bsizes) > 1:
        lo = _find(result, size, head | {"batch": bsizes[0]}, "ragrt-fp32")
        hi = _find(result, size, head | {"batch": bsizes[-1]}, "ragrt-fp32")
        if lo and hi:
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


__all__ = ["Settings", "Bench", "main", "STAGES", "QUESTIONS"]
