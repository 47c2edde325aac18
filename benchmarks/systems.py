"""The systems a benchmark compares. Each answers a batch of questions end to end (question
encoding, retrieval, context building, generation) and reports where its time went.

- ``reference``: transformers ``RagTokenForGeneration`` in PyTorch, fed exactly as its
  ``RagRetriever`` would feed it: DPR question encoder in torch, the same FAISS index, doc
  scores ``q . d`` in torch, contexts from ``RagRetriever.postprocess_docs`` (padded to
  ``max_combined_length`` = 300), then ``generate(context_input_ids=..., doc_scores=...)``.
- ``optimum``: the same pipeline with the generator replaced by optimum's
  ``ORTModelForSeq2SeqLM`` (ragrt's own fp32 generator graphs, non-merged decoders), so
  transformers' RAG-Token loop drives ONNX Runtime; ``optimum-longest`` additionally pads the
  contexts to the longest one, i.e. feeds the generator exactly the tensors ragrt feeds it.
- ``ragrt-<precision>``: :meth:`ragrt.engine.RagEngine.generate`.

ragrt's stage times come from the engine's stage hooks (:mod:`ragrt.tracing`); model time inside
the decode loops is measured by wrapping *instances* (ONNX Runtime sessions, the decoder step,
torch module hooks); nothing in the engine is modified. A wrapper costs about a microsecond per
call.
"""

from __future__ import annotations

import gc
import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np

STAGES = (
    "question_encoding",
    "search",
    "contexts",
    "generator_encoder",
    "decode_ort",
    "decode_overhead",
)
"""Stage names every system reports (seconds per call). ``decode_ort`` is the time inside the
decoder model (ONNX Runtime, or the torch module for the reference); ``decode_overhead`` is
the rest of the decode loop (search, marginalization, feeds, cache handling, Python)."""


@dataclass(frozen=True)
class Workload:
    """What one call asks: ``new_tokens`` is both min and max, so every system emits exactly
    that many tokens per hypothesis."""

    batch: int = 1
    n_docs: int = 5
    num_beams: int = 1
    new_tokens: int = 32

    def to_dict(self) -> dict[str, int]:
        return {
            "batch": self.batch,
            "n_docs": self.n_docs,
            "num_beams": self.num_beams,
            "new_tokens": self.new_tokens,
        }


@dataclass
class Answer:
    """One call's outputs and timings."""

    token_ids: list[list[int]]
    doc_ids: list[list[str]]
    scores: list[float]
    latency_s: float
    stages: dict[str, float]
    detail: dict[str, Any] = field(default_factory=dict)


class Clock:
    """Accumulates seconds and call counts per key; remembers the last event's end time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.n: dict[str, int] = defaultdict(int)
        self.marks: dict[str, float] = {}

    def add(self, key: str, dt: float) -> None:
        self.t[key] += dt
        self.n[key] += 1

    def wrap(self, fn: Callable, key: str, mark: str | None = None) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = perf_counter()
                self.add(key, t1 - t0)
                if mark:
                    self.marks[mark] = t1

        return timed


class SessionProxy:
    """An ``onnxruntime.InferenceSession`` whose ``run``/``run_with_iobinding`` are timed."""

    def __init__(self, sess: Any, clock: Clock, key: str) -> None:
        self._sess = sess
        self.run = clock.wrap(sess.run, key)
        self.run_with_iobinding = clock.wrap(sess.run_with_iobinding, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sess, name)


class StepProxy:
    """A ragrt ``DecoderStep`` whose ``step``/``select`` are timed (end times marked)."""

    def __init__(self, dec: Any, clock: Clock) -> None:
        self._dec = dec
        self._clock = clock
        self._first = True

    @property
    def rows(self) -> int:
        return self._dec.rows

    def step(self, tokens: np.ndarray) -> np.ndarray:
        key = "step_first" if self._first else "step"
        self._first = False
        return self._clock.wrap(self._dec.step, key, mark="loop_end")(tokens)

    def select(self, idx: np.ndarray) -> None:
        return self._clock.wrap(self._dec.select, "select", mark="loop_end")(idx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dec, name)


def _decode_stages(c: Clock, loop_s: float, model_key: str, steps: int) -> dict[str, Any]:
    ort = c.t.get(model_key, 0.0)
    return {
        "decode_ort": ort,
        "decode_overhead": max(0.0, loop_s - ort),
        "decode_loop": loop_s,
        "decode_steps": steps,
    }


# -- ragrt --------------------------------------------------------------------------------------
class RagrtSystem:
    """ragrt's engine. Stage times come from the engine's own hooks (a
    :class:`ragrt.tracing.StageTimer` per call); inside the decode, the generator's ONNX Runtime
    sessions and decoder steps (its public attributes) are wrapped to split model time from
    the loop's own work."""

    family = "ragrt"

    def __init__(self, bm: Any, precision: str, device: str = "cpu", threads: int = 0) -> None:
        from ragrt.engine import RagEngine

        self.name = f"ragrt-{precision}"
        self.precision = precision
        self.device = device
        self.engine = RagEngine.load(
            bm.art, bm.index, precision=precision, device=device, intra_op_threads=threads
        )
        self.clock = Clock()
        self.instrument_generator()
        self.info = {"device": device, "index": _index_info(self.engine.index)}

    def instrument_generator(self) -> None:
        """Time the generator's sessions (``ort_first``/``ort_past``) and decoder steps."""
        g, c = self.engine.generator, self.clock
        g.decoder = SessionProxy(g.decoder, c, "ort_first")
        g.decoder_with_past = SessionProxy(g.decoder_with_past, c, "ort_past")
        make_step = g.decoder_step

        def decoder_step(*args: Any, **kwargs: Any) -> StepProxy:
            return StepProxy(make_step(*args, **kwargs), c)

        g.decoder_step = decoder_step

    def run(self, questions: list[str], w: Workload) -> Answer:
        from ragrt.tracing import StageTimer

        c = self.clock
        c.reset()
        timer = StageTimer()
        t0 = perf_counter()
        res = self.engine.generate(
            questions,
            mode="token",
            n_docs=w.n_docs,
            num_beams=w.num_beams,
            max_new_tokens=w.new_tokens,
            min_new_tokens=w.new_tokens,
            tracer=timer,
        )
        latency = perf_counter() - t0

        def sec(*names: str) -> float:
            return sum(timer.ms.get(n, 0.0) for n in names) / 1000.0

        loop = sec("decode")
        c.t["decode_model"] = c.t.get("ort_first", 0.0) + c.t.get("ort_past", 0.0)
        stages: dict[str, Any] = {
            "question_encoding": sec("question_tokenize", "question_encode"),
            "search": sec("search"),
            "contexts": sec("contexts"),
            "generator": sec("generator_encode", "decode", "rescore", "detokenize"),
            "generator_encoder": sec("generator_encode"),
        }
        stages.update(_decode_stages(c, loop, "decode_model", timer.steps))
        step_calls = c.t.get("step_first", 0.0) + c.t.get("step", 0.0)
        stages["decode_feeds"] = max(0.0, step_calls - stages["decode_ort"])
        stages["decode_select"] = c.t.get("select", 0.0)
        stages["decode_search"] = max(
            0.0, loop - step_calls - stages["decode_select"]
        )  # marginalization, processors, argmax, Python loop
        stages["decode_first_step"] = c.t.get("step_first", 0.0)
        stages["decode_ort_first"] = c.t.get("ort_first", 0.0)
        stages["decode_ort_past"] = c.t.get("ort_past", 0.0)
        ctx = timer.info.get("contexts", {})
        shape = ctx.get("context_shape")
        return Answer(
            [list(r.token_ids) for r in res],
            [[d.id for d in r.docs] for r in res],
            [float(r.score) for r in res],
            latency,
            stages,
            {
                "context_len": int(shape[1]) if shape else None,
                "context_tokens": ctx.get("context_tokens"),
                "ort_past_calls": c.n["ort_past"],
            },
        )

    def close(self) -> None:
        del self.engine
        gc.collect()


def _index_info(index: Any) -> dict[str, Any]:
    """Which FAISS class the index is and where it searches (ragrt's GPU plan)."""
    from dataclasses import asdict

    out: dict[str, Any] = {}
    try:
        import faiss

        out["class"] = type(faiss.downcast_index(index.shards[0].index)).__name__
    except Exception:  # informational only
        out["class"] = type(index).__name__
    plan = getattr(index, "plan", None)
    if plan is not None:
        out["plan"] = asdict(plan)
    return out


# -- transformers / optimum ---------------------------------------------------------------------
class _PadLongest:
    """A generator tokenizer whose ``batch_encode_plus`` pads to the longest row, not to 300."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def batch_encode_plus(self, texts: list[str], **kw: Any) -> Any:
        kw["padding"] = "longest"
        return self.tok.batch_encode_plus(texts, **kw)


def _optimum_generator(ort_model: Any, clock: Clock) -> Any:
    """``ORTModelForSeq2SeqLM`` dressed as the ``torch.nn.Module`` generator RAG expects.

    transformers' RAG loop hands it an empty ``Cache`` on the first step (optimum wants
    ``None``) and legacy tuples afterwards, which optimum returns and accepts as they are.
    """
    import torch
    from transformers.cache_utils import Cache

    class OptimumGenerator(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ort = ort_model
            self.config = ort_model.config

        def get_encoder(self) -> Callable:
            enc = self.ort.get_encoder()

            def encode(**kw: Any) -> Any:
                kw.pop("return_dict", None)
                t0 = perf_counter()
                out = enc(**kw)
                t1 = perf_counter()
                clock.add("generator_encoder", t1 - t0)
                clock.marks["encoder_end"] = t1
                return out

            return encode

        def forward(self, past_key_values: Any = None, **kw: Any) -> Any:
            if isinstance(past_key_values, Cache):
                past_key_values = (
                    None
                    if past_key_values.get_seq_length() == 0
                    else past_key_values.to_legacy_cache()
                )
            kw.pop("output_attentions", None)
            kw.pop("return_dict", None)
            t0 = perf_counter()
            out = self.ort(past_key_values=past_key_values, **kw)
            t1 = perf_counter()
            clock.add("decode_model", t1 - t0)
            clock.marks["loop_end"] = t1
            return out

    return OptimumGenerator()


class TorchRagSystem:
    """transformers' RAG-Token pipeline, with its own generator (reference) or optimum's."""

    family = "transformers"

    def __init__(
        self,
        bm: Any,
        index: Any,
        variant: str = "reference",
        device: str = "cpu",
        threads: int = 0,
    ) -> None:
        import torch
        from transformers import AutoTokenizer, RagTokenForGeneration
        from transformers.models.rag.retrieval_rag import RagRetriever

        if variant not in ("reference", "optimum", "optimum-longest"):
            raise ValueError(f"unknown transformers variant {variant!r}")
        self.name = variant
        self.family = "transformers" if variant == "reference" else "optimum"
        self.clock = Clock()
        self.index = index
        self.torch = torch
        # torch runs on the GPU only with a CUDA build of torch; otherwise the torch parts stay
        # on the CPU (recorded), and optimum's ONNX Runtime generator still uses the GPU
        self.device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        model = RagTokenForGeneration.from_pretrained(bm.ckpt).eval()
        self.qtok = AutoTokenizer.from_pretrained(bm.ckpt / "question_encoder_tokenizer")
        gtok = AutoTokenizer.from_pretrained(bm.ckpt / "generator_tokenizer")
        self._postprocess = RagRetriever.postprocess_docs
        self._retriever = types.SimpleNamespace(
            config=model.config,
            generator_tokenizer=_PadLongest(gtok) if variant == "optimum-longest" else gtok,
        )
        c = self.clock
        if variant == "reference":
            gen = model.rag.generator
            enc = gen.get_encoder()

            def enc_pre(*_: Any) -> None:
                self._sync()
                c.marks["encoder_start"] = perf_counter()

            def enc_post(*_: Any) -> None:
                self._sync()
                t = perf_counter()
                c.add("generator_encoder", t - c.marks["encoder_start"])
                c.marks["encoder_end"] = t

            def gen_pre(*_: Any, **__: Any) -> None:
                self._sync()
                c.marks["model_start"] = perf_counter()

            def gen_post(*_: Any, **__: Any) -> None:
                self._sync()
                t = perf_counter()
                c.add("decode_model", t - c.marks["model_start"])
                c.marks["loop_end"] = t

            enc.register_forward_pre_hook(enc_pre)
            enc.register_forward_hook(enc_post)
            gen.register_forward_pre_hook(gen_pre)
            gen.register_forward_hook(gen_post)
        else:
            ort_model = self._load_optimum(bm, device, threads, self.device == "cuda")
            for part, key in (
                (ort_model.decoder, "decode_ort"),
                (ort_model.decoder_with_past, "decode_ort"),
            ):
                if part is not None:
                    part.session = SessionProxy(part.session, c, key)
            model.rag.generator = _optimum_generator(ort_model, c)  # nn.Module: registered
            gc.collect()
            self.ort_model = ort_model
        if self.device == "cuda":
            model = model.to("cuda")
        self.model = model
        self.info = {"device": self.device, "generator_device": device}

    def sibling(self, variant: str) -> TorchRagSystem:
        """``optimum-longest`` from a loaded ``optimum``: the same model and sessions (and
        timing hooks), contexts padded to the longest instead of 300."""
        import copy

        if variant != "optimum-longest" or self.name != "optimum":
            raise ValueError("only optimum-longest can share optimum's model")
        other = copy.copy(self)
        other.name = variant
        other._retriever = types.SimpleNamespace(
            config=self._retriever.config,
            generator_tokenizer=_PadLongest(self._retriever.generator_tokenizer),
        )
        other.info = dict(self.info, shares="optimum")
        return other

    def _sync(self) -> None:
        if self.device == "cuda":  # CUDA kernels are asynchronous: close each stage
            self.torch.cuda.synchronize()

    @staticmethod
    def _load_optimum(bm: Any, device: str, threads: int, torch_cuda: bool) -> Any:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForSeq2SeqLM

        from ragrt.runtime.sessions import cpu_threads

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or cpu_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        kw: dict[str, Any] = dict(
            use_cache=True, use_merged=False, session_options=so, local_files_only=True
        )
        if device != "cpu":  # IO binding needs torch tensors on the GPU
            kw.update(provider="CUDAExecutionProvider", use_io_binding=torch_cuda)
        return ORTModelForSeq2SeqLM.from_pretrained(bm.optimum, **kw)

    def run(self, questions: list[str], w: Workload) -> Answer:
        torch = self.torch
        c = self.clock
        c.reset()
        dev = self.device
        t0 = perf_counter()
        with torch.inference_mode():
            enc = self.qtok(questions, return_tensors="pt", padding=True, truncation=True)
            q_ids, q_mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
            q = self.model.question_encoder(q_ids, attention_mask=q_mask)[0]
            self._sync()
            t1 = perf_counter()
            res = self.index.search(q.float().cpu().numpy(), w.n_docs, return_embeddings=True)
            docs = self.index.docs(res)
            emb = torch.from_numpy(res.embeddings).to(q)
            doc_scores = torch.bmm(q.unsqueeze(1), emb.transpose(1, 2)).squeeze(1)
            self._sync()
            t2 = perf_counter()
            strings = self.qtok.batch_decode(q_ids, skip_special_tokens=True)
            doc_dicts = [{"title": [d.title for d in r], "text": [d.text for d in r]} for r in docs]
            ids, mask = self._postprocess(
                self._retriever,
                doc_dicts,
                strings,
                self.model.config.generator.prefix,
                w.n_docs,
                return_tensors="pt",
            )
            t3 = perf_counter()
            out = self.model.generate(
                context_input_ids=ids.to(dev),
                context_attention_mask=mask.to(dev),
                doc_scores=doc_scores,
                n_docs=w.n_docs,
                max_length=w.new_tokens + 1,
                min_length=w.new_tokens + 1,
                num_beams=w.num_beams,
                num_return_sequences=1,
                return_dict_in_generate=True,
                output_scores=True,
            )
            self._sync()
            t4 = perf_counter()
        seqs = out.sequences.cpu().numpy()
        margins = None
        if w.num_beams > 1:
            scores = out.sequences_scores.float().cpu().numpy().tolist()
        else:  # greedy: sum of the processed (marginalized) log-probs of the chosen tokens
            step_scores = torch.stack([s.float() for s in out.scores], 1).cpu()  # [B, T, V]
            chosen = torch.from_numpy(seqs[:, 1:]).unsqueeze(-1)
            scores = step_scores.gather(2, chosen).squeeze(-1).sum(1).numpy().tolist()
            # how close each greedy choice was: best minus second-best marginal log-prob
            # (inf where a processor forced the token); explains fp32 divergences
            top2 = step_scores.topk(2, dim=2).values
            gap = (top2[..., 0] - top2[..., 1]).numpy()
            margins = [[round(float(x), 6) if np.isfinite(x) else None for x in r] for r in gap]
        steps = len(out.scores)
        loop = c.marks.get("loop_end", t4) - c.marks.get("encoder_end", t3)
        stages = {
            "question_encoding": t1 - t0,
            "search": t2 - t1,
            "contexts": t3 - t2,
            "generator": t4 - t3,
            "generator_encoder": c.t.get("generator_encoder", 0.0),
        }
        model_key = "decode_ort" if self.name != "reference" else "decode_model"
        stages.update(_decode_stages(c, loop, model_key, steps))
        if self.name != "reference":
            stages["decode_glue"] = max(0.0, c.t.get("decode_model", 0.0) - stages["decode_ort"])
        return Answer(
            [row[1:].tolist() for row in seqs],
            [[d.id for d in r] for r in docs],
            [float(s) for s in scores],
            t4 - t0,
            stages,
            {"context_len": int(ids.shape[1]), "margins": margins},
        )

    def close(self) -> None:
        del self.model
        gc.collect()


def make_system(
    name: str, bm: Any, index: Any, device: str = "cpu", threads: int = 0
) -> RagrtSystem | TorchRagSystem:
    """``reference`` | ``optimum`` | ``optimum-longest`` | ``ragrt-<precision>``."""
    if name.startswith("ragrt-"):
        return RagrtSystem(bm, name.split("-", 1)[1], device, threads)
    return TorchRagSystem(bm, index, name, device, threads)
