"""Clients of a ragrt Triton server: :class:`RagClient` (blocking, thread-safe) and
:class:`AsyncRagClient` (asyncio), over gRPC or HTTP, with the engine's result types.

::

    from ragrt.serving.client import RagClient

    client = RagClient("localhost:8001")                # gRPC (or "http://localhost:8000")
    res = client.ask("who wrote hamlet?", n_docs=5, num_beams=4)
    print(res.text, [d.title for d in res.docs])
    for piece in client.stream("who wrote hamlet?"):   # rag_stream: gRPC stream or HTTP SSE
        print(piece, end="", flush=True)

Both are thin: the requests, retries, response decoding and error mapping are written once in
:mod:`ragrt.serving.client_core`, the I/O lives in :mod:`ragrt.serving.transports`.

Connection errors (server down, restarting, connection reset) are retried with exponential
backoff (``retries`` times, waits ``backoff``, ``2*backoff``, ... capped at ``max_backoff``);
errors the server answers with are never retried: they become the ragrt error named by the
code in the server's message (:class:`~ragrt.errors.InputError` for bad input, ...), carrying
the server's message. After the last retry a :class:`~ragrt.errors.ServerError` says so. A
stream that ends without its final response raises :class:`~ragrt.errors.ServerError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import numpy as np

from ragrt.errors import RagrtError
from ragrt.results import Doc, GenerationResult
from ragrt.serving.client_core import (
    DEFAULT_TIMEOUT,
    ClientCore,
    iterate_async,
    iterate_blocking,
    run_async,
    run_blocking,
)
from ragrt.serving.endpoint import Endpoint, parse_url
from ragrt.serving.transports import AsyncTransport, BlockingTransport

__all__ = ["AsyncRagClient", "DEFAULT_TIMEOUT", "Endpoint", "RagClient", "parse_url"]


class _Client:
    """Settings shared by both clients (``url``, ``protocol``, ``timeout``, ``retries``,
    ``models``) - read from the core."""

    def __init__(self, url: str, protocol: str | None = None, **kwargs: Any):
        self._core = ClientCore(url, protocol, **kwargs)

    endpoint = property(lambda self: self._core.endpoint)
    url = property(lambda self: self._core.url)
    protocol = property(lambda self: self._core.endpoint.protocol)
    timeout = property(lambda self: self._core.timeout)
    retries = property(lambda self: self._core.retries)
    models = property(lambda self: self._core.models)


class RagClient(_Client):
    """A thread-safe client of a ragrt Triton server (one connection per thread).

    ``url``: ``host:port`` (gRPC by default; port 8000 or ``http://`` means HTTP).
    ``timeout``: seconds per request. ``retries``/``backoff``/``max_backoff``: see the module
    docstring. Model names: ``rag_model``, ``stream_model``, ``retrieve_model``,
    ``encoder_model``.
    """

    def __init__(self, url: str, protocol: str | None = None, **kwargs: Any):
        super().__init__(url, protocol, **kwargs)
        self._transport = BlockingTransport(self._core.endpoint, self._core.timeout)

    def health(self) -> dict[str, Any]:
        """``{"live", "ready", "models": {name: ready}}`` (no retries; never raises for an
        unreachable server: ``live`` is false and ``error`` says why)."""
        return run_blocking(self._transport, self._core.health())

    def ask(self, question: str, **gen: Any) -> GenerationResult:
        """Answer one question (keywords as :meth:`ragrt.engine.RagEngine.generate`)."""
        return run_blocking(self._transport, self._core.ask(question, gen))

    def ask_batch(self, questions: Sequence[str], **gen: Any) -> list[GenerationResult]:
        """Answer ``questions`` (sent in chunks of the model's max batch size); a bad question
        raises its error naming it (:meth:`ask_each` answers the others anyway)."""
        return run_blocking(self._transport, self._core.ask_batch(questions, gen))

    def ask_each(self, questions: Sequence[str], **gen: Any) -> list[GenerationResult | RagrtError]:
        """Like :meth:`ragrt.engine.RagEngine.generate_each`: a bad question (empty, not
        encodable) gets its error in place of its result, the others their answers."""
        return run_blocking(self._transport, self._core.ask_each(questions, gen))

    def retrieve(self, questions: Sequence[str], k: int | None = None) -> list[list[Doc]]:
        """Top-``k`` passages per question (default: the model's ``n_docs``), best first."""
        return run_blocking(self._transport, self._core.retrieve(questions, k))

    def embed(self, questions: Sequence[str]) -> np.ndarray:
        """Question embeddings ``[len(questions), dim]`` float32."""
        return run_blocking(self._transport, self._core.embed(questions))

    def stream(self, question: str, **gen: Any) -> Iterator[str]:
        """Yield the answer's text pieces as the server generates them (``rag_stream``).

        gRPC: a bidirectional stream. HTTP: Triton's ``generate_stream`` endpoint
        (server-sent events). Connection errors before the first piece are retried; a stream
        cut before its final response raises :class:`~ragrt.errors.ServerError`.
        """
        arrays, body = self._core.stream_request(question, gen)
        return iterate_blocking(self._transport, self._core.stream(arrays, body))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRagClient(_Client):
    """:class:`RagClient` for asyncio (``tritonclient.grpc.aio`` / ``http.aio``)::

    async with AsyncRagClient("localhost:8001") as client:
        results = await asyncio.gather(*(client.ask(q) for q in questions))
    """

    def __init__(self, url: str, protocol: str | None = None, **kwargs: Any):
        super().__init__(url, protocol, **kwargs)
        self._transport = AsyncTransport(self._core.endpoint, self._core.timeout)

    async def health(self) -> dict[str, Any]:
        return await run_async(self._transport, self._core.health())

    async def ask(self, question: str, **gen: Any) -> GenerationResult:
        return await run_async(self._transport, self._core.ask(question, gen))

    async def ask_batch(self, questions: Sequence[str], **gen: Any) -> list[GenerationResult]:
        return await run_async(self._transport, self._core.ask_batch(questions, gen))

    async def ask_each(
        self, questions: Sequence[str], **gen: Any
    ) -> list[GenerationResult | RagrtError]:
        return await run_async(self._transport, self._core.ask_each(questions, gen))

    async def retrieve(self, questions: Sequence[str], k: int | None = None) -> list[list[Doc]]:
        return await run_async(self._transport, self._core.retrieve(questions, k))

    async def embed(self, questions: Sequence[str]) -> np.ndarray:
        return await run_async(self._transport, self._core.embed(questions))

    def stream(self, question: str, **gen: Any) -> AsyncIterator[str]:
        """Async iterator of text pieces (gRPC stream, or HTTP server-sent events)."""
        arrays, body = self._core.stream_request(question, gen)
        return iterate_async(self._transport, self._core.stream(arrays, body))

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncRagClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
