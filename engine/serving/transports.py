"""The I/O of the clients: tritonclient (gRPC, HTTP and their asyncio variants) for requests,
gRPC streams, and Triton's ``generate_stream`` server-sent events for HTTP streams.

A transport executes the :class:`~ragrt.serving.client_core.Call` objects of the client core's
plans; it holds no retry, request-building or decoding logic. :class:`BlockingTransport` keeps
one tritonclient connection per thread (so one client can be shared by threads);
:class:`AsyncTransport` one connection per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from ragrt.errors import ServerError
from ragrt.serving import protocol
from ragrt.serving.client_core import DEFAULT_TIMEOUT, Call, HttpStatusError, StreamEvent
from ragrt.serving.endpoint import Credentials, Endpoint

#: tritonserver 2.51 reads a gRPC restriction's header KEY from the metadata key
#: ``triton-grpc-protocol-KEY`` (HTTP: ``KEY`` itself)
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"


def infer_inputs(mod: Any, arrays: dict[str, np.ndarray]) -> list[Any]:
    """tritonclient ``InferInput`` objects for request arrays (any of its four modules)."""
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, arr in arrays.items():
        dt = "BYTES" if arr.dtype == np.object_ else np_to_triton_dtype(arr.dtype)
        i = mod.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    return inputs


def _grpc_event(result: Any) -> StreamEvent:
    return StreamEvent(*protocol.stream_event(result.as_numpy))


def _sse_event(line: bytes) -> StreamEvent | None:
    """The event of one server-sent-events line (None for other lines)."""
    text = line.decode("utf-8").strip()
    if not text.startswith("data:"):
        return None
    return StreamEvent(*protocol.stream_event_json(json.loads(text[5:].strip())))


def sse_error_text(body: str, fallback: str) -> str:
    """The error message of an HTTP error response (JSON, or one server-sent event)."""
    body = body.strip()
    for line in body.splitlines() or [body]:
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        try:
            return str(json.loads(line).get("error", line))
        except (ValueError, AttributeError):
            continue
    return body or fallback


class _Transport:
    """What both transports share: the endpoint and the stream URL."""

    def __init__(self, endpoint: Endpoint, timeout: float | None, creds: Credentials | None = None):
        self.creds = creds or Credentials()
        self.endpoint = self.creds.secure(endpoint)
        self.grpc = endpoint.protocol == "grpc"
        self.timeout = timeout
        #: sent with every call (``headers=`` of tritonclient's methods); over gRPC also
        #: under the names tritonserver's --grpc-restricted-protocol checks
        self.h = self.creds.header_dict()
        if self.h and self.grpc:
            self.h = {**self.h, **{GRPC_RESTRICTED_PREFIX + k: v for k, v in self.h.items()}}

    def hdr(self) -> dict[str, str] | None:
        """A fresh copy of the headers for one call (tritonclient.http adds its own to the
        dict it is given)."""
        return dict(self.h) if self.h else None

    def grpc_client_args(self) -> dict[str, Any]:
        """tritonclient.grpc(.aio) ``InferenceServerClient`` keywords: TLS and its files."""
        c = self.creds
        return {
            "ssl": self.endpoint.ssl,
            "root_certificates": c.root_certificates,
            "private_key": c.private_key,
            "certificate_chain": c.certificate_chain,
        }

    def stream_url(self, model: str) -> str:
        scheme = "https" if self.endpoint.ssl else "http"
        return f"{scheme}://{self.endpoint.host_port}/v2/models/{model}/generate_stream"

    def infer_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"headers": self.hdr()}
        if self.grpc:
            opts["client_timeout"] = self.timeout
        return opts


# -- blocking --------------------------------------------------------------------------------
class BlockingTransport(_Transport):
    """tritonclient.grpc / tritonclient.http, one connection per thread."""

    def __init__(self, endpoint: Endpoint, timeout: float | None, creds: Credentials | None = None):
        super().__init__(endpoint, timeout, creds)
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def execute(self, call: Call) -> Any:
        return getattr(self, call.method)(*call.args)

    def module(self) -> Any:
        if self.grpc:
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        return mod

    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            mod = self.module()
            if self.grpc:
                c = mod.InferenceServerClient(self.endpoint.host_port, **self.grpc_client_args())
            else:
                t = self.timeout or DEFAULT_TIMEOUT
                c = mod.InferenceServerClient(
                    self.endpoint.host_port,
                    ssl=self.endpoint.ssl,
                    connection_timeout=min(t, 10.0),
                    network_timeout=t,
                )
            self._local.client = c
            with self._lock:
                self._all.append(c)
        return c

    # -- calls -----------------------------------------------------------------------------
    def infer(self, model: str, arrays: dict[str, np.ndarray], outputs: Any) -> Any:
        mod = self.module()
        outs = [mod.InferRequestedOutput(n) for n in outputs]
        return self._client().infer(
            model, infer_inputs(mod, arrays), outputs=outs, **self.infer_options()
        )

    def model_config(self, model: str) -> dict[str, Any]:
        if self.grpc:
            cfg = self._client().get_model_config(model, as_json=True, headers=self.hdr())
            return cfg.get("config", {})
        return self._client().get_model_config(model, headers=self.hdr())

    def is_server_live(self) -> bool:
        return self._client().is_server_live(headers=self.hdr())

    def is_server_ready(self) -> bool:
        return self._client().is_server_ready(headers=self.hdr())

    def is_model_ready(self, model: str) -> bool:
        return self._client().is_model_ready(model, headers=self.hdr())

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def reset(self) -> None:
        """Drop this thread's connection (after a connection error)."""
        c = getattr(self._local, "client", None)
        self._local.client = None
        if c is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                c.close()
            with self._lock:
                if c in self._all:
                    self._all.remove(c)

    def open_stream(self, model: str, arrays: dict[str, np.ndarray], body: dict[str, Any]) -> Any:
        if self.grpc:
            return _GrpcStream(self, model, arrays)
        return _SseStream(self.stream_url(model), body, self.timeout, self.hdr())

    def next_event(self, stream: Any) -> StreamEvent | None:
        return stream.next()

    def close_stream(self, stream: Any) -> None:
        stream.close()

    def close(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
        self._local = threading.local()


class _GrpcStream:
    """A gRPC bidirectional stream on its own connection, read through a queue."""

    def __init__(self, transport: _Transport, model: str, arrays: dict):
        import tritonclient.grpc as grpcclient

        self.timeout = timeout = transport.timeout
        self.url = transport.endpoint.host_port
        self.q: queue.Queue = queue.Queue()
        self.c = grpcclient.InferenceServerClient(self.url, **transport.grpc_client_args())
        self.closed = False
        try:
            self.c.start_stream(
                callback=lambda result, error: self.q.put((result, error)),
                stream_timeout=timeout,
                headers=transport.hdr(),
            )
            self.c.async_stream_infer(model, infer_inputs(grpcclient, arrays))
        except BaseException as e:
            # a stream the server refused at once (e.g. a restricted protocol without its
            # header) fails here with "no longer in valid state"; the reason is in the callback
            reason = self._reported_error() if "valid state" in str(e) else None
            self.close()
            if reason is not None:
                raise reason from None
            raise

    def _reported_error(self) -> BaseException | None:
        try:
            _, error = self.q.get(timeout=2.0)
        except queue.Empty:
            return None
        return error if isinstance(error, BaseException) else None

    def next(self) -> StreamEvent:
        try:
            result, error = self.q.get(timeout=self.timeout)
        except queue.Empty:
            raise ServerError(
                f"no streamed response from {self.url} within {self.timeout} s"
            ) from None
        if error is not None:
            raise error
        return _grpc_event(result)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.c.stop_stream(cancel_requests=True)
        with contextlib.suppress(Exception):
            self.c.close()


class _SseStream:
    """Triton's HTTP ``generate_stream`` endpoint, read line by line."""

    def __init__(
        self,
        url: str,
        body: dict[str, Any],
        timeout: float | None,
        headers: dict[str, str] | None = None,
    ):
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode("utf-8"),
            method="POST",
            headers={**(headers or {}), "Content-Type": "application/json"},
        )
        try:
            self.resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            try:
                body_text = e.read().decode("utf-8", "replace")
            except Exception:  # noqa: BLE001
                body_text = ""
            raise HttpStatusError(e.code, sse_error_text(body_text, str(e))) from None

    def next(self) -> StreamEvent | None:
        """The next event; None when the response ended (with or without a final event)."""
        while True:
            raw = self.resp.readline()
            if not raw:
                return None
            event = _sse_event(raw)
            if event is not None:
                return event

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.resp.close()


# -- asyncio ---------------------------------------------------------------------------------
class AsyncTransport(_Transport):
    """tritonclient.grpc.aio / tritonclient.http.aio, and aiohttp for HTTP streams."""

    def __init__(self, endpoint: Endpoint, timeout: float | None, creds: Credentials | None = None):
        super().__init__(endpoint, timeout, creds)
        self._c: Any = None

    async def execute(self, call: Call) -> Any:
        return await getattr(self, call.method)(*call.args)

    def module(self) -> Any:
        if self.grpc:
            import tritonclient.grpc.aio as mod
        else:
            import tritonclient.http.aio as mod
        return mod

    def _client(self) -> Any:
        if self._c is None:
            mod = self.module()
            if self.grpc:
                self._c = mod.InferenceServerClient(
                    self.endpoint.host_port, **self.grpc_client_args()
                )
            else:
                self._c = mod.InferenceServerClient(
                    self.endpoint.host_port,
                    ssl=self.endpoint.ssl,
                    conn_timeout=self.timeout or DEFAULT_TIMEOUT,
                )
        return self._c

    # -- calls -----------------------------------------------------------------------------
    async def infer(self, model: str, arrays: dict[str, np.ndarray], outputs: Any) -> Any:
        mod = self.module()
        outs = [mod.InferRequestedOutput(n) for n in outputs]
        return await self._client().infer(
            model, infer_inputs(mod, arrays), outputs=outs, **self.infer_options()
        )

    async def model_config(self, model: str) -> dict[str, Any]:
        if self.grpc:
            cfg = await self._client().get_model_config(model, as_json=True, headers=self.hdr())
            return cfg.get("config", {})
        return await self._client().get_model_config(model, headers=self.hdr())

    async def is_server_live(self) -> bool:
        return await self._client().is_server_live(headers=self.hdr())

    async def is_server_ready(self) -> bool:
        return await self._client().is_server_ready(headers=self.hdr())

    async def is_model_ready(self, model: str) -> bool:
        return await self._client().is_model_ready(model, headers=self.hdr())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def reset(self) -> None:
        c, self._c = self._c, None
        if c is not None:
            with contextlib.suppress(Exception):
                await c.close()

    async def open_stream(
        self, model: str, arrays: dict[str, np.ndarray], body: dict[str, Any]
    ) -> Any:
        s = _AioGrpcStream(self) if self.grpc else _AioSseStream(self.hdr())
        try:
            if self.grpc:
                await s.open(model, arrays, self.timeout)
            else:
                await s.open(self.stream_url(model), body, self.timeout)
        except BaseException:
            await s.close()
            raise
        return s

    async def next_event(self, stream: Any) -> StreamEvent | None:
        return await stream.next()

    async def close_stream(self, stream: Any) -> None:
        await stream.close()

    async def close(self) -> None:
        await self.reset()


class _AioGrpcStream:
    """A gRPC stream on its own asyncio connection; the request side stays open until the
    final response arrives (or the stream is closed)."""

    def __init__(self, transport: _Transport):
        import tritonclient.grpc.aio as aio

        self.mod = aio
        self.h = transport.hdr()
        self.c = aio.InferenceServerClient(
            transport.endpoint.host_port, **transport.grpc_client_args()
        )
        self.done = asyncio.Event()
        self.it: Any = None
        self.closed = False

    async def open(self, model: str, arrays: dict[str, np.ndarray], timeout: float | None) -> None:
        inputs = infer_inputs(self.mod, arrays)

        async def requests() -> Any:
            yield {"model_name": model, "inputs": inputs}
            await self.done.wait()

        self.it = self.c.stream_infer(
            requests(), stream_timeout=timeout, headers=self.h
        ).__aiter__()

    async def next(self) -> StreamEvent | None:
        try:
            result, error = await self.it.__anext__()
        except StopAsyncIteration:
            return None
        if error is not None:
            raise error
        event = _grpc_event(result)
        if event.final:
            self.done.set()
        return event

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.done.set()
        with contextlib.suppress(Exception):
            await self.c.close()


class _AioSseStream:
    """Triton's HTTP ``generate_stream`` endpoint over aiohttp."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = headers
        self.session: Any = None
        self.resp: Any = None

    async def open(self, url: str, body: dict[str, Any], timeout: float | None) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        self.resp = await self.session.post(url, json=body, headers=self.headers)
        if self.resp.status != 200:
            text = await self.resp.text()
            raise HttpStatusError(self.resp.status, sse_error_text(text, self.resp.reason or ""))

    async def next(self) -> StreamEvent | None:
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                return None
            event = _sse_event(raw)
            if event is not None:
                return event

    async def close(self) -> None:
        if self.resp is not None:
            self.resp.release()
        if self.session is not None:
            await self.session.close()
        self.resp = self.session = None
