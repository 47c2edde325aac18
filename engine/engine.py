"""RagEngine: the whole pipeline of one RAG model, composed from the stage modules.

text -> question tokens -> question embedding (ONNX Runtime) -> doc ids and scores (FAISS) ->
contexts (exactly as the reference builds them) -> generator encoder states -> KV-cached decode
loop (RAG-Token or RAG-Sequence) -> token ids -> text.

This module only orchestrates: each arrow is a function of its own module, and nothing here
reaches back up the chain.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragrt.errors import InputError, RagrtError
from ragrt.inputs import check_questions
from ragrt.results import Doc, GenerationResult, Hypothesis
from ragrt.retrieval.index import PassageIndex
from ragrt.retrieval.retriever import Retriever
from ragrt.runtime import manifest as manifest_mod
from ragrt.runtime.encoders import TextEncoder
from ragrt.runtime.generator import Seq2SeqGenerator
from ragrt.runtime.manifest import ArtifactManifest
from ragrt.runtime.sessions import SessionOptions
from ragrt.runtime.text import TextTokenizer

MODES = ("token", "sequence")
# T5 has relative positions (no hard limit): cap generation at something still sane
MAX_NEW_TOKENS_NO_POSITIONS = 2048

__all__ = ["RagEngine", "GenerationResult", "Doc", "MODES"]


@dataclass
class _Prepared:
    """One batch of questions after retrieval: what the generator needs."""

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

    # -- input checks ----------------------------------------------------------------------
    def _check_questions(self, questions: Any) -> list[str]:
        return check_questions(questions)

    def _mode(self, mode: str | None) -> str:
        """The decoding mode, defaulting to the checkpoint's class (RagToken / RagSequence)."""
        mode = mode or self.defaults.rag_type
        if mode not in MODES:
            raise InputError(
                f"unknown mode {mode!r}: choose 'token' (RAG-Token) or 'sequence' (RAG-Sequence)"
            )
        return mode

    def _check_n_docs(self, n_docs: int) -> int:
        if isinstance(n_docs, bool) or not isinstance(n_docs, (int, np.integer)) or n_docs <= 0:
            raise InputError(f"n_docs must be a positive integer, got {n_docs!r}")
        return self.retriever.check_n_docs(int(n_docs))

    def _params(self, n_docs: int, **overrides: Any):
        from ragrt.runtime.generation import GenerationParams

        p = GenerationParams.from_defaults(self.defaults, n_docs=n_docs, **overrides)
        limit = self.manifest.generator.max_positions - 1
        if limit <= 0:
            limit = MAX_NEW_TOKENS_NO_POSITIONS
        if p.max_new_tokens > limit:
            raise InputError(
                f"max_new_tokens={p.max_new_tokens} is more than this generator can produce "
                f"({limit}); ask for fewer"
            )
        return p

    # -- retrieval half --------------------------------------------------------------------
    def embed(self, questions: Sequence[str]) -> np.ndarray:
        """Question embeddings ``[B, dim]`` float32."""
        return self.retriever.embed(questions)

    def retrieve(self, questions: Sequence[str], k: int | None = None) -> list[list[Doc]]:
        """Top-``k`` passages per question (default ``n_docs`` of the model), best first."""
        return self.retriever.retrieve(questions, k)

    # -- generation ------------------------------------------------------------------------
    def _prepare(self, questions: list[str], n_docs: int) -> _Prepared:
        q = self.retriever.encode(questions)
        hits = self.retriever.search(q.embeddings, n_docs)
        return self._contexts(questions, q.texts, hits.docs, hits.scores)

    def _contexts(self, questions, qtexts, docs, scores) -> _Prepared:
        from ragrt.runtime.contexts import build_contexts

        d = self.defaults
        strings = build_contexts(qtexts, docs, d)
        ids, mask = self.generator_tokenizer.encode_batch(strings, max_length=d.max_combined_length)
        return _Prepared(questions, docs, scores, ids, mask)

    def _decode(self, prep: _Prepared, mode: str, params, on_token=None) -> list[GenerationResult]:
        from ragrt.runtime.generation import rag_sequence, rag_token

        fn = rag_token.generate if mode == "token" else rag_sequence.generate
        kwargs = {"on_token": on_token} if (mode == "token" and on_token is not None) else {}
        hyps = fn(
            self.generator, prep.context_ids, prep.context_mask, prep.doc_scores, params, **kwargs
        )
        out = []
        for q, docs, hs in zip(prep.questions, prep.docs, hyps):
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
        **generation_overrides: Any,
    ) -> list[GenerationResult]:
        """Answer ``questions`` as one batch; one :class:`GenerationResult` per question.

        ``mode``: "token" (RAG-Token) or "sequence" (RAG-Sequence); defaults to the source
        checkpoint's class. Unset parameters come from the manifest's generation config.
        Other keyword arguments (``no_repeat_ngram_size``, ``length_penalty``,
        ``early_stopping``, ...) are :class:`~ragrt.runtime.generation.GenerationParams` fields.
        Memory grows with ``len(questions) * num_beams * n_docs`` decoder rows.
        """
        return self._generate(
            questions,
            mode,
            n_docs,
            None,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            num_return_sequences=num_return_sequences,
            **generation_overrides,
        )

    def _generate(
        self, questions, mode, n_docs, on_token, **overrides: Any
    ) -> list[GenerationResult]:
        qs = self._check_questions(questions)
        mode = self._mode(mode)
        n = self._check_n_docs(self.defaults.n_docs if n_docs is None else n_docs)
        params = self._params(n, **overrides)
        self.retriever.require_index()
        return self._decode(self._prepare(qs, n), mode, params, on_token)

    def generate_from_docs(
        self,
        questions: Sequence[str],
        docs: Sequence[Sequence[Doc]],
        mode: str | None = None,
        **kwargs: Any,
    ) -> list[GenerationResult]:
        """Generate from given docs (with their ``score`` as doc scores), skipping retrieval."""
        qs = self._check_questions(questions)
        mode = self._mode(mode)
        if len(docs) != len(qs) or len({len(d) for d in docs}) != 1 or not docs[0]:
            raise InputError("docs must hold the same non-zero number of Doc per question")
        n = len(docs[0])
        params = self._params(n, **kwargs)
        qtexts = self.retriever.encode(qs).texts
        scores = np.array([[d.score for d in row] for row in docs], dtype=np.float32)
        prep = self._contexts(qs, qtexts, [list(r) for r in docs], scores)
        return self._decode(prep, mode, params)

    def generate_each(
        self, questions: Sequence[Any], **kwargs: Any
    ) -> list[GenerationResult | RagrtError]:
        """Like :meth:`generate`, but a bad question yields its error in place of its result
        instead of failing the whole batch; the good ones still run as one batch."""
        qs = list(questions)
        out: list[GenerationResult | RagrtError | None] = [None] * len(qs)
        good = []
        for i, q in enumerate(qs):
            try:
                self._check_questions([q])
                good.append(i)
            except RagrtError as e:
                out[i] = InputError(f"question {i}: {e}")
        if good:
            try:
                res = self.generate([qs[i] for i in good], **kwargs)
            except RagrtError as e:  # a parameter error concerns every question
                res = [e] * len(good)
            for i, r in zip(good, res):
                out[i] = r
        return out  # type: ignore[return-value]

    def stream(self, question: str, **kwargs: Any) -> Iterator[str]:
        """Yield the answer's text in pieces as tokens are decided.

        Greedy RAG-Token streams token by token (a piece is held back while it ends in an
        incomplete UTF-8 character). Beam search and RAG-Sequence only know their best
        hypothesis at the end: they yield the whole answer as one piece.
        """
        if not isinstance(question, str):
            raise InputError("stream() takes one question string")
        mode = self._mode(kwargs.pop("mode", None))
        num_beams = kwargs.get("num_beams") or self.defaults.num_beams
        if mode != "token" or num_beams != 1:
            yield self.generate([question], mode=mode, **kwargs)[0].text
            return
        q: queue.Queue = queue.Queue()
        done = object()
        tokens: list[int] = []

        def on_token(step: int, toks: Sequence[int | None]) -> None:
            if toks[0] is not None:
                q.put(int(toks[0]))

        def work() -> None:
            try:
                kw = dict(kwargs)
                n_docs = kw.pop("n_docs", None)
                res = self._generate([question], "token", n_docs, on_token, **kw)
                q.put(("result", res[0]))
            except BaseException as e:  # re-raised in the consumer
                q.put(("error", e))
            finally:
                q.put(done)

        t = threading.Thread(target=work, daemon=True)
        t.start()
        sent = ""
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, tuple):
                kind, val = item
                if kind == "error":
                    raise val
                final = val.text
                if final.startswith(sent) and len(final) > len(sent):
                    yield final[len(sent) :]
                continue
            tokens.append(item)
            text = self.generator_tokenizer.decode(tokens)
            if text.endswith("\ufffd"):
                continue
            if text.startswith(sent) and len(text) > len(sent):
                yield text[len(sent) :]
                sent = text
        t.join()
