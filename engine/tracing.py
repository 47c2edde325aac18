"""Stage hooks: the engine tells a :class:`Tracer` when each stage of a request starts and ends.

The stages of one call, in order (:data:`STAGES`)::

    question_tokenize -> question_encode -> search -> contexts -> generator_encode -> decode
    (-> rescore, RAG-Sequence only) -> detokenize

``decode`` also reports every search step (:meth:`Tracer.step`, with the number of live decoder
rows), so a tracer can count steps or watch a decode stop. :class:`StageTimer` records
milliseconds per stage; benchmarks and ``ragrt ask --timings`` use it. Pass a tracer per call
(``engine.generate(..., tracer=StageTimer())``); the engine never keeps one, so concurrent calls
each see only their own stages.

This module imports nothing from ragrt: every layer may call a tracer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from time import perf_counter
from typing import Any

STAGES = (
    "question_tokenize",
    "question_encode",
    "search",
    "contexts",
    "generator_encode",
    "decode",
    "rescore",
    "detokenize",
)


class Tracer:
    """Receives stage events; every method does nothing here, override the ones you need.

    ``end`` is called for every ``start``, also when the stage raised (then ``info`` may be
    incomplete). ``info`` carries what the stage produced, e.g. ``contexts`` reports
    ``context_shape`` (rows, tokens) and ``context_tokens`` (real, unpadded tokens).
    """

    def start(self, stage: str) -> None:
        """``stage`` begins."""

    def end(self, stage: str, info: Mapping[str, Any]) -> None:
        """``stage`` is over."""

    def step(self, rows: int) -> None:
        """One decode step ran over ``rows`` live decoder rows."""


@contextmanager
def stage(tracer: Tracer | None, name: str) -> Iterator[dict[str, Any]]:
    """``with stage(tracer, "search") as info: ...``; a no-op without a tracer. Put what the
    stage produced into ``info``."""
    info: dict[str, Any] = {}
    if tracer is None:
        yield info
        return
    tracer.start(name)
    try:
        yield info
    finally:
        tracer.end(name, info)


class StageTimer(Tracer):
    """Wall-clock milliseconds per stage (summed if a stage repeats), the last ``info`` of each
    stage and the number of decode steps. One timer per call; :meth:`reset` to reuse it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ms: dict[str, float] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.steps = 0
        self._t0: dict[str, float] = {}

    def start(self, stage: str) -> None:
        self._t0[stage] = perf_counter()

    def end(self, stage: str, info: Mapping[str, Any]) -> None:
        dt = 1000.0 * (perf_counter() - self._t0.pop(stage))
        self.ms[stage] = self.ms.get(stage, 0.0) + dt
        self.info[stage] = dict(info)

    def step(self, rows: int) -> None:
        self.steps += 1

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())

    def to_dict(self) -> dict[str, Any]:
        """``{"stages_ms": {stage: ms, ...}, "decode_steps": n}`` in stage order (JSON-ready)."""
        order = [s for s in STAGES if s in self.ms] + [s for s in self.ms if s not in STAGES]
        return {
            "stages_ms": {s: round(self.ms[s], 3) for s in order},
            "decode_steps": self.steps,
        }

    def summary(self) -> str:
        """One line: ``question_tokenize 0.2 ms, ..., total 41.0 ms, 32 decode steps``."""
        parts = [f"{s} {ms:.1f} ms" for s, ms in self.to_dict()["stages_ms"].items()]
        parts.append(f"total {self.total_ms:.1f} ms")
        if self.steps:
            parts.append(f"{self.steps} decode steps")
        return ", ".join(parts)
