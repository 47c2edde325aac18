"""The Python-backend models of a ragrt repository (imported by the thin ``*/1/model.py``).

Each model instance builds what it needs once in ``initialize`` (a :class:`RagEngine`; a
:class:`~ragrt.retrieval.retriever.Retriever` with its index for ``retrieve`` and without one for
``question_encoder``) and translates Triton tensors <-> engine calls with
:mod:`ragrt.serving.protocol`. Generation parameters become one
:class:`~ragrt.runtime.generation.request.GenerationRequest` per request (``RagEngine.request``).

Nothing a request sends can take the server down: every request is parsed and answered on its
own, and any exception becomes that request's error response (``[code] message``). Requests the
dynamic batcher delivers together are grouped by their generation parameters and run as one
engine batch per group; when a merged batch fails, its requests are retried one by one so that
one request's failure never becomes another's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ragrt.errors import ArtifactError, InputError, RagrtError
from ragrt.serving import protocol

log = logging.getLogger("ragrt.triton")


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # only importable inside the stub

    return pb_utils


def _params(model_config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def open_engine(
    load: str,
    model_dir: Path,
    index_dirs: list[Path],
    precision: str,
    device: str,
    nprobe: int | None,
    threads: int,
) -> Any:
    """What one model needs: ``full`` (RagEngine), ``retrieve`` (a Retriever: question encoder
    + index), ``encoder`` (a Retriever without index), ``tokenizer`` (question tokenizer only)."""
    if load == "full":
        from ragrt.engine import RagEngine

        return RagEngine.load(
            model_dir,
            index_dirs or None,
            precision=precision,
            device=device,
            nprobe=nprobe,
            intra_op_threads=threads,
        )
    if load == "tokenizer":
        from ragrt.runtime import manifest as manifest_mod
        from ragrt.runtime.text import TextTokenizer

        m = manifest_mod.load(model_dir, verify=False, precision=precision)
        spec = m.question_encoder
        m.verify([spec.tokenizer])
        tok = TextTokenizer(
            m.path(spec.tokenizer),
            pad_token_id=spec.pad_token_id,
            clean_up=spec.clean_up_tokenization_spaces,
        )
        return _Tokenizer(tok, spec)
    from ragrt.retrieval.retriever import Retriever

    if load == "retrieve":
        if not index_dirs:
            raise ArtifactError("the retrieve model has no index (ragrt_index_dirs is empty)")
    elif load != "encoder":
        raise ArtifactError(f"unknown ragrt_load {load!r} in the model config")
    return Retriever.load(
        model_dir,
        index_dirs if load == "retrieve" else None,
        precision,
        device,
        nprobe=nprobe,
        intra_op_threads=threads,
    )


class _Tokenizer:
    def __init__(self, tok: Any, spec: Any):
        self.tok, self.spec = tok, spec

    def __call__(self, questions: list[str]) -> dict[str, np.ndarray]:
        ids, mask = self.tok.encode_batch(questions, max_length=self.spec.max_length)
        out = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.spec.input_names:
            out["token_type_ids"] = np.zeros_like(ids)
        return {n: out[n] for n in self.spec.input_names}


class _Model:
    """Shared ``initialize`` / error handling; subclasses implement ``_execute``."""

    def initialize(self, args: dict[str, Any]) -> None:
        logging.basicConfig(
            level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        self.model_config = json.loads(args["model_config"])
        self.name = args.get("model_name", "?")
        p = _params(self.model_config)
        self.params = p
        self.batched = int(self.model_config.get("max_batch_size", 0)) > 0
        if args.get("model_instance_kind") == "GPU":
            # ONNX Runtime opens CUDA lazily: pin this instance to its GPU before any session
            os.environ["CUDA_VISIBLE_DEVICES"] = str(args.get("model_instance_device_id", "0"))
        base = Path(args["model_repository"])
        art = (base / p.get("ragrt_artifacts", "artifacts")).resolve()
        model_dir = art / p.get("ragrt_model_dir", "model")
        index_dirs = [art / d for d in json.loads(p.get("ragrt_index_dirs") or "[]")]
        nprobe = int(p["ragrt_nprobe"]) if p.get("ragrt_nprobe") else None
        # CPU: small engine calls on threads keep the cores busier than one big batch (the
        # ONNX Runtime sessions are thread-safe); GPU: one batch per call is what it wants
        par = int(p.get("ragrt_parallel", 0) or 0)
        if par <= 0:
            par = (
                1
                if p.get("ragrt_device", "cpu") != "cpu"
                else min(8, max(1, int(self.model_config.get("max_batch_size", 1) or 1)))
            )
        self.parallel = par
        self.limits = protocol.Limits(
            max_n_docs=int(p.get("ragrt_max_n_docs", 50)),
            max_num_beams=int(p.get("ragrt_max_num_beams", 16)),
            max_decoder_rows=int(p.get("ragrt_max_decoder_rows", 4096)),
        )
        self.engine = open_engine(
            p.get("ragrt_load", "full"),
            model_dir,
            index_dirs,
            p.get("ragrt_precision", "fp32"),
            p.get("ragrt_device", "cpu"),
            nprobe,
            int(p.get("ragrt_intra_op_threads", 0)),
        )
        if hasattr(self.engine, "max_decoder_rows"):  # the server's limit is the operator's
            self.engine.max_decoder_rows = self.limits.max_decoder_rows
        log.info("%s ready (%s, %s)", self.name, p.get("ragrt_load"), model_dir)

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _getter(request: Any) -> Callable[[str], np.ndarray | None]:
        pb = _pb()

        def get(name: str) -> np.ndarray | None:
            t = pb.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        return get

    def _error(self, e: BaseException) -> Any:
        pb = _pb()
        if not isinstance(e, RagrtError):
            log.error("%s: unexpected error\n%s", self.name, "".join(traceback.format_exception(e)))
        code = None
        if isinstance(e, InputError):
            code = getattr(pb.TritonError, "INVALID_ARG", None)
        elif not isinstance(e, RagrtError) or isinstance(e, ArtifactError):
            code = getattr(pb.TritonError, "INTERNAL", None)
        err = (
            pb.TritonError(protocol.error_text(e))
            if code is None
            else pb.TritonError(protocol.error_text(e), code)
        )
        return pb.InferenceResponse(output_tensors=[], error=err)

    def _ok(self, arrays: dict[str, np.ndarray]) -> Any:
        pb = _pb()
        if not self.batched:
            arrays = {k: v[0] for k, v in arrays.items()}
        return pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in arrays.items()])

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return self._execute(requests)
        except BaseException as e:  # a bug in grouping: still answer every request
            return [self._error(e) for _ in requests]

    def _execute(self, requests: list[Any]) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _grouped(
        self,
        items: list[tuple[int, list[str], Any]],
        run: Callable[[list[str], Any], list[Any]],
        max_rows: int | None = None,
    ) -> dict[int, Any]:
        """Run requests with equal keys together: one engine call per chunk of at most
        ``max_rows`` rows, each chunk split into up to ``parallel`` pieces run on threads (the
        engine's ONNX Runtime sessions run concurrently; small batches on several threads use
        a CPU better than one large batch on one). Returns request index -> list of row
        results, or the exception for that request."""
        groups: dict[Any, list[tuple[int, list[str]]]] = {}
        for i, qs, key in items:
            groups.setdefault(key, []).append((i, qs))
        pieces: list[tuple[Any, list[tuple[int, list[str]]]]] = []
        for key, reqs in groups.items():
            for chunk in _split_rows(reqs, max_rows):
                n = sum(len(q) for _, q in chunk)
                size = -(-n // max(1, min(self.parallel, len(chunk))))
                pieces += [(key, piece) for piece in _split_rows(chunk, size)]

        def run_piece(piece: tuple[Any, list[tuple[int, list[str]]]]) -> dict[int, Any]:
            key, ch = piece
            out: dict[int, Any] = {}
            try:
                res = run([q for _, rq in ch for q in rq], key)
                pos = 0
                for i, rq in ch:
                    out[i] = res[pos : pos + len(rq)]
                    pos += len(rq)
            except Exception as e:
                if len(ch) == 1:
                    return {ch[0][0]: e}
                for i, rq in ch:  # isolate: one request's failure is not the others'
                    try:
                        out[i] = run(rq, key)
                    except Exception as e2:
                        out[i] = e2
            return out

        out: dict[int, Any] = {}
        if len(pieces) > 1 and self.parallel > 1:
            for r in self._pool().map(run_piece, pieces):
                out.update(r)
        else:
            for p in pieces:
                out.update(run_piece(p))
        return out

    parallel = 1
    _executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.parallel, thread_name_prefix="ragrt-exec")
        return self._executor


def _split_rows(
    reqs: list[tuple[int, list[str]]], max_rows: int | None
) -> list[list[tuple[int, list[str]]]]:
    """Consecutive runs of whole requests with at most ``max_rows`` rows each (a single larger
    request stays alone)."""
    chunks: list[list[tuple[int, list[str]]]] = []
    chunk: list[tuple[int, list[str]]] = []
    rows = 0
    for r in reqs:
        if chunk and max_rows is not None and rows + len(r[1]) > max_rows:
            chunks.append(chunk)
            chunk, rows = [], 0
        chunk.append(r)
        rows += len(r[1])
    if chunk:
        chunks.append(chunk)
    return chunks


class RagModel(_Model):
    """``rag``: QUESTION (+ optional generation parameters) -> answer, token ids, score, docs."""

    def _rows_limit(self, rows: int, req: Any) -> int:
        """How many questions of ``req`` fit the server's decoder-row limit in one call
        (``rows`` questions of one request must fit together)."""
        per_q = req.decoder_rows
        if rows * per_q > self.limits.max_decoder_rows:
            raise InputError(
                f"request too large: {rows} question(s) x {req.num_beams} "
                f"beam(s) x {req.n_docs} docs = {rows * per_q} decoder rows, "
                f"this server allows {self.limits.max_decoder_rows}; send fewer questions, beams "
                "or docs"
            )
        return max(1, self.limits.max_decoder_rows // per_q)

    def _execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        items = []
        for i, r in enumerate(requests):
            try:
                qs, kw = protocol.parse_gen_request(
                    self._getter(r), self.limits, batched=self.batched
                )
                req = self.engine.request(**kw)  # resolved and validated once per request
                self._rows_limit(len(qs), req)
                items.append((i, qs, req))
            except Exception as e:
                responses[i] = self._error(e)
        results: dict[int, Any] = {}
        for req in dict.fromkeys(key for _, _, key in items):  # equal requests batch together
            sub = [it for it in items if it[2] == req]
            results.update(
                self._grouped(
                    sub,
                    lambda qs, k: self.engine.generate(qs, request=k),
                    self._rows_limit(1, req),
                )
            )
        for i, res in results.items():
            responses[i] = (
                self._error(res)
                if isinstance(res, BaseException)
                else self._ok(protocol.pack_results(res))
            )
        return responses


class RetrieveModel(_Model):
    """``retrieve``: QUESTION (+ N_DOCS) -> DOC_IDS, DOC_SCORES, DOC_TITLES, DOC_TEXTS."""

    def _execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        items = []
        for i, r in enumerate(requests):
            try:
                qs, k = protocol.parse_retrieve_request(
                    self._getter(r), self.limits, batched=self.batched
                )
                items.append((i, qs, k))
            except Exception as e:
                responses[i] = self._error(e)
        results = self._grouped(items, lambda qs, k: self.engine.retrieve(qs, k))
        for i, res in results.items():
            responses[i] = (
                self._error(res)
                if isinstance(res, BaseException)
                else self._ok(protocol.pack_docs(res))
            )
        return responses


class QuestionEncoderModel(_Model):
    """``question_encoder``: QUESTION -> EMBEDDINGS ``[dim]`` float32."""

    def _execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        items = []
        for i, r in enumerate(requests):
            try:
                items.append((i, protocol.parse_questions(self._getter(r), self.batched), None))
            except Exception as e:
                responses[i] = self._error(e)
        results = self._grouped(items, lambda qs, _k: list(self.engine.embed(qs)))
        for i, res in results.items():
            responses[i] = (
                self._error(res)
                if isinstance(res, BaseException)
                else self._ok({"EMBEDDINGS": np.stack(res).astype(np.float32)})
            )
        return responses


class TokenizerModel(_Model):
    """``question_tokenizer`` (native flavor): QUESTION -> the ONNX encoder's int64 inputs."""

    def _execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for r in requests:
            try:
                qs = protocol.parse_questions(self._getter(r), self.batched)
                responses.append(self._ok(self.engine(qs)))
            except Exception as e:
                responses.append(self._error(e))
        return responses


class RagStreamModel(_Model):
    """``rag_stream`` (decoupled): one response per text piece as the answer is generated;
    the last one carries ``FINAL = true`` and the final-response flag.

    ``execute`` only parses and hands each request to a worker thread, so one instance streams
    ``ragrt_stream_workers`` answers at a time while new requests keep arriving.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        workers = int(self.params.get("ragrt_stream_workers", 4))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ragrt-stream")
        self._lock = threading.Lock()

    def execute(self, requests: list[Any]) -> None:
        for r in requests:
            sender = None
            try:
                sender = r.get_response_sender()
                q, kw = protocol.parse_gen_request(self._getter(r), self.limits, batched=False)
                req = self.engine.request(**kw)
                if req.decoder_rows > self.limits.max_decoder_rows:
                    raise InputError(
                        f"request too large: {req.decoder_rows} decoder rows (beams x docs), "
                        f"this server allows {self.limits.max_decoder_rows}"
                    )
                self.pool.submit(self._stream, sender, q[0], req)
            except Exception as e:
                if sender is not None:
                    self._send(sender, self._error(e), final=True)
        return None

    def _send(self, sender: Any, response: Any, final: bool) -> None:
        pb = _pb()
        try:
            if final:
                sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(response)
        except Exception as e:  # the client went away: nothing left to answer
            log.info("%s: could not send a response (%s)", self.name, e)

    def _stream(self, sender: Any, question: str, req: Any) -> None:
        from ragrt.runtime.generation.streaming import Cancellation

        # the decode polls the sender every step: a client that went away stops it within one
        poll = getattr(sender, "is_cancelled", None)
        stopping = Cancellation(poll=poll) if poll is not None else None
        held: str | None = None
        try:
            for piece in self.engine.stream(question, request=req, stopping=stopping):
                if held is not None:
                    self._send(sender, self._ok(protocol.stream_arrays(held, False)), final=False)
                held = piece
            self._send(sender, self._ok(protocol.stream_arrays(held or "", True)), final=True)
        except BaseException as e:
            self._send(sender, self._error(e), final=True)

    def _ok(self, arrays: dict[str, np.ndarray]) -> Any:
        pb = _pb()
        return pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in arrays.items()])

    def finalize(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
