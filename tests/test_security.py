"""Issue 11 item 2: access control of a served repository, against the real tritonserver.

``ragrt serve --api-key-file`` puts every API group but health behind the ``ragrt-api-key``
header, ``--restrict`` puts chosen groups behind other headers, ``--grpc-tls-*`` serves gRPC
over TLS (a self-signed certificate made here with openssl), ``--no-metrics`` closes the
metrics port. Requests without the header are refused, with it answered (HTTP and gRPC,
requests and streams); a plain-text gRPC client cannot talk to the TLS port.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ragrt.errors import InputError, ServerError
from ragrt.serving.security import (
    API_KEY_HEADER,
    APIS,
    GrpcTls,
    Restriction,
    api_key_restriction,
    server_args,
)

KEY = "k3y-for-tests"
ADMIN = "adm1n-for-tests"


# -- settings ---------------------------------------------------------------------------------
def test_restriction_parsing():
    r = Restriction.parse("model-repository, shared-memory:Admin-Key=s3cret")
    assert r == Restriction(("model-repository", "shared-memory"), "admin-key", "s3cret")
    assert r.flag_value() == "model-repository,shared-memory:admin-key=s3cret"
    for bad, needle in (
        ("model-repository", "APIS:HEADER=VALUE"),
        ("repo:k=v", "unknown API group"),
        (":k=v", "unknown API group"),
        ("inference:k=", "non-empty"),
        ("inference:k=a b", "without spaces"),
        ("inference:=v", "bad header name"),
    ):
        with pytest.raises(InputError, match=needle):
            Restriction.parse(bad)
    key = api_key_restriction("abc", [r])
    assert key.header == API_KEY_HEADER and key.value == "abc"
    assert set(key.apis) == set(APIS) - {"health", "model-repository", "shared-memory"}
    with pytest.raises(InputError, match="restricted twice"):
        server_args([r, Restriction.parse("shared-memory:x=y")], None)


def test_cli_settings(tmp_path, monkeypatch):
    from ragrt.cli.serve import security_settings

    keyfile = tmp_path / "key"
    keyfile.write_text(f"  {KEY}\n")
    cert, pem = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    pem.write_text("x")

    def ns(**kw):
        base = dict(
            restrict=[],
            api_key_file=None,
            grpc_tls_cert=None,
            grpc_tls_key=None,
            grpc_tls_client_ca=None,
        )
        return argparse.Namespace(**{**base, **kw})

    monkeypatch.delenv("RAGRT_API_KEY", raising=False)
    assert security_settings(ns()) == ([], None)
    rs, tls = security_settings(
        ns(
            api_key_file=str(keyfile),
            restrict=["model-repository:admin-key=a"],
            grpc_tls_cert=str(cert),
            grpc_tls_key=str(pem),
        )
    )
    assert [r.header for r in rs] == ["admin-key", API_KEY_HEADER] and rs[1].value == KEY
    assert tls == GrpcTls(cert.resolve(), pem.resolve())
    monkeypatch.setenv("RAGRT_API_KEY", "from-env")
    assert security_settings(ns())[0][0].value == "from-env"
    with pytest.raises(InputError, match="both --grpc-tls-cert and --grpc-tls-key"):
        security_settings(ns(grpc_tls_cert=str(cert)))
    with pytest.raises(InputError, match="does not exist"):
        security_settings(ns(grpc_tls_cert=str(cert), grpc_tls_key=str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        security_settings(ns(api_key_file=str(empty)))


def test_client_tls_settings(tmp_path):
    from ragrt.serving.client import RagClient

    with pytest.raises(InputError, match="TLS certificates are for gRPC"):
        RagClient("http://localhost:8000", root_certificates=__file__)
    with pytest.raises(InputError, match="does not exist"):
        RagClient("localhost:8001", root_certificates=tmp_path / "nope.pem")
    with pytest.raises(InputError, match="both private_key and certificate_chain"):
        RagClient("localhost:8001", private_key=__file__)
    assert RagClient("localhost:8001", root_certificates=__file__).endpoint.ssl


# -- against the real server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return {"cert": d / "cert.pem", "key": d / "key.pem"}


@pytest.fixture(scope="module")
def secured(rag_bart_art, rag_bart_index, tmp_path_factory, tls_files):
    from ragrt.serving.server import TritonServer, find_tritonserver
    from ragrt.triton_models.repository import RepoOptions, build_repository

    try:
        find_tritonserver()
    except ServerError as e:
        pytest.skip(str(e))
    repo = tmp_path_factory.mktemp("secured") / "repo"
    build_repository(
        rag_bart_art,
        rag_bart_index,
        repo,
        RepoOptions(models=["question_encoder", "rag_stream"], intra_op_threads=1),
    )
    admin = Restriction.parse(f"model-repository,shared-memory,statistics:admin-key={ADMIN}")
    srv = TritonServer(
        repo,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        exit_timeout=2,
        restrictions=[admin, api_key_restriction(KEY, [admin])],
        grpc_tls=GrpcTls.of(tls_files["cert"], tls_files["key"]),
        metrics=False,
    )
    srv.start()
    try:
        srv.wait_ready(timeout=240)  # its own readiness checks carry the headers
        yield srv
    finally:
        srv.stop()
        srv.close()


def _http(srv, path: str, method: str = "GET", headers: dict | None = None) -> int:
    req = urllib.request.Request(
        f"http://{srv.http_url}{path}",
        method=method,
        data=b"{}" if method == "POST" else None,
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.server
def test_restricted_http_endpoints(secured):
    # health stays open (orchestrator probes); the rest needs its header
    assert _http(secured, "/v2/health/ready") == 200
    assert _http(secured, "/v2/models/question_encoder/ready") == 200
    assert _http(secured, "/v2/models/question_encoder/config") == 403
    assert (
        _http(secured, "/v2/models/question_encoder/config", headers={API_KEY_HEADER: KEY}) == 200
    )
    assert _http(secured, "/v2/repository/index", "POST") == 403
    assert _http(secured, "/v2/repository/index", "POST", {API_KEY_HEADER: KEY}) == 403
    assert _http(secured, "/v2/repository/index", "POST", {"admin-key": ADMIN}) == 200
    assert _http(secured, "/v2/systemsharedmemory/status") == 403
    assert _http(secured, "/v2/models/stats", headers={"admin-key": ADMIN}) == 200
    # the metrics port is closed
    with pytest.raises(OSError):
        urllib.request.urlopen(secured.metrics_url, timeout=5)


@pytest.mark.server
def test_clients_need_the_key(secured, tls_files):
    from ragrt.serving.client import AsyncRagClient, RagClient

    grpcs = f"grpcs://{secured.grpc_url}"
    ca = {"root_certificates": tls_files["cert"]}
    for url, extra in ((f"http://{secured.http_url}", {}), (grpcs, ca)):
        for kw in ({}, {"api_key": "wrong"}):
            c = RagClient(url, retries=0, **extra, **kw)
            with pytest.raises(ServerError, match="is restricted.*RagClient\\(api_key=...\\)"):
                c.embed(["q"])
            with pytest.raises(ServerError, match="restricted"):
                "".join(c.stream("what is a heap queue", max_new_tokens=2))
            h = c.health()
            assert not h["ready"] and "restricted" in h["problems"]["question_encoder"], h
        c = RagClient(url, retries=0, api_key=KEY, **extra)
        assert c.embed(["q"]).shape[0] == 1
        assert "".join(c.stream("what is a heap queue", max_new_tokens=2)) is not None
        assert c.health()["models"]["question_encoder"] is True

        async def main(url=url, extra=extra):
            async with AsyncRagClient(url, retries=0, api_key=KEY, **extra) as a:
                emb = await a.embed(["q"])
                text = "".join([p async for p in a.stream("what is a heap queue")])
                return emb, text

        emb, _ = asyncio.run(main())
        assert emb.shape[0] == 1


@pytest.mark.server
def test_grpc_tls_only(secured, tls_files):
    from ragrt.serving.client import RagClient

    # plain text to the TLS port: no connection (retried, then unreachable)
    with pytest.raises(ServerError, match="cannot reach"):
        RagClient(f"grpc://{secured.grpc_url}", retries=0, api_key=KEY).embed(["q"])
    # TLS without trusting the self-signed certificate: refused as well
    with pytest.raises(ServerError, match="cannot reach"):
        RagClient(f"grpcs://{secured.grpc_url}", retries=0, api_key=KEY).embed(["q"])


@pytest.mark.server
def test_cli_ask_with_key_and_ca(secured, tls_files, tmp_path, capsys, monkeypatch):
    from ragrt.cli import main

    keyfile = tmp_path / "key"
    keyfile.write_text(KEY)
    url = f"grpcs://{secured.grpc_url}"
    monkeypatch.delenv("RAGRT_API_KEY", raising=False)
    assert main(["ask", "--url", url, "--tls-ca", str(tls_files["cert"]), "q"]) == 2
    assert "restricted" in capsys.readouterr().err
    ok = ["ask", "--url", url, "--tls-ca", str(tls_files["cert"]), "--stream", "q"]
    assert main([*ok, "--api-key-file", str(keyfile), "--max-new-tokens", "2"]) == 0
    monkeypatch.setenv("RAGRT_API_KEY", KEY)
    assert main([*ok, "--max-new-tokens", "2"]) == 0
