"""Speed under load: the headline workload while N busy processes compete for the cores.

A production CPU node runs several model instances or other services; an engine whose speed
collapses when the cores are shared is not fast there. Each round runs every system on the
same questions twice, interleaved: once on a quiet machine and once while ``busy`` processes
(pure-Python busy loops, one per competing core) run, and reports per system the median
latency of both and their ratio (the slowdown). CPU seconds per call (all threads of this
process) are recorded too: a spinning thread pool burns CPU that competing processes need.

Systems: ``ragrt-<precision>`` (:class:`ragrt.engine.RagEngine`, end to end) and
``ctranslate2-<precision>`` (the generator alone on the same contexts,
:mod:`ragrt.benchmarks.ctranslate2_peer`); ``ragrt-<precision>-spin`` re-opens ragrt with
spinning ONNX Runtime threads (ragrt <= 0.1's setting) to show what the default changed.

Usage (needs a quiet machine apart from the busy processes it starts itself)::

    python -m ragrt.benchmarks.contention --busy 2 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSY_LOOP = "while True:\n    pass\n"


class BusyProcesses:
    """``n`` CPU-bound child processes for the duration of a ``with`` block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> BusyProcesses:
        self.procs = [
            subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
            for _ in range(self.n)
        ]
        time.sleep(0.2 if self.n else 0.0)  # let the scheduler see them
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


@dataclass
class Samples:
    """Per-call wall and CPU seconds of one system, quiet and loaded."""

    quiet: list[float] = field(default_factory=list)
    loaded: list[float] = field(default_factory=list)
    quiet_cpu: list[float] = field(default_factory=list)
    loaded_cpu: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        q, lo = statistics.median(self.quiet), statistics.median(self.loaded)
        return {
            "quiet_p50_s": q,
            "loaded_p50_s": lo,
            "slowdown": lo / q,
            "quiet_cpu_s": statistics.median(self.quiet_cpu),
            "loaded_cpu_s": statistics.median(self.loaded_cpu),
            "calls": len(self.quiet),
        }


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def run(
    systems: dict[str, Callable[[int], Any]],
    calls: int,
    busy: int,
    rounds: int,
    warmup: int = 1,
) -> dict[str, dict[str, float]]:
    """``systems[name](i)`` answers call ``i``; quiet and loaded phases alternate per round."""
    samples = {name: Samples() for name in systems}
    for fn in systems.values():
        for i in range(warmup):
            fn(i)
    for r in range(rounds):
        for loaded in (False, True) if r % 2 == 0 else (True, False):
            with BusyProcesses(busy if loaded else 0):
                names = list(systems)
                for i in range(calls):
                    k = (i + r) % len(names)
                    for name in names[k:] + names[:k]:  # rotate the order per call
                        wall, cpu = _timed(lambda name=name, i=i: systems[name](i))
                        s = samples[name]
                        (s.loaded if loaded else s.quiet).append(wall)
                        (s.loaded_cpu if loaded else s.quiet_cpu).append(cpu)
    return {name: s.summary() for name, s in samples.items()}


def headline_systems(
    precisions: list[str],
    threads: int,
    questions: list[str],
    spin: bool,
    ct2: bool,
    sizes: tuple[str, str] = ("bert-base", "bart-base"),
) -> dict[str, Callable[[int], Any]]:
    """ragrt (end to end) and CTranslate2 (generator on ragrt's contexts) per precision."""
    from ragrt.benchmarks import ctranslate2_peer as cp
    from ragrt.benchmarks.models import prepare
    from ragrt.engine import RagEngine
    from ragrt.runtime.sessions import SessionOptions

    bm = prepare(*sizes, tuple(dict.fromkeys(["fp32", *precisions])))
    out: dict[str, Callable[[int], Any]] = {}
    preps = None
    for p in precisions:
        eng = RagEngine.load(bm.art, bm.index, precision=p, intra_op_threads=threads)
        out[f"ragrt-{p}"] = lambda i, e=eng: e.generate(
            [questions[i % len(questions)]], n_docs=5, max_new_tokens=32, min_new_tokens=32
        )
        if preps is None:
            preps = [eng._prepare([q], 5) for q in questions]
        if spin:
            from ragrt.runtime.generator import Seq2SeqGenerator

            seng = RagEngine.load(bm.art, bm.index, precision=p, intra_op_threads=threads)
            opts = SessionOptions(intra_op_threads=threads, spinning=True)
            seng.generator = Seq2SeqGenerator.from_spec(
                seng.manifest.generator, seng.manifest.root, p, opts
            )
            out[f"ragrt-{p}-spin"] = lambda i, e=seng: e.generate(
                [questions[i % len(questions)]], n_docs=5, max_new_tokens=32, min_new_tokens=32
            )
        if ct2:
            gen_dir = cp.generator_folder(bm.ckpt, bm.root / "generator")
            ct = cp.Ct2Generator(cp.convert(gen_dir, bm.root / f"ct2-{p}", p), p, threads)
            out[f"ctranslate2-{p}"] = lambda i, c=ct, ps=preps: c.generate(
                ps[i % len(ps)].context_ids, ps[i % len(ps)].context_mask, 32
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ragrt.benchmarks.contention")
    ap.add_argument("--busy", type=int, default=2, help="busy processes while loaded (2)")
    ap.add_argument("--size", default="bart-base", help="generator size (bart-base)")
    ap.add_argument("--encoder-size", default="bert-base")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--threads", type=int, default=0, help="threads per system (0 = all cores)")
    ap.add_argument("--calls", type=int, default=4, help="calls per system per phase (4)")
    ap.add_argument("--rounds", type=int, default=2, help="quiet/loaded rounds (2)")
    ap.add_argument("--no-spin", action="store_true", help="skip the spinning-threads variant")
    ap.add_argument("--no-ct2", action="store_true", help="skip CTranslate2")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from ragrt.benchmarks.harness import QUESTIONS
    from ragrt.benchmarks.machine import load_snapshot, machine_info
    from ragrt.runtime.sessions import cpu_threads

    threads = a.threads or cpu_threads()
    systems = headline_systems(
        a.precisions.split(","),
        threads,
        QUESTIONS[:8],
        not a.no_spin,
        not a.no_ct2,
        (a.encoder_size, a.size),
    )
    res: dict[str, Any] = {
        "machine": machine_info("cpu"),
        "load_start": load_snapshot(),
        "busy": a.busy,
        "threads": threads,
        "size": a.size,
        "workload": "1 question, 5 docs, 32 tokens forced (CTranslate2: the 5 contexts)",
    }
    res["systems"] = run(systems, a.calls, a.busy, a.rounds)
    res["load_end"] = load_snapshot()
    print(json.dumps(res["systems"], indent=1))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        p = Path(a.out) / f"contention_cpu_busy{a.busy}.json"
        p.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
