"""The client core without a tritonserver: the plans run on a fake transport that answers with
the real wire format (``ragrt.serving.protocol``), and HTTP streams come from a small local
server that speaks Triton's ``generate_stream`` (server-sent events) and can cut a stream short
the way a crashing server does. tests/test_serving.py runs the same clients against the real
server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from contextlib import contextmanager

import pytest

from ragrt.errors import InputError, ServerError
from ragrt.results import Doc, GenerationResult
from ragrt.serving import protocol
from ragrt.serving.client import AsyncRagClient, RagClient
from ragrt.serving.client_core import (
    Call,
    ClientCore,
    StreamEvent,
    iterate_async,
    iterate_blocking,
    run_async,
    run_blocking,
)


class FakeServer:
    """Answers calls like a ragrt server would: validation and packing by the real protocol;
    errors travel as tritonclient's InferenceServerException, as over the wire."""

    def __init__(self, max_batch: int = 8, refuse: int = 0, events: list | None = None):
        self.max_batch, self.refuse, self.events = max_batch, refuse, events or []
        self.calls: list[Call] = []

    def answer(self, call: Call):
        from tritonclient.utils import InferenceServerException

        self.calls.append(call)
        if self.refuse and call.method not in ("sleep", "reset", "close_stream"):
            self.refuse -= 1
            raise ConnectionRefusedError("connection refused")
        if call.method == "model_config":
            return {"max_batch_size": self.max_batch}
        if call.method in ("sleep", "reset", "close_stream"):
            return None
        if call.method == "infer":
            model, arrays, _ = call.args
            try:
                qs, kw = protocol.parse_gen_request(
                    arrays.get, protocol.Limits(), batched=self.max_batch > 0
                )
            except InputError as e:
                raise InferenceServerException(protocol.error_text(e), status="400") from None
            res = [
                GenerationResult(q, f"a:{q}", [0, len(q), 2], -1.0, [Doc("d", "t", "x", 1.0)])
                for q in qs
            ]
            packed = protocol.pack_results(res)
            return type("R", (), {"as_numpy": staticmethod(packed.get)})()
        if call.method == "open_stream":
            return iter(self.events)
        if call.method == "next_event":
            return next(call.args[0], None)
        raise AssertionError(call)

    def infers(self) -> list[list[str]]:
        return [
            protocol.decode_strings(c.args[1]["QUESTION"], "Q")
            for c in self.calls
            if c.method == "infer"
        ]


class Blocking:
    def __init__(self, server):
        self.server = server

    def execute(self, call):
        return self.server.answer(call)


class Async:
    def __init__(self, server):
        self.server = server

    async def execute(self, call):
        await asyncio.sleep(0)
        return self.server.answer(call)


def _core(**kw) -> ClientCore:
    return ClientCore("localhost:1", **kw)


# -- one retry loop, both drivers ------------------------------------------------------------
def test_retries_with_backoff_on_both_drivers():
    drivers = {
        "blocking": lambda server, plan: run_blocking(Blocking(server), plan),
        "asyncio": lambda server, plan: asyncio.run(run_async(Async(server), plan)),
    }
    for run in drivers.values():
        server = FakeServer(refuse=3)
        core = _core(retries=5, backoff=0.1, max_backoff=0.25)
        res = run(server, core.ask("q1", {}))
        assert res.text == "a:q1" and res.token_ids == [0, 2, 2]
        sleeps = [c.args[0] for c in server.calls if c.method == "sleep"]
        assert sleeps == [0.1, 0.2, 0.25]
        assert [c.method for c in server.calls].count("reset") == 3


def test_gives_up_after_the_last_retry():
    server = FakeServer(refuse=10)
    with pytest.raises(ServerError, match="after 3 attempt"):
        run_blocking(Blocking(server), _core(retries=2, backoff=0.0).embed(["q"]))


# -- issue 11 item 18: per-item errors -------------------------------------------------------
def test_ask_each_returns_a_per_item_error():
    server = FakeServer()
    out = run_blocking(Blocking(server), _core().ask_each(["q1", "", "q3"], {}))
    assert [type(r).__name__ for r in out] == ["GenerationResult", "InputError", "GenerationResult"]
    assert out[0].text == "a:q1" and out[2].text == "a:q3"
    assert "question 1: QUESTION row 0 is empty" in str(out[1])
    # one request for the chunk, then one per question to find the bad one
    assert server.infers() == [["q1", "", "q3"], ["q1"], [""], ["q3"]]
    with pytest.raises(InputError, match="question 1: QUESTION row 0 is empty"):
        run_blocking(Blocking(FakeServer()), _core().ask_batch(["q1", "", "q3"], {}))
    with pytest.raises(InputError, match="^QUESTION row 0 is empty"):
        run_blocking(Blocking(FakeServer()), _core().ask("", {}))


def test_ask_each_with_a_parameter_error_and_chunks():
    server = FakeServer(max_batch=2)
    out = run_blocking(Blocking(server), _core().ask_each(["a", "b", "c"], {"n_docs": 0}))
    assert all(isinstance(r, InputError) and "N_DOCS=0" in str(r) for r in out)
    server = FakeServer(max_batch=2)
    out = run_blocking(Blocking(server), _core().ask_each(["a", "b", "c"], {}))
    assert [r.text for r in out] == ["a:a", "a:b", "a:c"]
    assert server.infers() == [["a", "b"], ["c"]]


# -- issue 11 item 15 (client part): text that has no UTF-8 form -----------------------------
def test_lone_surrogates_are_input_errors():
    server = FakeServer()
    out = run_blocking(Blocking(server), _core().ask_each(["ok", "\ud800"], {}))
    assert out[0].text == "a:ok"
    assert isinstance(out[1], InputError) and "question 1 is not valid Unicode" in str(out[1])
    assert server.infers() == [["ok"]]  # the bad one is never sent
    c = RagClient("localhost:1", retries=0)
    for call in (
        lambda: c.ask("bad \udcff"),
        lambda: c.ask_batch(["ok", "\ud800"]),
        lambda: c.retrieve(["\ud800"]),
        lambda: c.embed(["\ud800"]),
        lambda: c.stream("\ud800"),  # refused before anything is sent
    ):
        with pytest.raises(InputError, match="not valid Unicode"):
            call()


# -- issue 11 item 6: a stream without its final response is an error ------------------------
def test_stream_plan_needs_the_final_event():
    events = [StreamEvent("Hel", False), StreamEvent("lo", False)]
    core = _core()
    pieces = []
    with pytest.raises(ServerError, match="ended without its final response"):
        for p in iterate_blocking(Blocking(FakeServer(events=events)), core.stream({}, {})):
            pieces.append(p)
    assert pieces == ["Hel", "lo"]
    done = [*events, StreamEvent("!", True)]
    assert list(iterate_blocking(Blocking(FakeServer(events=done)), core.stream({}, {}))) == [
        "Hel",
        "lo",
        "!",
    ]

    async def collect(events):
        plan = core.stream({}, {})
        return [p async for p in iterate_async(Async(FakeServer(events=events)), plan)]

    assert asyncio.run(collect(done)) == ["Hel", "lo", "!"]
    with pytest.raises(ServerError, match="ended without its final response"):
        asyncio.run(collect(events))


@contextmanager
def sse_server(pieces: list[str], ending: str):
    """A one-endpoint HTTP server answering ``generate_stream`` with ``pieces`` as server-sent
    events, then: ``final`` (a proper last event), ``eof`` (the response ends without one) or
    ``cut`` (the connection drops in the middle of a chunk, as when the server is killed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    bodies: list[dict] = []

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(
                    next(
                        h.split(b":")[1]
                        for h in head.split(b"\r\n")
                        if h.lower().startswith(b"content-length")
                    )
                )
                while len(body) < length:
                    body += conn.recv(65536)
                bodies.append(json.loads(body))
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                )
                for p in pieces:
                    event = {"model_name": "rag_stream", "TEXT": p, "FINAL": False}
                    conn.sendall(chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
                if ending == "final":
                    event = {"TEXT": "", "FINAL": True}
                    conn.sendall(chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
                if ending == "cut":
                    conn.sendall(b'40\r\ndata: {"TEXT": "tru')  # half a chunk, then gone
                    conn.shutdown(socket.SHUT_RDWR)
                    continue
                conn.sendall(b"0\r\n\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", bodies
    finally:
        sock.close()


@pytest.mark.parametrize("ending", ["eof", "cut"])
def test_http_stream_cut_short_raises(ending):
    with sse_server(["The ", "answer"], ending) as (url, bodies):
        client = RagClient(url, retries=0)
        got = []
        with pytest.raises(ServerError):
            for piece in client.stream("why?", max_new_tokens=5):
                got.append(piece)
        assert got == ["The ", "answer"]
        assert bodies == [{"QUESTION": "why?", "MAX_NEW_TOKENS": 5}]

        async def main():
            async with AsyncRagClient(url, retries=0) as a:
                return [p async for p in a.stream("why?")]

        with pytest.raises(ServerError):
            asyncio.run(main())


def test_http_stream_complete(capsys):
    from ragrt.cli import main

    with sse_server(["The ", "answer"], "final") as (url, _):
        assert "".join(RagClient(url).stream("why?")) == "The answer"

        async def run():
            async with AsyncRagClient(url) as a:
                return "".join([p async for p in a.stream("why?")])

        assert asyncio.run(run()) == "The answer"
        assert main(["ask", "--url", url, "--stream", "why?"]) == 0
        assert capsys.readouterr().out == "The answer\n"
    with sse_server(["The ", "answer"], "cut") as (url, _):
        assert main(["ask", "--url", url, "--stream", "why?"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "The answer" and captured.err.startswith("error: ")


def test_health_of_an_unreachable_server():
    h = run_blocking(Blocking(FakeServer(refuse=1)), _core().health())
    assert h["live"] is False and "ConnectionRefusedError" in h["error"]
    h = asyncio.run(AsyncRagClient("localhost:1", retries=0).health())
    assert h["live"] is False and h["error"]


def test_unknown_parameters_and_types_before_sending():
    server = FakeServer()
    for gen, needle in (({"temperature": 0.5}, "temperature"), ({"n_docs": "3"}, "integer")):
        with pytest.raises(InputError, match=needle):
            run_blocking(Blocking(server), _core().ask_each(["q"], gen))
    assert server.calls == []
