"""Operating ``ragrt serve``: busy ports (issue 10 item 8), a model whose backend process died
(issue 11 item 4), what the server leaves behind (issue 11 item 7: /dev/shm regions, logs).

The servers here serve only the ``question_encoder`` model (the cheapest to load).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ragrt.errors import InputError, ServerError
from ragrt.serving import processes

linux_only = pytest.mark.skipif(not processes.available(), reason="needs Linux /proc")


def _tritonserver() -> None:
    from ragrt.serving.server import find_tritonserver

    try:
        find_tritonserver()
    except ServerError as e:
        pytest.skip(str(e))


@pytest.fixture
def fake_repo(tmp_path) -> Path:
    """Enough of a repository for the launcher's checks (nothing gets loaded from it)."""
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\n')
    return tmp_path / "repo"


@pytest.fixture(scope="module")
def encoder_repo(rag_bart_art, rag_bart_index, tmp_path_factory) -> Path:
    from ragrt.triton_models.repository import RepoOptions, build_repository

    repo = tmp_path_factory.mktemp("serve_ops") / "repo"
    build_repository(
        rag_bart_art,
        rag_bart_index,
        repo,
        RepoOptions(models=["question_encoder"], intra_op_threads=1),
    )
    return repo


@contextmanager
def held(host: str = "127.0.0.1"):
    """A port some other program listens on."""
    s = socket.socket()
    s.bind((host, 0))
    s.listen(1)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


# -- issue 10 item 8: busy ports -------------------------------------------------------------
@pytest.mark.parametrize("which", ["http", "grpc", "metrics"])
def test_serve_refuses_a_busy_port(fake_repo, capsys, which, tmp_path, monkeypatch):
    import tempfile

    from ragrt.cli import main
    from ragrt.serving.server import free_port

    _tritonserver()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with held("0.0.0.0") as busy:  # on every interface: 127.0.0.1 is taken too
        ports = {n: free_port() for n in ("http", "grpc", "metrics")}
        ports[which] = busy
        argv = ["serve", str(fake_repo)]
        for n, p in ports.items():
            argv += [f"--{n}-port", str(p)]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert f"port {busy} (--{which}-port) is already in use" in err
    assert f"--{which}-port 0" in err
    assert not list(tmp_path.glob("ragrt-tritonserver-*.log"))


def test_serve_refuses_the_same_port_twice(fake_repo):
    from ragrt.serving.server import TritonServer

    _tritonserver()
    srv = TritonServer(fake_repo, http_port=18555, grpc_port=18555, metrics_port=0)
    with pytest.raises(InputError, match="--http-port and --grpc-port are both 18555"):
        srv.start()
    assert srv.proc is None
    srv.close()


@linux_only
def test_listens_on_tells_whose_socket_it_is():
    with held() as port:
        assert processes.listens_on(os.getpid(), port) is True
        assert processes.listens_on(os.getppid(), port) is False
    with held() as port:
        pass
    assert processes.listens_on(os.getpid(), port) is False


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Another server: says it is ready and lists a ready model."""

    def _answer(self) -> None:
        body = json.dumps([{"name": "question_encoder", "state": "READY"}]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@linux_only
def test_ready_only_when_our_own_server_answers(encoder_repo, monkeypatch):
    """The issue's case: another process answers on the HTTP port (taken after the port
    check, as in a race). wait_ready must not take its answers for our server's: it waits
    until our tritonserver gives up on the port, then fails naming it."""
    from ragrt.serving.server import TritonServer

    _tritonserver()
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        port = impostor.server_address[1]
        srv = TritonServer(encoder_repo, http_port=port, grpc_port=0, metrics_port=0)
        monkeypatch.setattr(srv, "check_ports", lambda: None)
        assert srv.ready() is True  # the impostor answers the readiness check
        srv.start()
        with pytest.raises(ServerError, match=f"(?s)exited with code 1.*{port}"):
            srv.wait_ready(timeout=180)
        assert not srv.alive()
        srv.close()
    finally:
        impostor.shutdown()
        impostor.server_close()


# -- issue 11 items 4 and 7: a dead model, and what is left behind ------------------------------
def _kill_stub(server_pid: int, model: str) -> processes.Stub:
    stubs = [s for s in processes.python_stubs(server_pid) if s.model == model]
    assert stubs, "the model's Python backend stub is not running"
    os.kill(stubs[0].pid, signal.SIGKILL)
    return stubs[0]


@linux_only
@pytest.mark.server
def test_a_dead_model_is_not_ready_and_its_shm_is_removed(encoder_repo):
    """Triton keeps calling a model whose stub was killed READY; RagClient.health() probes it
    and reports it not ready, TritonServer.dead_models() names it, and stopping the server
    removes the /dev/shm region the dead stub could not remove itself."""
    from ragrt.serving.client import AsyncRagClient, RagClient
    from ragrt.serving.server import TritonServer

    _tritonserver()
    srv = TritonServer(encoder_repo, http_port=0, grpc_port=0, metrics_port=0, exit_timeout=2)
    srv.start()
    try:
        srv.wait_ready(timeout=240)
        assert set(srv.stubs) == {"question_encoder_0_0"}
        client = RagClient(srv.grpc_url, retries=0)
        h = client.health()
        assert h["ready"] and h["models"]["question_encoder"] and "problems" not in h, h
        assert srv.dead_models() == {}
        stub = _kill_stub(srv.proc.pid, "question_encoder")
        assert (processes.SHM / stub.shm_region).exists()
        for _ in range(50):
            if not processes.alive(stub.pid):
                break
            time.sleep(0.1)
        assert srv.dead_models() == {"question_encoder": "question_encoder_0_0"}
        with pytest.raises(ServerError, match="not healthy"):
            client.embed(["q"])
        for c in (client, RagClient(srv.http_url, protocol="http", retries=0)):
            h = c.health()
            assert h["live"] and not h["ready"] and not h["models"]["question_encoder"], h
            assert "not healthy" in h["problems"]["question_encoder"]
        import asyncio

        async def main():
            async with AsyncRagClient(srv.grpc_url, retries=0) as a:
                return await a.health()

        h = asyncio.run(main())
        assert not h["ready"] and not h["models"]["question_encoder"], h
    finally:
        srv.stop()
        srv.close()
    assert not (processes.SHM / stub.shm_region).exists()


@linux_only
@pytest.mark.server
def test_cli_serve_exits_when_a_model_dies(encoder_repo, tmp_path):
    """``ragrt serve`` notices the dead stub, stops the server and exits 2 with one error
    naming the model and its log, which it keeps; the stub's /dev/shm region is gone."""
    from ragrt.serving.server import free_port

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # logs of earlier, finished runs: the newest four stay, older ones go
    for i, pid in enumerate([2**22 + n for n in range(6)]):
        f = tmp_path / f"ragrt-tritonserver-{pid}.log"
        f.write_text("old")
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragrt",
            "serve",
            str(encoder_repo),
            "--http-port",
            str(free_port()),
            "--grpc-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in proc.stdout:
            if line.startswith("Ctrl-C"):
                break
        assert proc.poll() is None
        left = sorted(p.name for p in tmp_path.glob("ragrt-tritonserver-*.log"))
        assert left == sorted(
            [f"ragrt-tritonserver-{2**22 + n}.log" for n in (2, 3, 4, 5)]
            + [f"ragrt-tritonserver-{proc.pid}.log"]
        )
        (server_pid,) = processes.children(proc.pid)
        stub = _kill_stub(server_pid, "question_encoder")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    log = tmp_path / f"ragrt-tritonserver-{proc.pid}.log"
    first = err.splitlines()[0]
    assert first.startswith("error: the backend process of model(s) question_encoder"), err
    assert f"(log: {log})" in first
    assert log.is_file()
    assert not (processes.SHM / stub.shm_region).exists()
    assert not processes.alive(server_pid)


def test_remove_old_logs_keeps_running_and_newest(tmp_path, monkeypatch):
    from ragrt.cli.serve import remove_old_logs

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    mine = tmp_path / f"ragrt-tritonserver-{os.getpid()}.log"
    mine.write_text("running")
    os.utime(mine, (1, 1))
    dead = []
    for i in range(7):
        f = tmp_path / f"ragrt-tritonserver-{2**22 + i}.log"
        f.write_text("x")
        os.utime(f, (100 + i, 100 + i))
        dead.append(f)
    other = tmp_path / "ragrt-tritonserver-notapid.log"
    other.write_text("x")
    removed = remove_old_logs(keep=4)
    assert sorted(removed) == sorted(dead[:3])
    assert mine.exists() and other.exists() and all(f.exists() for f in dead[3:])
