"""Clients of a ragrt Triton server: :class:`RagClient` (threads) and :class:`AsyncRagClient`
(asyncio), over gRPC or HTTP, with the engine's result types.

::

    from ragrt.serving.client import RagClient

    client = RagClient("localhost:8001")                # gRPC (or "http://localhost:8000")
    res = client.ask("who wrote hamlet?", n_docs=5, num_beams=4)
    print(res.text, [d.title for d in res.docs])
    for piece in client.stream("who wrote hamlet?"):   # gRPC streaming on rag_stream
        print(piece, end="", flush=True)

Connection errors (server down, restarting, connection reset) are retried with exponential
backoff (``retries`` times, waits ``backoff``, ``2*backoff``, ... capped at ``max_backoff``);
errors the server answers with are never retried: they become the ragrt error named by the
code in the server's message (:class:`~ragrt.errors.InputError` for bad input, ...), carrying
the server's message. After the last retry a :class:`~ragrt.errors.ServerError` says so.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragrt.errors import InputError, RagrtError, ServerError
from ragrt.inputs import check_questions
from ragrt.results import Doc, GenerationResult
from ragrt.serving import protocol

__all__ = ["RagClient", "AsyncRagClient", "parse_url"]

DEFAULT_TIMEOUT = 120.0

_RETRYABLE_GRPC = {"StatusCode.UNAVAILABLE"}


@dataclass(frozen=True)
class Endpoint:
    host_port: str
    protocol: str  # grpc | http
    ssl: bool = False


def parse_url(url: str, protocol: str | None = None) -> Endpoint:
    """``host:port``, ``grpc://host:port``, ``http(s)://host:port`` -> endpoint.

    The protocol comes from ``protocol``, else the scheme, else the port (8000 -> http),
    else gRPC.
    """
    if not isinstance(url, str) or not url.strip():
        raise InputError("the server URL is empty: pass host:port (e.g. localhost:8001)")
    if protocol is not None and protocol not in ("grpc", "http"):
        raise InputError(f"unknown protocol {protocol!r}: choose grpc or http")
    u = url.strip()
    scheme = None
    if "://" in u:
        scheme, u = u.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("grpc", "http", "https", "grpcs"):
            raise InputError(f"unknown URL scheme {scheme!r} in {url!r}: use grpc:// or http://")
    u = u.rstrip("/")
    if "/" in u:
        raise InputError(f"the server URL {url!r} must be host:port, without a path")
    try:
        parsed = urllib.parse.urlsplit("//" + u)
        port = parsed.port
    except ValueError:
        raise InputError(f"bad port in server URL {url!r}") from None
    if not parsed.hostname:
        raise InputError(f"no host in server URL {url!r}")
    proto = protocol
    if proto is None and scheme is not None:
        proto = "http" if scheme.startswith("http") else "grpc"
    if proto is None:
        proto = "http" if port in (8000, 80, 443) else "grpc"
    if port is None:
        u = f"{u}:{8000 if proto == 'http' else 8001}"
    return Endpoint(u, proto, ssl=scheme in ("https", "grpcs"))


def _is_connection_error(e: BaseException) -> bool:
    """A failure to reach the server (worth retrying), as opposed to an answer from it."""
    from tritonclient.utils import InferenceServerException

    if isinstance(e, InferenceServerException):
        status = str(e.status() or "")
        msg = (e.message() or "").lower()
        if status in _RETRYABLE_GRPC:
            return "unknown model" not in msg
        # tritonclient.http wraps some transport failures without a status
        return not status and any(w in msg for w in ("connect", "reset", "broken pipe", "closed"))
    if isinstance(e, (ConnectionError, TimeoutError)):
        return not isinstance(e, TimeoutError) or "connect" in str(e).lower()
    if isinstance(e, OSError):
        return True  # socket errors: refused, unreachable, reset
    name = type(e).__name__
    return name in ("ConnectionTimeout", "HTTPConnectionClosed", "gaierror")


def _server_error(e: BaseException, url: str) -> RagrtError:
    """An answer from the server (InferenceServerException) -> the ragrt error it names."""
    from tritonclient.utils import InferenceServerException

    if not isinstance(e, InferenceServerException):
        return ServerError(f"{type(e).__name__} talking to {url}: {e}")
    status = str(e.status() or "")
    msg = e.message() or str(e)
    if "unknown model" in msg.lower() or status in ("StatusCode.NOT_FOUND", "404"):
        return ServerError(
            f"{msg} (server {url}; is the repository built with this model? "
            "`ragrt triton build-repo` writes rag, rag_stream, retrieve, question_encoder)"
        )
    default = InputError if status in ("StatusCode.INVALID_ARGUMENT", "400") else ServerError
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return ServerError(f"no answer from {url} within the client timeout: {msg}")
    return protocol.error_from_text(msg, default)


def _check_questions(questions: Any) -> list[str]:
    # blank questions go to the server, which answers them with a per-item error
    return check_questions(questions, require_text=False)


class _Base:
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
        self.endpoint = parse_url(url, protocol)
        self.url = self.endpoint.host_port
        self.protocol = self.endpoint.protocol
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

    def _delays(self) -> Iterator[float]:
        d = self.backoff
        for _ in range(self.retries):
            yield min(d, self.max_backoff)
            d *= 2

    def _unreachable(self, attempts: int, last: BaseException) -> ServerError:
        return ServerError(
            f"cannot reach the ragrt server at {self.url} ({self.protocol}) after {attempts} "
            f"attempt(s): {last}; is `ragrt serve` running there?"
        )

    @staticmethod
    def _gen_params(gen: dict[str, Any]) -> dict[str, Any]:
        allowed = {"mode", *protocol.PARAM_TENSORS}
        bad = sorted(set(gen) - allowed)
        if bad:
            raise InputError(
                f"unknown generation parameter(s) {', '.join(bad)} for a ragrt server: "
                f"choose from {', '.join(sorted(allowed))}"
            )
        return {k: v for k, v in gen.items() if v is not None}

    def _chunks(self, qs: list[str], model: str) -> list[list[str]]:
        size = max(1, self._batch.get(model, 1))
        return [qs[i : i + size] for i in range(0, len(qs), size)]


# -- synchronous ----------------------------------------------------------------------------
class RagClient(_Base):
    """A thread-safe client of a ragrt Triton server (one connection per thread).

    ``url``: ``host:port`` (gRPC by default; port 8000 or ``http://`` means HTTP).
    ``timeout``: seconds per request. ``retries``/``backoff``/``max_backoff``: see the module
    docstring.
    """

    def __init__(self, url: str, protocol: str | None = None, **kwargs: Any):
        super().__init__(url, protocol, **kwargs)
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------
    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        return mod

    def _new_client(self) -> Any:
        mod = self._module()
        if self.protocol == "grpc":
            return mod.InferenceServerClient(self.url, ssl=self.endpoint.ssl)
        t = self.timeout or DEFAULT_TIMEOUT
        return mod.InferenceServerClient(
            self.url, ssl=self.endpoint.ssl, connection_timeout=min(t, 10.0), network_timeout=t
        )

    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._new_client()
            self._local.client = c
            with self._lock:
                self._all.append(c)
        return c

    def _reset_client(self) -> None:
        c = getattr(self._local, "client", None)
        self._local.client = None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
            with self._lock:
                if c in self._all:
                    self._all.remove(c)

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(tritonclient)`` with retries on connection errors; server errors mapped."""
        attempts = 0
        delays = self._delays()
        while True:
            attempts += 1
            try:
                return fn(self._client())
            except RagrtError:
                raise
            except Exception as e:
                if not _is_connection_error(e):
                    raise _server_error(e, self.url) from None
                self._reset_client()
                delay = next(delays, None)
                if delay is None:
                    raise self._unreachable(attempts, e) from None
                time.sleep(delay)

    def _max_batch(self, model: str) -> int:
        if model not in self._batch:

            def get(c: Any) -> int:
                if self.protocol == "grpc":
                    cfg = c.get_model_config(model, as_json=True).get("config", {})
                else:
                    cfg = c.get_model_config(model)
                return int(cfg.get("max_batch_size", 0) or 0)

            self._batch[model] = self._call(get)
        return self._batch[model]

    def _infer(self, model: str, arrays: dict[str, np.ndarray], outputs: Sequence[str]) -> Any:
        mod = self._module()

        def run(c: Any) -> Any:
            inputs = []
            for name, arr in arrays.items():
                dt = "BYTES" if arr.dtype == np.object_ else _triton_dtype(arr.dtype)
                i = mod.InferInput(name, list(arr.shape), dt)
                i.set_data_from_numpy(arr)
                inputs.append(i)
            outs = [mod.InferRequestedOutput(n) for n in outputs]
            if self.protocol == "grpc":
                return c.infer(model, inputs, outputs=outs, client_timeout=self.timeout)
            return c.infer(model, inputs, outputs=outs)

        return self._call(run)

    # -- API -------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``{"live", "ready", "models": {name: ready}}`` (no retries; never raises for an
        unreachable server: ``live`` is false and ``error`` says why)."""
        out: dict[str, Any] = {
            "url": self.url,
            "protocol": self.protocol,
            "live": False,
            "ready": False,
            "models": {},
        }
        try:
            c = self._client()
            out["live"] = bool(c.is_server_live())
            out["ready"] = bool(c.is_server_ready())
            for m in self.models.values():
                try:
                    out["models"][m] = bool(c.is_model_ready(m))
                except Exception:  # noqa: BLE001 - a model that is not in the repository
                    out["models"][m] = False
        except Exception as e:  # noqa: BLE001
            self._reset_client()
            out["error"] = f"{type(e).__name__}: {e}"
        return out

    def ask(self, question: str, **gen: Any) -> GenerationResult:
        """Answer one question (keywords as :meth:`ragrt.engine.RagEngine.generate`)."""
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}")
        return self.ask_batch([question], **gen)[0]

    def ask_batch(self, questions: Sequence[str], **gen: Any) -> list[GenerationResult]:
        """Answer ``questions`` (sent in chunks of the model's max batch size)."""
        qs = _check_questions(questions)
        params = self._gen_params(gen)
        model = self.models["rag"]
        batched = self._max_batch(model) > 0
        out: list[GenerationResult] = []
        for chunk in self._chunks(qs, model):
            arrays = protocol.request_arrays(chunk, params, batched=batched)
            r = self._infer(model, arrays, protocol.RAG_OUTPUTS)
            out += protocol.unpack_results(r.as_numpy, chunk)
        return out

    def retrieve(self, questions: Sequence[str], k: int | None = None) -> list[list[Doc]]:
        """Top-``k`` passages per question (default: the model's ``n_docs``), best first."""
        qs = _check_questions(questions)
        model = self.models["retrieve"]
        batched = self._max_batch(model) > 0
        out: list[list[Doc]] = []
        for chunk in self._chunks(qs, model):
            arrays = protocol.request_arrays(chunk, {"n_docs": k}, batched=batched)
            r = self._infer(model, arrays, protocol.DOC_OUTPUTS)
            out += protocol.unpack_docs(r.as_numpy, len(chunk))
        return out

    def embed(self, questions: Sequence[str]) -> np.ndarray:
        """Question embeddings ``[len(questions), dim]`` float32."""
        qs = _check_questions(questions)
        model = self.models["encoder"]
        batched = self._max_batch(model) > 0
        parts = []
        for chunk in self._chunks(qs, model):
            r = self._infer(model, protocol.request_arrays(chunk, batched=batched), ["EMBEDDINGS"])
            parts.append(
                np.asarray(r.as_numpy("EMBEDDINGS"), dtype=np.float32).reshape(len(chunk), -1)
            )
        return np.concatenate(parts)

    def stream(self, question: str, **gen: Any) -> Iterator[str]:
        """Yield the answer's text pieces as the server generates them (``rag_stream``).

        gRPC: a bidirectional stream. HTTP: Triton's ``generate_stream`` endpoint
        (server-sent events). Connection errors before the first piece are retried.
        """
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}")
        params = self._gen_params(gen)
        arrays = protocol.request_arrays([question], params, batched=False)
        if self.protocol == "grpc":
            return self._stream_grpc(arrays)
        return self._stream_http(question, params)

    def _stream_grpc(self, arrays: dict[str, np.ndarray]) -> Iterator[str]:
        import tritonclient.grpc as grpcclient

        model = self.models["stream"]
        attempts = 0
        delays = self._delays()
        while True:
            attempts += 1
            q: queue.Queue = queue.Queue()
            c = grpcclient.InferenceServerClient(self.url, ssl=self.endpoint.ssl)
            got_any = False
            try:
                c.start_stream(
                    callback=lambda result, error, q=q: q.put((result, error)),
                    stream_timeout=self.timeout,
                )
                inputs = []
                for name, arr in arrays.items():
                    dt = "BYTES" if arr.dtype == np.object_ else _triton_dtype(arr.dtype)
                    i = grpcclient.InferInput(name, list(arr.shape), dt)
                    i.set_data_from_numpy(arr)
                    inputs.append(i)
                c.async_stream_infer(model, inputs)
                while True:
                    try:
                        result, error = q.get(timeout=self.timeout)
                    except queue.Empty:
                        raise ServerError(
                            f"no streamed response from {self.url} within {self.timeout} s"
                        ) from None
                    if error is not None:
                        raise error
                    got_any = True
                    text = protocol.decode_strings(result.as_numpy("TEXT"), "TEXT")[0]
                    final = bool(np.asarray(result.as_numpy("FINAL")).reshape(-1)[0])
                    if text:
                        yield text
                    if final:
                        return
            except RagrtError:
                raise
            except Exception as e:
                if got_any or not _is_connection_error(e):
                    raise _server_error(e, self.url) from None
                delay = next(delays, None)
                if delay is None:
                    raise self._unreachable(attempts, e) from None
                time.sleep(delay)
            finally:
                try:
                    c.stop_stream(cancel_requests=True)
                except Exception:  # noqa: BLE001
                    pass
                c.close()

    def _stream_http(self, question: str, params: dict[str, Any]) -> Iterator[str]:
        body: dict[str, Any] = {protocol.QUESTION: question}
        for k, v in params.items():
            body[protocol.MODE if k == "mode" else protocol.PARAM_TENSORS[k]] = v
        scheme = "https" if self.endpoint.ssl else "http"
        url = f"{scheme}://{self.url}/v2/models/{self.models['stream']}/generate_stream"
        data = json.dumps(body).encode("utf-8")
        attempts = 0
        delays = self._delays()
        while True:
            attempts += 1
            req = urllib.request.Request(
                url, data=data, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                resp = urllib.request.urlopen(req, timeout=self.timeout)
                break
            except urllib.error.HTTPError as e:
                msg = _http_error_text(e)
                default = InputError if e.code == 400 else ServerError
                if e.code == 404:
                    raise ServerError(f"{msg} (server {self.url})") from None
                raise protocol.error_from_text(msg, default) from None
            except (urllib.error.URLError, OSError) as e:
                delay = next(delays, None)
                if delay is None:
                    raise self._unreachable(attempts, e) from None
                time.sleep(delay)
        with resp:
            for raw in resp:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:].strip())
                if "error" in event:
                    raise protocol.error_from_text(str(event["error"]))
                text = event.get("TEXT", "")
                if isinstance(text, list):
                    text = text[0] if text else ""
                if text:
                    yield text
                final = event.get("FINAL", False)
                if (final[0] if isinstance(final, list) else final) is True:
                    return

    def close(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self._local = threading.local()

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _http_error_text(e: Any) -> str:
    """The error message of an HTTP error response (JSON, or one server-sent event)."""
    try:
        body = e.read().decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001
        return str(e)
    for line in body.splitlines() or [body]:
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        try:
            return str(json.loads(line).get("error", line))
        except (ValueError, AttributeError):
            continue
    return body or str(e)


def _triton_dtype(dt: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(dt)


# -- asyncio --------------------------------------------------------------------------------
class AsyncRagClient(_Base):
    """The asyncio twin of :class:`RagClient` (``tritonclient.grpc.aio`` / ``http.aio``)::

    async with AsyncRagClient("localhost:8001") as client:
        results = await asyncio.gather(*(client.ask(q) for q in questions))
    """

    def __init__(self, url: str, protocol: str | None = None, **kwargs: Any):
        super().__init__(url, protocol, **kwargs)
        self._c: Any = None

    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as mod
        else:
            import tritonclient.http.aio as mod
        return mod

    def _client(self) -> Any:
        if self._c is None:
            mod = self._module()
            if self.protocol == "grpc":
                self._c = mod.InferenceServerClient(self.url, ssl=self.endpoint.ssl)
            else:
                t = self.timeout or DEFAULT_TIMEOUT
                self._c = mod.InferenceServerClient(self.url, ssl=self.endpoint.ssl, conn_timeout=t)
        return self._c

    async def _reset(self) -> None:
        c, self._c = self._c, None
        if c is not None:
            try:
                await c.close()
            except Exception:  # noqa: BLE001
                pass

    async def _call(self, fn: Callable[[Any], Any]) -> Any:
        attempts = 0
        delays = self._delays()
        while True:
            attempts += 1
            try:
                return await fn(self._client())
            except RagrtError:
                raise
            except Exception as e:
                if not _is_connection_error(e) and not _aio_connection_error(e):
                    raise _server_error(e, self.url) from None
                await self._reset()
                delay = next(delays, None)
                if delay is None:
                    raise self._unreachable(attempts, e) from None
                await asyncio.sleep(delay)

    async def _max_batch(self, model: str) -> int:
        if model not in self._batch:

            async def get(c: Any) -> int:
                if self.protocol == "grpc":
                    cfg = (await c.get_model_config(model, as_json=True)).get("config", {})
                else:
                    cfg = await c.get_model_config(model)
                return int(cfg.get("max_batch_size", 0) or 0)

            self._batch[model] = await self._call(get)
        return self._batch[model]

    async def _infer(
        self, model: str, arrays: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> Any:
        mod = self._module()

        async def run(c: Any) -> Any:
            inputs = []
            for name, arr in arrays.items():
                dt = "BYTES" if arr.dtype == np.object_ else _triton_dtype(arr.dtype)
                i = mod.InferInput(name, list(arr.shape), dt)
                i.set_data_from_numpy(arr)
                inputs.append(i)
            outs = [mod.InferRequestedOutput(n) for n in outputs]
            if self.protocol == "grpc":
                return await c.infer(model, inputs, outputs=outs, client_timeout=self.timeout)
            return await c.infer(model, inputs, outputs=outs)

        return await self._call(run)

    async def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "url": self.url,
            "protocol": self.protocol,
            "live": False,
            "ready": False,
            "models": {},
        }
        try:
            c = self._client()
            out["live"] = bool(await c.is_server_live())
            out["ready"] = bool(await c.is_server_ready())
            for m in self.models.values():
                try:
                    out["models"][m] = bool(await c.is_model_ready(m))
                except Exception:  # noqa: BLE001
                    out["models"][m] = False
        except Exception as e:  # noqa: BLE001
            await self._reset()
            out["error"] = f"{type(e).__name__}: {e}"
        return out

    async def ask(self, question: str, **gen: Any) -> GenerationResult:
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}")
        return (await self.ask_batch([question], **gen))[0]

    async def ask_batch(self, questions: Sequence[str], **gen: Any) -> list[GenerationResult]:
        qs = _check_questions(questions)
        params = self._gen_params(gen)
        model = self.models["rag"]
        batched = await self._max_batch(model) > 0
        out: list[GenerationResult] = []
        for chunk in self._chunks(qs, model):
            r = await self._infer(
                model, protocol.request_arrays(chunk, params, batched=batched), protocol.RAG_OUTPUTS
            )
            out += protocol.unpack_results(r.as_numpy, chunk)
        return out

    async def retrieve(self, questions: Sequence[str], k: int | None = None) -> list[list[Doc]]:
        qs = _check_questions(questions)
        model = self.models["retrieve"]
        batched = await self._max_batch(model) > 0
        out: list[list[Doc]] = []
        for chunk in self._chunks(qs, model):
            r = await self._infer(
                model,
                protocol.request_arrays(chunk, {"n_docs": k}, batched=batched),
                protocol.DOC_OUTPUTS,
            )
            out += protocol.unpack_docs(r.as_numpy, len(chunk))
        return out

    async def embed(self, questions: Sequence[str]) -> np.ndarray:
        qs = _check_questions(questions)
        model = self.models["encoder"]
        batched = await self._max_batch(model) > 0
        parts = []
        for chunk in self._chunks(qs, model):
            r = await self._infer(
                model, protocol.request_arrays(chunk, batched=batched), ["EMBEDDINGS"]
            )
            parts.append(
                np.asarray(r.as_numpy("EMBEDDINGS"), dtype=np.float32).reshape(len(chunk), -1)
            )
        return np.concatenate(parts)

    async def stream(self, question: str, **gen: Any) -> AsyncIterator[str]:
        """Async iterator of text pieces (gRPC only)."""
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}")
        if self.protocol != "grpc":
            raise InputError("AsyncRagClient.stream needs gRPC (the server's gRPC port)")
        import tritonclient.grpc.aio as aio

        arrays = protocol.request_arrays([question], self._gen_params(gen), batched=False)
        inputs = []
        for name, arr in arrays.items():
            dt = "BYTES" if arr.dtype == np.object_ else _triton_dtype(arr.dtype)
            i = aio.InferInput(name, list(arr.shape), dt)
            i.set_data_from_numpy(arr)
            inputs.append(i)
        done = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": self.models["stream"], "inputs": inputs}
            await done.wait()  # keep the stream open until the final response

        attempts = 0
        delays = self._delays()
        while True:
            attempts += 1
            got_any = False
            c = aio.InferenceServerClient(self.url, ssl=self.endpoint.ssl)
            try:
                it = c.stream_infer(requests(), stream_timeout=self.timeout)
                async for result, error in it:
                    if error is not None:
                        raise error
                    got_any = True
                    text = protocol.decode_strings(result.as_numpy("TEXT"), "TEXT")[0]
                    if text:
                        yield text
                    if bool(np.asarray(result.as_numpy("FINAL")).reshape(-1)[0]):
                        done.set()
                        return
                raise ServerError(f"the stream from {self.url} ended without a final response")
            except RagrtError:
                raise
            except Exception as e:
                if got_any or not (_is_connection_error(e) or _aio_connection_error(e)):
                    raise _server_error(e, self.url) from None
                delay = next(delays, None)
                if delay is None:
                    raise self._unreachable(attempts, e) from None
                await asyncio.sleep(delay)
            finally:
                done.set()
                await c.close()

    async def close(self) -> None:
        await self._reset()

    async def __aenter__(self) -> AsyncRagClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _aio_connection_error(e: BaseException) -> bool:
    """aiohttp's transport failures (the gRPC aio client raises InferenceServerException)."""
    return type(e).__name__ in ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError")
