"""The retrieval half of RAG: question text -> question embedding -> top-k passages.

One :class:`Retriever` serves every caller that turns questions into passages: the engine
(:class:`ragrt.engine.RagEngine` composes a retriever and a generator), the Triton ``retrieve``
and ``question_encoder`` models, and ``ragrt index search``. It also yields the question as the
generator will read it: as in the reference, that is the question-encoder ids decoded back
(lower-cased by an uncased vocabulary, truncated like the ids), not the raw text.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragrt.errors import InputError
from ragrt.inputs import check_questions
from ragrt.results import Doc
from ragrt.retrieval.index import PassageIndex
from ragrt.runtime import manifest as manifest_mod
from ragrt.runtime.contexts import question_strings
from ragrt.runtime.encoders import TextEncoder
from ragrt.runtime.manifest import ArtifactManifest
from ragrt.runtime.sessions import SessionOptions
from ragrt.tracing import Tracer, stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedQuestions:
    """Question embeddings ``[B, dim]`` float32 and the question strings the generator reads."""

    embeddings: np.ndarray
    texts: list[str]


@dataclass(frozen=True)
class Hits:
    """Top-k passages per question, best first, and their doc scores ``[B, k]`` float32."""

    docs: list[list[Doc]]
    scores: np.ndarray


def check_nprobe(nprobe: object) -> None:
    """``nprobe`` is None (the index's calibrated default) or a positive integer."""
    if nprobe is not None and (
        isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe <= 0
    ):
        raise InputError(f"nprobe must be a positive integer (or None), got {nprobe!r}")


class Retriever:
    """A question encoder and (optionally) the passage index it was built for.

    Without an index only :meth:`encode` and :meth:`embed` work. Thread-safe like its parts
    (ONNX Runtime sessions, the locked tokenizer, FAISS searches).
    """

    def __init__(
        self,
        encoder: TextEncoder,
        index: PassageIndex | None = None,
        *,
        nprobe: int | None = None,
        default_k: int = 5,
    ):
        check_nprobe(nprobe)
        self.encoder = encoder
        self.index = index
        self.nprobe = nprobe
        self.default_k = default_k

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def from_manifest(
        cls,
        m: ArtifactManifest,
        index_dir: str | os.PathLike | Sequence[str | os.PathLike] | None,
        precision: str,
        opts: SessionOptions,
        *,
        nprobe: int | None = None,
        index_device: str | None = None,
    ) -> Retriever:
        """The question encoder of a loaded manifest, plus INDEX_DIR(s) checked against it.

        ``index_device`` defaults to ``cpu`` for a CPU encoder, else ``auto`` (GPU if FAISS
        has one).
        """
        check_nprobe(nprobe)  # before anything is opened
        encoder = TextEncoder.from_manifest(m, "question_encoder", precision, opts)
        index = None
        if index_dir is not None:
            device = index_device or ("cpu" if opts.device == "cpu" else "auto")
            index = PassageIndex.open(index_dir, device=device)
            index.check_encoder(m)
        return cls(encoder, index, nprobe=nprobe, default_k=m.generation.n_docs)

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        index_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        precision: str = "fp32",
        device: str = "cpu",
        *,
        index_device: str | None = None,
        nprobe: int | None = None,
        intra_op_threads: int = 0,
        verify: bool = True,
    ) -> Retriever:
        """Open ART_DIR's question encoder (only its files are verified: a Triton ``retrieve``
        model's artifacts need not hold the generator) and INDEX_DIR(s)."""
        m = manifest_mod.load(model_dir, verify=False, precision=precision)
        if verify:
            spec = m.question_encoder
            m.verify([spec.tokenizer, *([spec.onnx[precision]] if precision in spec.onnx else [])])
        opts = SessionOptions(device=device, intra_op_threads=intra_op_threads)
        return cls.from_manifest(
            m, index_dir, precision, opts, nprobe=nprobe, index_device=index_device
        )

    # -- checks --------------------------------------------------------------------------
    def require_index(self) -> PassageIndex:
        if self.index is None:
            raise InputError(
                "this engine was loaded without an index: pass index_dir to RagEngine.load"
            )
        return self.index

    def check_n_docs(self, n_docs: int) -> int:
        """``n_docs`` (already a positive int) fits the index, when there is one."""
        if self.index is not None and n_docs > len(self.index):
            raise InputError(
                f"n_docs={n_docs} is larger than the index ({len(self.index)} passages)"
            )
        return n_docs

    # -- encoding ------------------------------------------------------------------------
    def encode(self, questions: list[str], *, tracer: Tracer | None = None) -> EncodedQuestions:
        """Embeddings and generator-side question strings of already checked ``questions``.

        Tokenized once: a question longer than the encoder's limit is truncated (and logged),
        as the reference truncates it. Stages: ``question_tokenize``, ``question_encode``.
        """
        with stage(tracer, "question_tokenize") as info:
            batch = self.encoder.tokenizer.tokenize(questions, self.encoder.spec.max_length)
            texts = question_strings(self.encoder.tokenizer, batch.ids, batch.mask)
            info["shape"] = batch.ids.shape
        for i in batch.truncated:
            log.warning(
                "question %d is longer than the question encoder's limit of %d tokens: truncated",
                i,
                self.encoder.spec.max_length,
            )
        with stage(tracer, "question_encode"):
            emb = self.encoder.run(batch.ids, batch.mask)
        return EncodedQuestions(emb, texts)

    def embed(self, questions: Sequence[str], *, tracer: Tracer | None = None) -> np.ndarray:
        """Question embeddings ``[B, dim]`` float32."""
        return self.encode(check_questions(questions), tracer=tracer).embeddings

    # -- search --------------------------------------------------------------------------
    def search(self, embeddings: np.ndarray, k: int, *, tracer: Tracer | None = None) -> Hits:
        """The top-``k`` passages of each embedding (``k`` is checked by the index); fails if
        the index returns fewer. Stage: ``search``."""
        index = self.require_index()
        with stage(tracer, "search") as info:
            res = index.search(embeddings, k, nprobe=self.nprobe)
            docs = index.docs(res)
            info["k"] = k
        if any(len(d) < k for d in docs):
            raise InputError(
                f"the index returned fewer than n_docs={k} passages for a question "
                "(raise nprobe or lower n_docs)"
            )
        return Hits(docs, np.asarray(res.scores, dtype=np.float32))

    def retrieve(
        self, questions: Sequence[str], k: int | None = None, *, tracer: Tracer | None = None
    ) -> list[list[Doc]]:
        """Top-``k`` passages per question (default: the model's ``n_docs``), best first."""
        qs = check_questions(questions)
        self.require_index()
        emb = self.encode(qs, tracer=tracer).embeddings
        return self.search(emb, self.default_k if k is None else k, tracer=tracer).docs
