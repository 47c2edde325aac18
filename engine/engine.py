"""RagEngine: the whole pipeline of one RAG model, composed from the stage modules.

text -> question tokens -> question embedding (ONNX Runtime) -> doc ids and scores (FAISS) ->
contexts (exactly as the reference builds them) -> generator encoder states -> KV-cached decode
loop (RAG-Token or RAG-Sequence) -> token ids -> text.

This module only orchestrates: each arrow is a function of its own module, and nothing here
reaches back up the chain.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragrt.errors import Cancelled, InputError, RagrtError
from ragrt.inputs import check_question, check_questions, question_list
from ragrt.results import Doc, GenerationResult, Hypothesis
from ragrt.retrieval.index import PassageIndex
from ragrt.retrieval.retriever import Retriever
from ragrt.runtime import manifest as manifest_mod
from ragrt.runtime.contexts import build_generator_inputs
from ragrt.runtime.encoders import TextEncoder
from ragrt.runtime.generation import rag_sequence, rag_token
from ragrt.runtime.generation.request import MAX_DECODER_ROWS, MODES, GenerationRequest
from ragrt.runtime.generation.streaming import Cancellation, Streamer, TextIteratorStreamer
from ragrt.runtime.generator import Seq2SeqGenerator
from ragrt.runtime.manifest import ArtifactManifest
from ragrt.runtime.sessions import SessionOptions
from ragrt.runtime.text import TextTokenizer
from ragrt.tracing import Tracer, stage

__all__ = ["RagEngine", "GenerationResult", "GenerationRequest", "GeneratorInputs", "Doc", "MODES"]


@dataclass
class GeneratorInputs:
    """One batch of questions after retrieval and context building: what the generator reads."""

    questions: list[str]
    docs: list[list[Doc]]
    doc_scores: np.ndarray  # [B, n_docs] float32
    context_ids: np.ndarray  # [B * n_docs, L] int64
    context_mask: np.ndarray


class RagEngine:
    """A loaded RAG model + passage index. Thread-safe for concurrent ``generate`` calls on
    CPU (ONNX Runtime sessions are); build one per process and share it."""

    def __init__(
        self,
        manifest: ArtifactManifest,
        retriever: Retriever,
        generator: Seq2SeqGenerator,
        generator_tokenizer: TextTokenizer,
        precision: str,
        device: str,
    ):
        self.manifest = manifest
        self.retriever = retriever
        self.generator = generator
        self.generator_tokenizer = generator_tokenizer
        self.precision = precision
        self.device = device
        self.defaults = manifest.generation
        #: most decoder rows (num_beams x n_docs) one question may take (see GenerationRequest)
        self.max_decoder_rows = MAX_DECODER_ROWS

    @property
    def question_encoder(self) -> TextEncoder:
        return self.retriever.encoder

    @property
    def index(self) -> PassageIndex | None:
        return self.retriever.index

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        index_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        precision: str = "fp32",
        device: str = "cpu",
        *,
        nprobe: int | None = None,
        intra_op_threads: int = 0,
        verify: bool = True,
    ) -> RagEngine:
        """Open ART_DIR (from ``ragrt export``) and INDEX_DIR(s) (from ``ragrt index build``).

        ``device``: cpu | cuda | tensorrt (CUDA without a GPU raises :class:`DeviceError`).
        Several index dirs are searched as shards of one corpus. Without an index only
        :meth:`embed` and :meth:`generate_from_docs` work.
        """
        m = manifest_mod.load(model_dir, verify=verify, precision=precision)
        opts = SessionOptions(device=device, intra_op_threads=intra_op_threads)
        retriever = Retriever.from_manifest(m, index_dir, precision, opts, nprobe=nprobe)
        gen = Seq2SeqGenerator.from_spec(m.generator, m.root, precision, opts)
        gtok = TextTokenizer(
            m.path(m.generator.tokenizer),
            pad_token_id=m.generation.pad_token_id,
            clean_up=m.generator.clean_up_tokenization_spaces,
        )
        return cls(m, retriever, gen, gtok, precision, device)

    # -- options -------------------------------------------------------------------------
    def request(self, mode: str | None = None, **overrides: Any) -> GenerationRequest:
        """Resolve generation options once: the manifest's generation defaults, then
        ``overrides`` (``n_docs``, ``num_beams``, any :class:`GenerationParams` field), the
        mode defaulted to the checkpoint's class; validated here and nowhere else."""
        req = GenerationRequest.resolve(
            self.defaults,
            max_positions=self.manifest.generator.max_positions,
            mode=mode,
            vocab_size=self.manifest.generator.vocab_size,
            max_decoder_rows=None,
            **overrides,
        )
        self.retriever.check_n_docs(req.n_docs)  # the more specific error first
        return req.check_decoder_rows(self.max_decoder_rows)

    def _resolve(self, request: GenerationRequest | None, **kwargs: Any) -> GenerationRequest:
        if request is None:
            return self.request(**kwargs)
        given = sorted(k for k, v in kwargs.items() if v is not None)
        if given:
            raise InputError(
                f"pass generation options either in request= or as keywords, not both "
                f"(got request and {', '.join(given)})"
            )
        return request

    # -- retrieval half --------------------------------------------------------------------
    def embed(self, questions: Sequence[str], *, tracer: Tracer | None = None) -> np.ndarray:
        """Question embeddings ``[B, dim]`` float32."""
        return self.retriever.embed(questions, tracer=tracer)

    def retrieve(
        self, questions: Sequence[str], k: int | None = None, *, tracer: Tracer | None = None
    ) -> list[list[Doc]]:
        """Top-``k`` passages per question (default ``n_docs`` of the model), best first."""
        return self.retriever.retrieve(questions, k, tracer=tracer)

    def prepare(
        self, questions: Sequence[str], n_docs: int | None = None, *, tracer: Tracer | None = None
    ) -> GeneratorInputs:
        """Retrieval and context building without generating: what the generator would read
        for ``questions`` with ``n_docs`` passages each (default: the model's)."""
        qs = check_questions(questions)
        return self._retrieve_contexts(qs, self.request(n_docs=n_docs).n_docs, tracer)

    def _retrieve_contexts(
        self, questions: list[str], n_docs: int, tracer: Tracer | None
    ) -> GeneratorInputs:
        self.retriever.require_index()
        self.retriever.check_n_docs(n_docs)
        q = self.retriever.encode(questions, tracer=tracer)
        hits = self.retriever.search(q.embeddings, n_docs, tracer=tracer)
        return self._contexts(questions, q.texts, hits.docs, hits.scores, tracer)

    def _contexts(
        self,
        questions: list[str],
        qtexts: list[str],
        docs: list[list[Doc]],
        scores: np.ndarray,
        tracer: Tracer | None,
    ) -> GeneratorInputs:
        with stage(tracer, "contexts") as info:
            ids, mask = build_generator_inputs(
                qtexts, docs, self.generator_tokenizer, self.defaults
            )
            info["context_shape"] = ids.shape
            info["context_tokens"] = int(mask.sum())
        return GeneratorInputs(questions, docs, scores, ids, mask)

    # -- generation ------------------------------------------------------------------------
    def _decode(
        self,
        inputs: GeneratorInputs,
        req: GenerationRequest,
        tracer: Tracer | None,
        stopping: Cancellation | None,
        streamer: Streamer | None = None,
    ) -> list[GenerationResult]:
        args = (
            self.generator,
            inputs.context_ids,
            inputs.context_mask,
            inputs.doc_scores,
            req.params,
        )
        if req.mode == "token":
            hyps = rag_token.generate(*args, streamer=streamer, stopping=stopping, tracer=tracer)
        else:
            hyps = rag_sequence.generate(*args, stopping=stopping, tracer=tracer)
        out = []
        with stage(tracer, "detokenize"):
            for q, docs, hs in zip(inputs.questions, inputs.docs, hyps):
                seqs = [
                    Hypothesis(
                        self.generator_tokenizer.decode(h.token_ids),
                        list(map(int, h.token_ids)),
                        float(h.score),
                    )
                    for h in hs
                ]
                best = seqs[0]
                out.append(GenerationResult(q, best.text, best.token_ids, best.score, docs, seqs))
        return out

    def generate(
        self,
        questions: Sequence[str],
        mode: str | None = None,
        n_docs: int | None = None,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        num_return_sequences: int | None = None,
        *,
        request: GenerationRequest | None = None,
        tracer: Tracer | None = None,
        stopping: Cancellation | None = None,
        **generation_overrides: Any,
    ) -> list[GenerationResult]:
        """Answer ``questions`` as one batch; one :class:`GenerationResult` per question.

        ``mode``: "token" (RAG-Token) or "sequence" (RAG-Sequence); defaults to the source
        checkpoint's class. Unset parameters come from the manifest's generation config.
        Other keyword arguments (``no_repeat_ngram_size``, ``length_penalty``,
        ``early_stopping``, ...) are :class:`~ragrt.runtime.generation.GenerationParams` fields.
        Or pass ``request=engine.request(...)``, resolved once and reused.
        ``tracer`` (e.g. a :class:`~ragrt.tracing.StageTimer`) sees every stage; cancelling
        ``stopping`` stops the decode before its next step (:class:`~ragrt.errors.Cancelled`).
        Memory grows with ``len(questions) * num_beams * n_docs`` decoder rows.
        """
        qs = check_questions(questions)
        req = self._resolve(
            request,
            mode=mode,
            n_docs=n_docs,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            num_return_sequences=num_return_sequences,
            **generation_overrides,
        )
        inputs = self._retrieve_contexts(qs, req.n_docs, tracer)
        return self._decode(inputs, req, tracer, stopping)

    def generate_from_docs(
        self,
        questions: Sequence[str],
        docs: Sequence[Sequence[Doc]],
        mode: str | None = None,
        *,
        request: GenerationRequest | None = None,
        tracer: Tracer | None = None,
        stopping: Cancellation | None = None,
        **kwargs: Any,
    ) -> list[GenerationResult]:
        """Generate from given docs (with their ``score`` as doc scores), skipping retrieval."""
        qs = check_questions(questions)
        if len(docs) != len(qs) or len({len(d) for d in docs}) != 1 or not docs[0]:
            raise InputError("docs must hold the same non-zero number of Doc per question")
        n = len(docs[0])
        if kwargs.get("n_docs") not in (None, n):
            raise InputError(f"n_docs={kwargs['n_docs']} but the docs hold {n} per question")
        kwargs.pop("n_docs", None)
        req = self._resolve(request, mode=mode, **kwargs).with_n_docs(n)
        qtexts = self.retriever.encode(qs, tracer=tracer).texts
        scores = np.array([[d.score for d in row] for row in docs], dtype=np.float32)
        inputs = self._contexts(qs, qtexts, [list(r) for r in docs], scores, tracer)
        return self._decode(inputs, req, tracer, stopping)

    def generate_each(
        self,
        questions: Sequence[Any],
        *,
        request: GenerationRequest | None = None,
        tracer: Tracer | None = None,
        stopping: Cancellation | None = None,
        **kwargs: Any,
    ) -> list[GenerationResult | RagrtError]:
        """Like :meth:`generate`, but a bad question yields its error in place of its result
        instead of failing the whole batch; the good ones still run as one batch."""
        qs = question_list(questions)
        out: list[GenerationResult | RagrtError | None] = [None] * len(qs)
        good = []
        for i, q in enumerate(qs):
            try:
                check_question(q, i)
                good.append(i)
            except RagrtError as e:
                out[i] = e
        if good:
            res: Sequence[GenerationResult | RagrtError]
            try:  # a parameter error concerns every question
                req = self._resolve(request, **kwargs)
                res = self.generate(
                    [qs[i] for i in good], request=req, tracer=tracer, stopping=stopping
                )
            except RagrtError as e:
                res = [e] * len(good)
            for i, r in zip(good, res):
                out[i] = r
        return [r for r in out if r is not None]

    def stream(
        self,
        question: str,
        *,
        request: GenerationRequest | None = None,
        tracer: Tracer | None = None,
        stopping: Cancellation | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        """Yield the answer's text in pieces as tokens are decided.

        Greedy RAG-Token streams token by token: greedy search feeds a
        :class:`~ragrt.runtime.generation.streaming.TextIteratorStreamer` on a worker thread (a
        piece is held back while it ends in an incomplete UTF-8 character). Closing the
        generator early (``break``, ``close()``) cancels the decode before its next step. Beam
        search and RAG-Sequence only know their best hypothesis at the end: they yield the whole
        answer as one piece (``stopping`` still stops them within a step).
        """
        if not isinstance(question, str):
            raise InputError("stream() takes one question string")
        qs = check_questions([question])
        req = self._resolve(request, **kwargs)
        if req.mode != "token" or req.num_beams != 1:
            yield self.generate(qs, request=req, tracer=tracer, stopping=stopping)[0].text
            return
        cancel = Cancellation(poll=stopping.cancelled if stopping is not None else None)
        streamer = TextIteratorStreamer(self.generator_tokenizer, cancel)

        def work() -> None:
            try:
                inputs = self._retrieve_contexts(qs, req.n_docs, tracer)
                self._decode(inputs, req, tracer, cancel, streamer)
            except BaseException as e:  # re-raised in the consumer
                try:
                    streamer.fail(e)
                except Cancelled:  # the consumer is gone: nobody to tell
                    pass

        worker = threading.Thread(target=work, name="ragrt-stream", daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:  # normal end, error, or the consumer closed us: stop and reap the decode
            cancel.cancel()
            streamer.drain()
            worker.join()
