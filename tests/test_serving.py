"""Against the real tritonserver: a repository built from the fixture model + index, served on
free 127.0.0.1 ports for the session. Served answers must equal the in-process engine's (token
ids) over HTTP and gRPC; streams reassemble to the same text; 8 concurrent clients x 50 mixed
requests all come back correct; bad input gets an error naming the problem while the server
keeps serving; the client's retries carry a request across a server restart.

Generation lengths are kept short: the fixture model is tiny but the cores are few.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ragrt.errors import InputError, RagrtError, ServerError

pytestmark = pytest.mark.server

QUESTIONS = [
    "How do I serialize an object to JSON?",
    "what is a heap queue",
    "How are command line arguments parsed?",
    "how do I open a socket connection",
    "compute a sha256 digest of a file",
    "what does itertools chain do",
]
# (generation keywords) cases compared one to one with the in-process engine
CASES = [
    {"max_new_tokens": 8},
    {"n_docs": 3, "num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 6},
    {"mode": "sequence", "num_beams": 2, "n_docs": 2, "max_new_tokens": 5},
    {"n_docs": 1, "max_new_tokens": 6, "min_new_tokens": 4, "no_repeat_ngram_size": 2},
]


def fixture_index(request, art, tmp_path_factory) -> Path:
    """The shared ``rag_bart_index`` fixture when conftest has it, else a small index built
    here from the first passages of the bundled demo corpus."""
    try:
        return request.getfixturevalue("rag_bart_index")
    except pytest.FixtureLookupError:
        pass
    from importlib import resources

    from ragrt.retrieval.build import BuildOptions, build_index

    root = tmp_path_factory.mktemp("serving_index")
    src = Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "\n".join(src.read_text(encoding="utf-8").splitlines()[:200]) + "\n", encoding="utf-8"
    )
    build_index(corpus, root / "index", model=art, options=BuildOptions(progress=False))
    return root / "index"


@pytest.fixture(scope="session")
def serving_index(request, rag_bart_art, tmp_path_factory):
    return fixture_index(request, rag_bart_art, tmp_path_factory)


@pytest.fixture(scope="session")
def engine(rag_bart_art, serving_index):
    from ragrt.engine import RagEngine

    return RagEngine.load(rag_bart_art, serving_index, intra_op_threads=1)


@pytest.fixture(scope="session")
def server(rag_bart_art, serving_index, tmp_path_factory):
    """The real tritonserver on free ports; always stopped at the end."""
    from ragrt.serving.server import TritonServer, find_tritonserver
    from ragrt.triton_models.repository import RepoOptions, build_repository

    try:
        find_tritonserver()
    except ServerError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("serving")
    repo = root / "repo"
    build_repository(
        rag_bart_art,
        serving_index,
        repo,
        RepoOptions(max_batch_size=8, queue_delay_us=2000, intra_op_threads=1, stream_workers=2),
    )
    # exit_timeout: tritonserver waits that long for idle keep-alive client connections on stop
    srv = TritonServer(
        repo, http_port=0, grpc_port=0, metrics_port=0, log_file=root / "triton.log", exit_timeout=2
    )
    t0 = time.perf_counter()
    srv.start()
    try:
        srv.wait_ready(timeout=240)
        print(f"\ntritonserver ready in {time.perf_counter() - t0:.1f} s ({srv.grpc_url})")
        yield srv
    finally:
        srv.stop()
        srv.close()


def _client(server, protocol, **kw):
    from ragrt.serving.client import RagClient

    url = server.grpc_url if protocol == "grpc" else server.http_url
    return RagClient(url, protocol=protocol, **kw)


def _same(got, want):
    assert got.question == want.question
    assert got.token_ids == want.token_ids
    assert got.text == want.text
    assert got.score == pytest.approx(want.score, rel=1e-4, abs=1e-4)
    assert [d.id for d in got.docs] == [d.id for d in want.docs]
    assert [d.title for d in got.docs] == [d.title for d in want.docs]
    np.testing.assert_allclose(
        [d.score for d in got.docs], [d.score for d in want.docs], rtol=1e-4, atol=1e-4
    )
    assert [s.token_ids for s in got.sequences] == [s.token_ids for s in want.sequences]


# -- parity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_answers_equal_engine(server, engine, protocol):
    client = _client(server, protocol)
    for kw in CASES:
        want = engine.generate(QUESTIONS, **kw)
        got = client.ask_batch(QUESTIONS, **kw)
        for g, w in zip(got, want):
            _same(g, w)
        if kw is CASES[0]:
            assert len({tuple(r.token_ids) for r in got}) > 2, "fixture answers should differ"
    # one question, and more questions than the model's max batch size (client chunks them)
    _same(
        client.ask(QUESTIONS[0], max_new_tokens=8),
        engine.generate(QUESTIONS[:1], max_new_tokens=8)[0],
    )
    many = (QUESTIONS * 2)[:10]
    for g, w in zip(
        client.ask_batch(many, max_new_tokens=3), engine.generate(many, max_new_tokens=3)
    ):
        _same(g, w)
    client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_retrieve_and_embed_equal_engine(server, engine, protocol):
    client = _client(server, protocol)
    got = client.retrieve(QUESTIONS, k=4)
    want = engine.retrieve(QUESTIONS, k=4)
    assert [[d.id for d in r] for r in got] == [[d.id for d in r] for r in want]
    assert got[0][0].text == want[0][0].text
    np.testing.assert_allclose(
        client.embed(QUESTIONS), engine.embed(QUESTIONS), rtol=1e-5, atol=1e-5
    )
    h = client.health()
    assert h["live"] and h["ready"] and all(h["models"].values())
    client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_stream_reassembles(server, engine, protocol):
    client = _client(server, protocol)
    for q in QUESTIONS[:3]:
        want = engine.generate([q], max_new_tokens=10)[0].text
        pieces = list(client.stream(q, max_new_tokens=10))
        assert "".join(pieces) == want
        assert len(pieces) > 1, "greedy RAG-Token streams piece by piece"
    # beam search streams its final answer as one piece
    want = engine.generate([QUESTIONS[0]], num_beams=2, max_new_tokens=5)[0].text
    assert "".join(client.stream(QUESTIONS[0], num_beams=2, max_new_tokens=5)) == want
    with pytest.raises(InputError, match="empty"):
        list(client.stream("  "))
    with pytest.raises(InputError, match="N_DOCS=0"):
        list(client.stream("q", n_docs=0))


def test_concurrent_streams(server, engine):
    """Streams run concurrently in one rag_stream instance (worker threads share one engine)."""
    qs = QUESTIONS * 2
    want = [r.text for r in engine.generate(qs, max_new_tokens=6)]

    def one(q):
        with _client(server, "grpc") as c:
            return "".join(c.stream(q, max_new_tokens=6))

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(one, qs)) == want


def test_async_client(server, engine):
    from ragrt.serving.client import AsyncRagClient

    async def main():
        async with (
            AsyncRagClient(server.grpc_url) as a,
            AsyncRagClient("http://" + server.http_url) as b,
        ):
            got = await asyncio.gather(
                *(c.ask(q, max_new_tokens=6) for q in QUESTIONS[:3] for c in (a, b))
            )
            pieces = [p async for p in a.stream(QUESTIONS[1], max_new_tokens=6)]
            docs = await b.retrieve(QUESTIONS[:2], k=2)
            with pytest.raises(InputError, match="N_DOCS=0"):
                await a.ask("q", n_docs=0)
            return got, pieces, docs

    got, pieces, docs = asyncio.run(main())
    want = engine.generate(QUESTIONS[:3], max_new_tokens=6)
    for i, g in enumerate(got):
        _same(g, want[i // 2])
    assert "".join(pieces) == engine.generate([QUESTIONS[1]], max_new_tokens=6)[0].text
    assert [d.id for d in docs[1]] == [d.id for d in engine.retrieve(QUESTIONS[1:2], k=2)[0]]


# -- load ------------------------------------------------------------------------------------
KINDS = [
    ("ask", {"max_new_tokens": 3}),
    ("ask", {"max_new_tokens": 2, "n_docs": 2}),
    ("ask", {"num_beams": 2, "max_new_tokens": 2, "n_docs": 3}),
    ("ask", {"mode": "sequence", "num_beams": 1, "max_new_tokens": 2, "n_docs": 2}),
    ("retrieve", {"k": 3}),
    ("embed", {}),
]


def test_concurrent_clients(server, engine):
    """8 clients (gRPC and HTTP) x 50 mixed requests: every answer correct, none lost or
    duplicated, server healthy after; p50/p99 latency printed."""
    n_clients, n_requests = 8, 50
    expected: dict[tuple[int, int], object] = {}
    lock = threading.Lock()

    def want(kind_i: int, q_i: int):
        with lock:
            key = (kind_i, q_i)
            if key not in expected:
                kind, kw = KINDS[kind_i]
                q = QUESTIONS[q_i]
                if kind == "ask":
                    expected[key] = engine.generate([q], **kw)[0].token_ids
                elif kind == "retrieve":
                    expected[key] = [d.id for d in engine.retrieve([q], **kw)[0]]
                else:
                    expected[key] = engine.embed([q])[0]
            return expected[key]

    plan = {
        (c, i): ((c + i) % len(KINDS), (3 * c + 5 * i) % len(QUESTIONS))
        for c in range(n_clients)
        for i in range(n_requests)
    }
    for kind_i, q_i in set(plan.values()):
        want(kind_i, q_i)
    answers: dict[tuple[int, int], object] = {}
    latencies: list[float] = []
    errors: list[str] = []

    def run_client(c: int) -> None:
        client = _client(server, "grpc" if c % 2 == 0 else "http", timeout=120)
        for i in range(n_requests):
            kind_i, q_i = plan[(c, i)]
            kind, kw = KINDS[kind_i]
            q = QUESTIONS[q_i]
            t = time.perf_counter()
            try:
                if kind == "ask":
                    got = client.ask(q, **kw).token_ids
                elif kind == "retrieve":
                    got = [d.id for d in client.retrieve([q], **kw)[0]]
                else:
                    got = client.embed([q])[0]
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(f"client {c} request {i}: {type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t)
                assert (c, i) not in answers, "duplicated answer"
                answers[(c, i)] = got
        client.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        list(pool.map(run_client, range(n_clients)))
    wall = time.perf_counter() - t0
    assert not errors, errors[:5]
    assert set(answers) == set(plan), "lost requests"
    for key, got in answers.items():
        w = expected[plan[key]]
        if isinstance(w, np.ndarray):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
        else:
            assert got == w, (key, plan[key])
    lat = np.array(latencies) * 1000
    print(
        f"\n{len(answers)} requests from {n_clients} clients in {wall:.1f} s "
        f"({len(answers) / wall:.1f} req/s): p50 {np.percentile(lat, 50):.0f} ms, "
        f"p99 {np.percentile(lat, 99):.0f} ms"
    )
    assert server.alive() and server.ready()
    assert set(server.model_states().values()) == {"READY"}


# -- bad input -------------------------------------------------------------------------------
def _raw(server, protocol):
    if protocol == "grpc":
        import tritonclient.grpc as mod

        return mod, mod.InferenceServerClient(server.grpc_url)
    import tritonclient.http as mod

    return mod, mod.InferenceServerClient(server.http_url)


def _inp(mod, name, arr, dtype):
    i = mod.InferInput(name, list(arr.shape), dtype)
    i.set_data_from_numpy(arr)
    return i


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_input_over_the_wire(server, engine, protocol):
    from tritonclient.utils import InferenceServerException

    client = _client(server, protocol)
    good = engine.generate(QUESTIONS[:1], max_new_tokens=2)[0].token_ids

    def still_serving():
        assert client.ask(QUESTIONS[0], max_new_tokens=2).token_ids == good

    cases = [
        (lambda: client.ask(""), InputError, "QUESTION row 0 is empty"),
        (lambda: client.ask("q", n_docs=0), InputError, "N_DOCS=0 is out of range"),
        (lambda: client.ask("q", n_docs=10_000), InputError, "N_DOCS=10000 is out of range"),
        (lambda: client.ask("q", num_beams=999), InputError, "NUM_BEAMS=999"),
        (lambda: client.ask("q", mode="beam"), InputError, "MODE='beam'"),
        (lambda: client.ask("q", max_new_tokens=100_000), InputError, "max_new_tokens"),
        (lambda: client.retrieve(["q"], k=0), InputError, "N_DOCS=0"),
    ]
    for call, cls, needle in cases:
        with pytest.raises(cls, match=needle):
            call()
        still_serving()

    mod, raw = _raw(server, protocol)
    q = np.array([[b"what is a heap queue"]], dtype=object)
    raw_cases = [
        ([_inp(mod, "QUESTION", np.array([[1]], np.int32), "INT32")], "rag", "data-type"),
        (
            [_inp(mod, "QUESTION", np.array([[b"a", b"b"]], dtype=object), "BYTES")],
            "rag",
            "unexpected shape",
        ),
        (
            [_inp(mod, "QUESTION", np.array([[b"a"]] * 9, dtype=object), "BYTES")],
            "rag",
            "batch-size must be <= 8",
        ),
        ([_inp(mod, "QUESTION", q, "BYTES")], "no_such_model", "unknown model"),
        (
            [
                _inp(mod, "QUESTION", q, "BYTES"),
                _inp(mod, "N_DOCS", np.array([[2.0]], np.float32), "FP32"),
            ],
            "rag",
            "N_DOCS",
        ),
        (
            [_inp(mod, "QUESTION", np.array([[b"\xff\xfe"]], dtype=object), "BYTES")],
            "rag",
            "not valid UTF-8",
        ),
        (
            [
                _inp(mod, "QUESTION", np.array([[b"a"], [b"b"]], dtype=object), "BYTES"),
                _inp(mod, "N_DOCS", np.array([[1], [2]], np.int32), "INT32"),
            ],
            "retrieve",
            "same for every row",
        ),
    ]
    for inputs, model, needle in raw_cases:
        with pytest.raises(InferenceServerException, match=needle):
            raw.infer(model, inputs)
        still_serving()
    raw.close()
    # the same wire errors through the client: mapped to ragrt errors with the server's text
    from ragrt.serving.client import RagClient

    other = RagClient(client.url, protocol=protocol, rag_model="no_such_model")
    with pytest.raises(ServerError, match="unknown model"):
        other.ask("q")
    assert server.alive()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ask_each_gives_per_item_errors(server, engine, protocol):
    """A bad question in a batch gets its own error; the others are answered as usual."""
    from ragrt.serving.client import AsyncRagClient

    client = _client(server, protocol)
    qs = [QUESTIONS[0], "", QUESTIONS[2], "\ud800"]
    want = engine.generate([QUESTIONS[0], QUESTIONS[2]], max_new_tokens=4)
    out = client.ask_each(qs, max_new_tokens=4)
    _same(out[0], want[0])
    _same(out[2], want[1])
    assert isinstance(out[1], InputError) and "question 1: QUESTION row 0 is empty" in str(out[1])
    assert isinstance(out[3], InputError) and "question 3 is not valid Unicode" in str(out[3])
    with pytest.raises(InputError, match="question 1: QUESTION row 0 is empty"):
        client.ask_batch(qs[:3], max_new_tokens=4)
    client.close()

    async def main():
        url = server.grpc_url if protocol == "grpc" else "http://" + server.http_url
        async with AsyncRagClient(url) as a:
            return await a.ask_each(qs[:3], max_new_tokens=4)

    out = asyncio.run(main())
    _same(out[2], want[1])
    assert isinstance(out[1], InputError)


# -- launcher failure, CLI, restart (last: it restarts the shared server) -------------------
def test_broken_repository_fails_with_the_log(rag_bart_art, serving_index, tmp_path):
    from ragrt.serving.server import TritonServer
    from ragrt.triton_models.repository import RepoOptions, build_repository

    repo = tmp_path / "repo"
    build_repository(rag_bart_art, serving_index, repo, RepoOptions(models=["question_encoder"]))
    onnx = next(
        (repo / "question_encoder" / "artifacts" / "model" / "question_encoder").rglob("model.onnx")
    )
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    srv = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    srv.start()
    with pytest.raises(ServerError, match="(?s)exited with code.*sha256 does not match"):
        srv.wait_ready(timeout=120)
    assert not srv.alive()
    srv.close()


def test_cli_serve_stops_on_sigterm(rag_bart_art, serving_index, tmp_path):
    from ragrt.serving.server import free_port
    from ragrt.triton_models.repository import RepoOptions, build_repository

    repo = tmp_path / "repo"
    build_repository(rag_bart_art, serving_index, repo, RepoOptions(models=["question_encoder"]))
    grpc = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragrt",
            "serve",
            str(repo),
            "--http-port",
            str(free_port()),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(free_port()),
            "--log-file",
            str(tmp_path / "log.txt"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        assert "ready: models question_encoder" in text and f"127.0.0.1:{grpc}" in text
        from ragrt.serving.client import RagClient

        assert RagClient(f"127.0.0.1:{grpc}").embed(["q"]).shape[0] == 1
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "tritonserver stopped (exit code 0)" in rest


def test_retry_brings_requests_through_a_restart(server, engine):
    """Stop the server; requests sent while it is down (gRPC and HTTP) are retried (connection
    refused -> backoff) and answered once the server is back on the same ports."""
    want = engine.generate([QUESTIONS[2]], max_new_tokens=4)[0]
    clients = {
        p: _client(server, p, retries=30, backoff=0.1, max_backoff=1.0) for p in ("grpc", "http")
    }
    for c in clients.values():
        assert c.ask(QUESTIONS[2], max_new_tokens=4).token_ids == want.token_ids
    server.stop()
    assert not server.ready()
    results: dict[str, object] = {}

    def ask(protocol):
        try:
            results[protocol] = clients[protocol].ask(QUESTIONS[2], max_new_tokens=4)
        except RagrtError as e:
            results[protocol] = e

    threads = [threading.Thread(target=ask, args=(p,)) for p in clients]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert all(t.is_alive() for t in threads), "the requests must be waiting for the server"
    t0 = time.perf_counter()
    server.start()  # from the main thread (the server dies with the thread that started it)
    server.wait_ready(timeout=240)
    for t in threads:
        t.join(timeout=120)
    print(f"\nrestarted in {time.perf_counter() - t0:.1f} s; both requests answered")
    for p in clients:
        assert not isinstance(results[p], Exception), results[p]
        _same(results[p], want)


# -- the README's client example ---------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_readme_client_blocks_run(server, protocol, capsys):
    """The README's client examples run as written, against this server's address."""
    from tests.readme_blocks import python_blocks

    url = server.grpc_url if protocol == "grpc" else "http://" + server.http_url
    blocks = [b for b in python_blocks() if b.needs_server]
    assert blocks
    for b in blocks:
        scope = b.run({'"localhost:8001"': repr(url)})
        assert scope["client"].protocol == protocol
        assert len(scope["results"]) == len(scope["questions"])
        assert isinstance(scope["each"][1], InputError)  # the empty question, in its place
    assert capsys.readouterr().out
