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
from ragrt.serving.endpoint import Endpoint


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

    def __init__(self, endpoint: Endpoint, timeout: float | None):
        self.endpoint = endpoint
        self.grpc = endpoint.protocol == "grpc"
        self.timeout = timeout

    def stream_url(self, model: str) -> str:
        scheme = "https" if self.endpoint.ssl else "http"
        return f"{scheme}://{self.endpoint.host_port}/v2/models/{model}/generate_stream"

    def infer_options(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout} if self.grpc else {}


# -- blocking --------------------------------------------------------------------------------
class BlockingTransport(_Transport):
    """tritonclient.grpc / tritonclient.http, one connection per thread."""

    def __init__(self, endpoint: Endpoint, timeout: float | None):
        super().__init__(endpoint, timeout)
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
                c = mod.InferenceServerClient(self.endpoint.host_port, ssl=self.endpoint.ssl)
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
            return self._client().get_model_config(model, as_json=True).get("config", {})
        return self._client().get_model_config(model)

    def is_server_live(self) -> bool:
        return self._client().is_server_live()

    def is_server_ready(self) -> bool:
        return self._client().is_server_ready()

    def is_model_ready(self, model: str) -> bool:
        return self._client().is_model_ready(model)

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
            return _GrpcStream(self.endpoint, self.timeout, model, arrays)
        return _SseStream(self.stream_url(model), body, self.timeout)

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

    def __init__(self, endpoint: Endpoint, timeout: float | None, model: str, arrays: dict):
        import tritonclient.grpc as grpcclient

        self.timeout = timeout
        self.url = endpoint.host_port
        self.q: queue.Queue = queue.Queue()
        self.c = grpcclient.InferenceServerClient(endpoint.host_port, ssl=endpoint.ssl)
        self.closed = False
        try:
            self.c.start_stream(
                callback=lambda result, error: self.q.put((result, error)),
                stream_timeout=timeout,
            )
            self.c.async_stream_infer(model, infer_inputs(grpcclient, arrays))
        except BaseException:
            self.close()
            raise

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

    def __init__(self, url: str, body: dict[str, Any], timeout: float | None):
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode("utf-8"),
            method="POST",
            headers={"Content-Type": "application/json"},
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

    def __init__(self, endpoint: Endpoint, timeout: float | None):
        super().__init__(endpoint, timeout)
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
                self._c = mod.InferenceServerClient(self.endpoint.host_port, ssl=self.endpoint.ssl)
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
            cfg = await self._client().get_model_config(model, as_json=True)
            return cfg.get("config", {})
        return await self._client().get_model_config(model)

    async def is_server_live(self) -> bool:
        return await self._client().is_server_live()

    async def is_server_ready(self) -> bool:
        return await self._client().is_server_ready()

    async def is_model_ready(self, model: str) -> bool:
        return await self._client().is_model_ready(model)

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
        s = _AioGrpcStream(self.endpoint) if self.grpc else _AioSseStream()
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

    def __init__(self, endpoint: Endpoint):
        import tritonclient.grpc.aio as aio

        self.mod = aio
        self.c = aio.InferenceServerClient(endpoint.host_port, ssl=endpoint.ssl)
        self.done = asyncio.Event()
        self.it: Any = None
        self.closed = False

    async def open(self, model: str, arrays: dict[str, np.ndarray], timeout: float | None):
        inputs = infer_inputs(self.mod, arrays)

        async def requests() -> Any:
            yield {"model_name": model, "inputs": inputs}
            await self.done.wait()

        self.it = self.c.stream_infer(requests(), stream_timeout=timeout).__aiter__()

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

    def __init__(self) -> None:
        self.session: Any = None
        self.resp: Any = None

    async def open(self, url: str, body: dict[str, Any], timeout: float | None) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        self.resp = await self.session.post(url, json=body)
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
