"""The client core: everything a request to a ragrt server involves except the I/O, written
once for :class:`~ragrt.serving.client.RagClient` (blocking) and
:class:`~ragrt.serving.client.AsyncRagClient` (asyncio).

Every operation (ask, retrieve, embed, health, stream) is a *plan*: a generator that builds the
request arrays (:mod:`ragrt.serving.protocol`), yields :class:`Call` objects - "infer this",
"read the model config", "open a stream", "sleep" - and receives their results (or has their
exception thrown in), decodes the responses, retries connection errors with backoff and maps
server errors to ragrt errors. A transport executes the calls; :func:`run_blocking` /
:func:`run_async` drive a plan on a blocking / asyncio transport, :func:`iterate_blocking` /
:func:`iterate_async` drive a streaming plan, whose :class:`Piece` items go to the caller.
So the retry loop, the request building and the response decoding exist once, and the two
clients differ only in ``time.sleep`` versus ``await asyncio.sleep``.

Retries: connection errors (server down, restarting, connection reset) are retried
``retries`` times with waits ``backoff``, ``2*backoff``, ... capped at ``max_backoff``; an
answer from the server is never retried; after the last retry a :class:`ServerError` says so.
A stream is retried only before its first piece; a stream that ends without its final response
(the server crashed, the connection was cut) raises :class:`ServerError`, never a silently
truncated answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ragrt.errors import InputError, RagrtError, ServerError
from ragrt.inputs import check_questions
from ragrt.results import Doc, GenerationResult
from ragrt.serving import protocol
from ragrt.serving.endpoint import Endpoint, parse_url

T = TypeVar("T")
DEFAULT_TIMEOUT = 120.0
_RETRYABLE_GRPC = {"StatusCode.UNAVAILABLE"}
_AIO_CONNECTION_ERRORS = ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError")


@dataclass(frozen=True)
class Call:
    """One request to a transport: the name of its method and the arguments."""

    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Piece:
    """A piece of streamed text for the caller (streaming plans only)."""

    text: str


@dataclass(frozen=True)
class StreamEvent:
    """One response of a stream, decoded: its text and whether it is the last."""

    text: str
    final: bool


class HttpStatusError(Exception):
    """An HTTP error response to a streaming request: its status and the server's message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


#: a plan: yields calls (and pieces, when streaming), receives results, returns a value
Plan = Generator[Any, Any, T]


# -- error classification ------------------------------------------------------------------
def is_connection_error(e: BaseException) -> bool:
    """A failure to reach the server (worth retrying), as opposed to an answer from it."""
    from tritonclient.utils import InferenceServerException

    if isinstance(e, InferenceServerException):
        status = str(e.status() or "")
        msg = (e.message() or "").lower()
        if status in _RETRYABLE_GRPC:
            return "unknown model" not in msg
        # tritonclient.http wraps some transport failures without a status
        return not status and any(w in msg for w in ("connect", "reset", "broken pipe", "closed"))
    if isinstance(e, HttpStatusError):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return not isinstance(e, TimeoutError) or "connect" in str(e).lower()
    if isinstance(e, OSError):
        return True  # socket errors: refused, unreachable, reset
    name = type(e).__name__
    return name in (
        "ConnectionTimeout",
        "HTTPConnectionClosed",
        "gaierror",
        *_AIO_CONNECTION_ERRORS,
    )


def server_error(e: BaseException, url: str) -> RagrtError:
    """An answer from the server (or a failure mid-answer) -> the ragrt error it names."""
    from tritonclient.utils import InferenceServerException

    if isinstance(e, HttpStatusError):
        if e.status == 404:
            return ServerError(f"{e.message} (server {url})")
        return protocol.error_from_text(e.message, InputError if e.status == 400 else ServerError)
    if not isinstance(e, InferenceServerException):
        return ServerError(f"{type(e).__name__} talking to {url}: {e}")
    status = str(e.status() or "")
    msg = e.message() or str(e)
    if "unknown model" in msg.lower() or status in ("StatusCode.NOT_FOUND", "404"):
        return ServerError(
            f"{msg} (server {url}; is the repository built with this model? "
            "`ragrt triton build-repo` writes rag, rag_stream, retrieve, question_encoder)"
        )
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return ServerError(f"no answer from {url} within the client timeout: {msg}")
    default = InputError if status in ("StatusCode.INVALID_ARGUMENT", "400") else ServerError
    return protocol.error_from_text(msg, default)


# -- the core --------------------------------------------------------------------------------
class ClientCore:
    """Settings of a client and its plans (see the module docstring)."""

    def __init__(
        self,
        url: str,
        protocol: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        rag_model: str = "rag",
        stream_model: str = "rag_stream",
        retrieve_model: str = "retrieve",
        encoder_model: str = "question_encoder",
    ):
        self.endpoint: Endpoint = parse_url(url, protocol)
        if timeout is not None and timeout <= 0:
            raise InputError(f"timeout must be positive seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be an integer >= 0, got {retries!r}")
        self.timeout = timeout
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.models = {
            "rag": rag_model,
            "stream": stream_model,
            "retrieve": retrieve_model,
            "encoder": encoder_model,
        }
        self._batch: dict[str, int] = {}

    @property
    def url(self) -> str:
        return self.endpoint.host_port

    # -- retries ---------------------------------------------------------------------------
    def delays(self) -> Iterator[float]:
        d = self.backoff
        for _ in range(self.retries):
            yield min(d, self.max_backoff)
            d *= 2

    def unreachable(self, attempts: int, last: BaseException) -> ServerError:
        return ServerError(
            f"cannot reach the ragrt server at {self.url} ({self.endpoint.protocol}) after "
            f"{attempts} attempt(s): {last}; is `ragrt serve` running there?"
        )

    def retrying(self, call: Call) -> Plan[Any]:
        """``call`` with retries on connection errors; a server's answer mapped to its error."""
        delays = self.delays()
        attempts = 0
        while True:
            attempts += 1
            try:
                return (yield call)
            except RagrtError:
                raise
            except Exception as e:
                if not is_connection_error(e):
                    raise server_error(e, self.url) from None
                yield Call("reset")
                delay = next(delays, None)
                if delay is None:
                    raise self.unreachable(attempts, e) from None
                yield Call("sleep", (delay,))

    # -- requests --------------------------------------------------------------------------
    @staticmethod
    def gen_params(gen: dict[str, Any]) -> dict[str, Any]:
        allowed = {"mode", *protocol.PARAM_TENSORS}
        bad = sorted(set(gen) - allowed)
        if bad:
            raise InputError(
                f"unknown generation parameter(s) {', '.join(bad)} for a ragrt server: "
                f"choose from {', '.join(sorted(allowed))}"
            )
        params = {k: v for k, v in gen.items() if v is not None}
        protocol.request_arrays(["?"], params)  # parameter types and ranges, checked once
        return params

    def max_batch(self, model: str) -> Plan[int]:
        """The model's ``max_batch_size`` (0: no batching), asked once per client."""
        if model not in self._batch:
            cfg = yield from self.retrying(Call("model_config", (model,)))
            self._batch[model] = int(cfg.get("max_batch_size", 0) or 0)
        return self._batch[model]

    def infer_chunks(
        self, kind: str, qs: list[str], params: dict[str, Any], outputs: Sequence[str]
    ) -> Plan[list[tuple[list[str], Any]]]:
        """``qs`` sent to model ``kind`` in chunks of its max batch size: (chunk, response)."""
        for e in _unencodable(qs).values():
            raise e  # before anything is sent
        model = self.models[kind]
        size = yield from self.max_batch(model)
        step = max(1, size)
        out = []
        for i in range(0, len(qs), step):
            chunk = qs[i : i + step]
            arrays = protocol.request_arrays(chunk, params, batched=size > 0)
            out.append((chunk, (yield from self.retrying(Call("infer", (model, arrays, outputs))))))
        return out

    # -- operations ------------------------------------------------------------------------
    def health(self) -> Plan[dict[str, Any]]:
        """``{"live", "ready", "models": {name: ready}}``; no retries, never raises for an
        unreachable server (``live`` is false and ``error`` says why)."""
        out: dict[str, Any] = {
            "url": self.url,
            "protocol": self.endpoint.protocol,
            "live": False,
            "ready": False,
            "models": {},
        }
        try:
            out["live"] = bool((yield Call("is_server_live")))
            out["ready"] = bool((yield Call("is_server_ready")))
            for m in self.models.values():
                try:
                    out["models"][m] = bool((yield Call("is_model_ready", (m,))))
                except Exception:  # noqa: BLE001 - a model that is not in the repository
                    out["models"][m] = False
        except Exception as e:  # noqa: BLE001
            yield Call("reset")
            out["error"] = f"{type(e).__name__}: {e}"
        return out

    def ask(self, question: str, gen: dict[str, Any]) -> Plan[GenerationResult]:
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}")
        params = self.gen_params(gen)
        protocol.utf8(question, "the question")
        (res,) = yield from self._ask_chunk([question], params)
        if isinstance(res, RagrtError):
            raise res
        return res

    def ask_batch(self, questions: Sequence[str], gen: dict[str, Any]) -> Plan[list[Any]]:
        """Answers; a bad question raises its error (``question 3: ...``) - see
        :meth:`ask_each` for the good answers despite bad questions."""
        qs = check_questions(questions, require_text=False)
        for e in _unencodable(qs).values():
            raise e  # before anything is sent
        results = yield from self.ask_each(qs, gen)
        for r in results:
            if isinstance(r, RagrtError):
                raise r
        return results

    def ask_each(
        self, questions: Sequence[str], gen: dict[str, Any]
    ) -> Plan[list[GenerationResult | RagrtError]]:
        """Like ``RagEngine.generate_each``: a bad question gets its error in place of its
        result; the others are answered (in chunks of the model's max batch size)."""
        qs = check_questions(questions, require_text=False)
        params = self.gen_params(gen)
        bad = _unencodable(qs)
        out: list[GenerationResult | RagrtError | None] = [bad.get(i) for i in range(len(qs))]
        good = [i for i in range(len(qs)) if i not in bad]
        step = max(1, (yield from self.max_batch(self.models["rag"])))
        for s in range(0, len(good), step):
            idx = good[s : s + step]
            answers = yield from self._ask_chunk([qs[i] for i in idx], params)
            for i, a in zip(idx, answers):
                out[i] = InputError(f"question {i}: {a}") if isinstance(a, InputError) else a
        return out  # type: ignore[return-value]

    def _ask_chunk(
        self, chunk: list[str], params: dict[str, Any]
    ) -> Plan[list[GenerationResult | RagrtError]]:
        """One request; when the server refuses it for bad input, its questions are asked one
        by one, so the error lands on the question that caused it."""
        try:
            ((_, r),) = yield from self.infer_chunks("rag", chunk, params, protocol.RAG_OUTPUTS)
            return list(protocol.unpack_results(r.as_numpy, chunk))
        except InputError as e:
            if len(chunk) == 1:
                return [e]
        except RagrtError as e:
            return [e] * len(chunk)
        out: list[GenerationResult | RagrtError] = []
        for q in chunk:
            out += yield from self._ask_chunk([q], params)
        return out

    def retrieve(self, questions: Sequence[str], k: int | None) -> Plan[list[list[Doc]]]:
        qs = check_questions(questions, require_text=False)
        parts = yield from self.infer_chunks("retrieve", qs, {"n_docs": k}, protocol.DOC_OUTPUTS)
        return [d for chunk, r in parts for d in protocol.unpack_docs(r.as_numpy, len(chunk))]

    def embed(self, questions: Sequence[str]) -> Plan[np.ndarray]:
        qs = check_questions(questions, require_text=False)
        parts = yield from self.infer_chunks("encoder", qs, {}, ["EMBEDDINGS"])
        return np.concatenate(
            [
                np.asarray(r.as_numpy("EMBEDDINGS"), dtype=np.float32).reshape(len(chunk), -1)
                for chunk, r in parts
            ]
        )

    def stream_request(self, question: str, gen: dict[str, Any]) -> tuple[dict, dict]:
        """Checked now (not at the first piece): the arrays (gRPC) and JSON body (HTTP)."""
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}")
        params = self.gen_params(gen)
        arrays = protocol.request_arrays([question], params, batched=False)
        return arrays, protocol.stream_body(question, params)

    def stream(self, arrays: dict[str, np.ndarray], body: dict[str, Any]) -> Plan[None]:
        """Yields :class:`Piece` items of ``rag_stream``'s answer until its final response."""
        model = self.models["stream"]
        delays = self.delays()
        attempts = 0
        while True:
            attempts += 1
            read: list[StreamEvent] = []
            handle = None
            try:
                handle = yield Call("open_stream", (model, arrays, body))
                yield from self._pieces(handle, read)
                return
            except RagrtError:
                raise
            except Exception as e:
                if read or not is_connection_error(e):
                    raise server_error(e, self.url) from None
                if handle is not None:
                    yield Call("close_stream", (handle,))
                delay = next(delays, None)
                if delay is None:
                    raise self.unreachable(attempts, e) from None
                yield Call("sleep", (delay,))

    def _pieces(self, handle: Any, read: list[StreamEvent]) -> Plan[None]:
        """The pieces of one open stream up to its final response (events appended to
        ``read``: a stream that has answered is not retried)."""
        while True:
            event = yield Call("next_event", (handle,))
            if event is None:
                raise ServerError(
                    f"the stream from {self.url} ended without its final response (the "
                    "server stopped or the connection was cut): the answer is incomplete"
                )
            read.append(event)
            if event.text:
                yield Piece(event.text)
            if event.final:
                return


def _unencodable(qs: list[str]) -> dict[int, InputError]:
    """Questions that cannot be sent (no UTF-8 form), by index, with their errors."""
    bad = {}
    for i, q in enumerate(qs):
        try:
            protocol.utf8(q, f"question {i}")
        except InputError as e:
            bad[i] = e
    return bad


# -- drivers ---------------------------------------------------------------------------------
def run_blocking(transport: Any, plan: Plan[T]) -> T:
    """Run ``plan`` to its return value, executing its calls on a blocking ``transport``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = plan.throw(error) if error is not None else plan.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = transport.execute(call), None
        except Exception as e:  # noqa: BLE001 - handed to the plan, which decides
            value, error = None, e


async def run_async(transport: Any, plan: Plan[T]) -> T:
    """:func:`run_blocking` on an asyncio ``transport`` (``await transport.execute(call)``)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = plan.throw(error) if error is not None else plan.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = await transport.execute(call), None
        except Exception as e:  # noqa: BLE001 - handed to the plan, which decides
            value, error = None, e


def iterate_blocking(transport: Any, plan: Plan[None]) -> Iterator[str]:
    """The pieces of a streaming ``plan``; streams it opened are closed however it ends
    (also when the caller stops iterating early)."""
    opened: list[Any] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                item = plan.throw(error) if error is not None else plan.send(value)
            except StopIteration:
                return
            value, error = None, None
            if isinstance(item, Piece):
                yield item.text
                continue
            try:
                value = transport.execute(item)
            except Exception as e:  # noqa: BLE001 - handed to the plan, which decides
                error = e
            if item.method == "open_stream" and error is None:
                opened.append(value)
    finally:
        plan.close()
        for h in opened:
            transport.execute(Call("close_stream", (h,)))


async def iterate_async(transport: Any, plan: Plan[None]) -> AsyncIterator[str]:
    """:func:`iterate_blocking` on an asyncio ``transport``."""
    opened: list[Any] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                item = plan.throw(error) if error is not None else plan.send(value)
            except StopIteration:
                return
            value, error = None, None
            if isinstance(item, Piece):
                yield item.text
                continue
            try:
                value = await transport.execute(item)
            except Exception as e:  # noqa: BLE001 - handed to the plan, which decides
                error = e
            if item.method == "open_stream" and error is None:
                opened.append(value)
    finally:
        plan.close()
        for h in opened:
            await transport.execute(Call("close_stream", (h,)))
