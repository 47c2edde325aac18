"""Triton repository builder, config generation/parsing, the wire format, the model code's
request handling (with a stand-in for triton_python_backend_utils), client URL parsing and
the server launcher's setup. No server here: tests/test_serving.py runs the real one."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ragrt.errors import ArtifactError, InputError, ServerError
from ragrt.results import Doc, GenerationResult, Hypothesis
from ragrt.serving import protocol
from ragrt.triton_models.repository import (
    NATIVE_ENCODER,
    NATIVE_TOKENIZER,
    RepoOptions,
    build_repository,
    check_repository,
    config_to_text,
    model_configs,
    parse_config,
    read_config,
    verify_repository,
)

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _names(ts):
    return [t.name for t in ts]


# -- config generation -----------------------------------------------------------------------
def test_python_flavor_configs_round_trip():
    opts = RepoOptions(
        max_batch_size=16, preferred_batch_sizes=[4, 8], queue_delay_us=500, instances=2
    )
    cfgs = model_configs(opts, dim=32)
    assert list(cfgs) == ["rag", "rag_stream", "retrieve", "question_encoder"]
    for name, c in cfgs.items():
        text = config_to_text(c)
        assert parse_config(text) == c, name  # parses back to the same message
        assert c.name == name and c.backend == "python"
    rag = cfgs["rag"]
    assert rag.max_batch_size == 16
    assert list(rag.dynamic_batching.preferred_batch_size) == [4, 8]
    assert rag.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in rag.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
    assert _names(rag.input)[:2] == ["QUESTION", "N_DOCS"]
    assert {i.name for i in rag.input if i.optional} == set(protocol.GEN_INPUTS) - {"QUESTION"}
    assert set(_names(rag.output)) == set(protocol.RAG_OUTPUTS)
    assert rag.parameters["ragrt_artifacts"].string_value == "artifacts"
    assert rag.parameters["ragrt_parallel"].string_value == "0"  # auto
    assert json.loads(rag.parameters["ragrt_index_dirs"].string_value) == ["index"]
    stream = cfgs["rag_stream"]
    assert stream.model_transaction_policy.decoupled and stream.max_batch_size == 0
    assert not stream.HasField("dynamic_batching")
    assert _names(stream.output) == ["TEXT", "FINAL"]
    # the other models read the artifacts of the first one
    assert cfgs["retrieve"].parameters["ragrt_artifacts"].string_value == "../rag/artifacts"
    assert cfgs["question_encoder"].output[0].dims == [32]


def test_native_flavor_gpu_tensorrt():
    opts = RepoOptions(
        flavor="native",
        device="gpu",
        gpus=[0, 1],
        tensorrt=True,
        precision="fp16",
        generator_encoder=True,
        instances=2,
    )
    cfgs = model_configs(
        opts, dim=768, input_names=["input_ids", "attention_mask", "token_type_ids"], d_model=1024
    )
    assert set(cfgs) == {
        "rag",
        "rag_stream",
        "retrieve",
        "question_encoder",
        NATIVE_ENCODER,
        NATIVE_TOKENIZER,
        "generator_encoder",
    }
    enc = cfgs[NATIVE_ENCODER]
    assert enc.platform == "onnxruntime_onnx" and enc.default_model_filename == "model.onnx"
    assert _names(enc.input) == ["input_ids", "attention_mask", "token_type_ids"]
    assert enc.dynamic_batching.max_queue_delay_microseconds == 2000
    g = enc.instance_group[0]
    assert (g.kind, g.count, list(g.gpus)) == (pb.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    acc = enc.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    ens = cfgs["question_encoder"]
    assert ens.platform == "ensemble" and not ens.instance_group
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [NATIVE_TOKENIZER, NATIVE_ENCODER]
    assert dict(steps[1].output_map) == {"embeddings": "EMBEDDINGS"}
    assert cfgs[NATIVE_TOKENIZER].instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert cfgs["rag"].parameters["ragrt_device"].string_value == "cuda"
    assert cfgs["generator_encoder"].output[0].dims == [-1, 1024]
    for c in cfgs.values():
        assert parse_config(config_to_text(c)) == c


def test_index_sharded_over_gpus():
    cfgs = model_configs(RepoOptions(device="gpu", index_on_gpus="shard", gpus=[0, 1]), dim=8)
    for name in ("rag", "rag_stream", "retrieve"):
        g = cfgs[name].instance_group[0]
        assert g.kind == pb.ModelInstanceGroup.KIND_MODEL and not g.gpus
    g = cfgs["question_encoder"].instance_group[0]
    assert g.kind == pb.ModelInstanceGroup.KIND_GPU and list(g.gpus) == [0, 1]


def test_no_batching_and_model_subset():
    cfgs = model_configs(RepoOptions(max_batch_size=0, models=["retrieve", "rag"]), dim=8)
    assert list(cfgs) == ["rag", "retrieve"]  # canonical order; rag owns the artifacts
    assert all(c.max_batch_size == 0 and not c.HasField("dynamic_batching") for c in cfgs.values())


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(precision="int4"), "unknown precision"),
        (dict(flavor="tensorflow"), "unknown flavor"),
        (dict(device="tpu"), "unknown device"),
        (dict(max_batch_size=-1), "--max-batch-size"),
        (dict(max_batch_size=5000), "--max-batch-size"),
        (dict(instances=0), "--instances"),
        (dict(queue_delay_us=-5), "--queue-delay-us"),
        (dict(preferred_batch_sizes=[16], max_batch_size=8), "larger than --max-batch-size"),
        (dict(preferred_batch_sizes=[0]), "--preferred-batch-size"),
        (dict(preferred_batch_sizes=[2], dynamic_batching=False), "needs dynamic batching"),
        (dict(tensorrt=True), "--tensorrt needs --device gpu"),
        (dict(tensorrt=True, device="gpu"), "--flavor native"),
        (dict(device="gpu", precision="int8"), "no CUDA kernels"),
        (dict(gpus=[0]), "--device gpu"),
        (dict(models=["rag", "chat"]), "unknown model"),
        (dict(models=[]), "no models selected"),
        (dict(generator_encoder=True), "--flavor native"),
        (dict(max_n_docs=0), "--max-n-docs"),
        (dict(index_on_gpus="shard"), "needs --device gpu"),
        (dict(index_on_gpus="spread", device="gpu"), "replicate or shard"),
        (dict(parallel=-1), "--parallel"),
    ],
)
def test_bad_options(kw, needle):
    with pytest.raises(InputError, match=needle.replace("-", r"\-")):
        model_configs(RepoOptions(**kw), dim=8)


def test_parse_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="not a valid Triton model config"):
        parse_config("name: 'x'\nmax_batch_size: eight\n", "x/config.pbtxt")
    (tmp_path / "m").mkdir()
    with pytest.raises(ArtifactError, match="does not exist"):
        read_config(tmp_path / "m")
    with pytest.raises(InputError, match="holds no models"):
        check_repository(tmp_path / "m")


# -- building from the fixture artifacts ----------------------------------------------------
@pytest.fixture(scope="module")
def index_dir(request, rag_bart_art, tmp_path_factory):
    from tests.test_serving import fixture_index

    return fixture_index(request, rag_bart_art, tmp_path_factory)


def test_build_repository_copies_and_checks(rag_bart_art, index_dir, tmp_path):
    from ragrt.runtime.manifest import sha256_file

    out = tmp_path / "repo"
    s = build_repository(rag_bart_art, index_dir, out, RepoOptions(models=["rag", "retrieve"]))
    assert s.models == ["rag", "retrieve"] and out.is_dir()
    assert not list(tmp_path.glob(".repo.*"))  # no staging directory left
    art = out / "rag" / "artifacts"
    assert (art / "model" / "manifest.json").is_file() and (art / "index" / "index.faiss").is_file()
    assert not (art / "model" / "generator" / "int8").exists()  # only the chosen precision
    rec = json.loads((art / "ragrt_repo.json").read_text())
    assert rec["models"] == ["rag", "retrieve"] and rec["options"]["precision"] == "fp32"
    for rel, r in rec["files"].items():
        assert sha256_file(out / rel) == r["sha256"]
    assert (out / "rag" / "1" / "model.py").read_text().count("RagModel as TritonPythonModel") == 1
    assert set(verify_repository(out)) == {"rag", "retrieve"}
    # an existing repository is kept unless --overwrite
    with pytest.raises(InputError, match="--overwrite"):
        build_repository(rag_bart_art, index_dir, out, RepoOptions())
    build_repository(
        rag_bart_art,
        index_dir,
        out,
        RepoOptions(overwrite=True, link=True, models=["question_encoder"]),
    )
    assert set(check_repository(out)) == {"question_encoder"}
    qe = next((out / "question_encoder" / "artifacts" / "model").rglob("model.onnx"))
    src = rag_bart_art / qe.relative_to(out / "question_encoder" / "artifacts" / "model")
    assert os.stat(qe).st_ino == os.stat(src).st_ino  # hard-linked
    # a corrupted copy is found by verify
    victim = next((out / "question_encoder" / "artifacts" / "index").glob("passages.*"))
    os.unlink(victim)
    victim.write_bytes(b"x" * 3)
    with pytest.raises(ArtifactError, match="truncated|sha256|bytes"):
        verify_repository(out)


def test_build_native_flavor(rag_bart_art, index_dir, tmp_path):
    out = tmp_path / "native"
    build_repository(
        rag_bart_art, index_dir, out, RepoOptions(flavor="native", models=["question_encoder"])
    )
    cfgs = check_repository(out)
    assert set(cfgs) == {"question_encoder", NATIVE_ENCODER, NATIVE_TOKENIZER}
    assert (out / NATIVE_ENCODER / "1" / "model.onnx").is_file()
    assert (out / NATIVE_TOKENIZER / "1" / "model.py").is_file()
    assert (
        cfgs[NATIVE_TOKENIZER].parameters["ragrt_artifacts"].string_value
        == "../question_encoder/artifacts"
    )
    verify_repository(out)


def test_build_refuses_bad_sources(rag_bart_art, index_dir, tmp_path):
    import shutil

    with pytest.raises(InputError, match="--index"):
        build_repository(rag_bart_art, [], tmp_path / "r1", RepoOptions())
    with pytest.raises(ArtifactError, match="does not exist"):
        build_repository(tmp_path / "nope", index_dir, tmp_path / "r2", RepoOptions())
    # a corrupt artifact is refused and no repository appears
    bad = tmp_path / "art-bad"
    shutil.copytree(rag_bart_art, bad)
    onnx = next((bad / "question_encoder" / "fp32").glob("model.onnx"))
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        build_repository(bad, index_dir, tmp_path / "r4", RepoOptions())
    assert not (tmp_path / "r4").exists() and not list(tmp_path.glob(".r4.*"))


def test_cli_build_repo_and_check(rag_bart_art, index_dir, tmp_path, capsys):
    from ragrt.cli import main

    out = tmp_path / "cli-repo"
    rc = main(
        [
            "triton",
            "build-repo",
            "--model",
            str(rag_bart_art),
            "--index",
            str(index_dir),
            "--out",
            str(out),
            "--models",
            "retrieve",
            "--max-batch-size",
            "4",
            "--preferred-batch-size",
            "2",
            "--instances",
            "2",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "retrieve" in text and "preferred 2" in text and "2x CPU" in text
    assert main(["triton", "check", str(out)]) == 0
    assert (
        main(
            [
                "triton",
                "build-repo",
                "--model",
                str(rag_bart_art),
                "--index",
                str(index_dir),
                "--out",
                str(tmp_path / "x"),
                "--tensorrt",
            ]
        )
        == 2
    )
    assert "error: --tensorrt needs --device gpu" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- wire format -----------------------------------------------------------------------------
def _get(arrays):
    return lambda name: arrays.get(name)


def test_request_round_trip():
    arrays = protocol.request_arrays(
        ["a?", "b?"], {"n_docs": 3, "mode": "sequence", "num_beams": None}
    )
    assert arrays["QUESTION"].shape == (2, 1) and arrays["N_DOCS"].dtype == np.int32
    assert "NUM_BEAMS" not in arrays
    qs, kw = protocol.parse_gen_request(_get(arrays), protocol.Limits(), batched=True)
    assert qs == ["a?", "b?"] and kw == {"n_docs": 3, "mode": "sequence"}
    one = protocol.request_arrays(["c"], {"max_new_tokens": 4}, batched=False)
    assert one["QUESTION"].shape == (1,)
    assert protocol.parse_gen_request(_get(one), protocol.Limits(), batched=False) == (
        ["c"],
        {"max_new_tokens": 4},
    )


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({}, "no QUESTION"),
        ({"QUESTION": np.array([[b" "]], dtype=object)}, "row 0 is empty"),
        ({"QUESTION": np.array([[b"\xff\xfe"]], dtype=object)}, "not valid UTF-8"),
        ({"QUESTION": np.array([[1]], dtype=np.int32)}, "must be BYTES"),
        ({"QUESTION": np.array([b"q"], dtype=object)}, r"shape \[batch, 1\]"),
        (
            {"QUESTION": np.array([[b"q"]], dtype=object), "N_DOCS": np.array([[0]], np.int32)},
            "N_DOCS=0 is out of range",
        ),
        (
            {"QUESTION": np.array([[b"q"]], dtype=object), "N_DOCS": np.array([[51]], np.int32)},
            "1..50",
        ),
        (
            {"QUESTION": np.array([[b"q"]], dtype=object), "NUM_BEAMS": np.array([[99]], np.int32)},
            "NUM_BEAMS=99",
        ),
        (
            {"QUESTION": np.array([[b"q"]], dtype=object), "N_DOCS": np.array([[1.5]], np.float32)},
            "integer tensor",
        ),
        (
            {
                "QUESTION": np.array([[b"q"], [b"r"]], dtype=object),
                "N_DOCS": np.array([[1], [2]], np.int32),
            },
            "same for every row",
        ),
        (
            {
                "QUESTION": np.array([[b"q"], [b"r"]], dtype=object),
                "N_DOCS": np.array([[1]], np.int32),
            },
            "has 1 rows",
        ),
        (
            {
                "QUESTION": np.array([[b"q"]], dtype=object),
                "MODE": np.array([[b"beam"]], dtype=object),
            },
            "MODE='beam'",
        ),
        (
            {
                "QUESTION": np.array([[b"q"]], dtype=object),
                "MIN_NEW_TOKENS": np.array([[-1]], np.int32),
            },
            "0 or more",
        ),
    ],
)
def test_bad_requests(arrays, needle):
    with pytest.raises(InputError, match=needle):
        protocol.parse_gen_request(_get(arrays), protocol.Limits(), batched=True)


def _result(q, ids, n_docs=2, n_seq=1):
    docs = [Doc(f"p{j}", f"T{j}", f"text {j} é", -float(j)) for j in range(n_docs)]
    seqs = [Hypothesis(f"ans{k}", ids[: len(ids) - k], -1.0 - k) for k in range(n_seq)]
    return GenerationResult(q, seqs[0].text, list(seqs[0].token_ids), seqs[0].score, docs, seqs)


def test_results_round_trip():
    res = [_result("q1", [0, 5, 7, 2], n_seq=2), _result("q2", [0, 2], n_seq=2)]
    arrays = protocol.pack_results(res)
    assert arrays["TOKEN_IDS"].shape == (2, 4) and arrays["TOKEN_IDS"][1, 2] == protocol.PAD_ID
    back = protocol.unpack_results(_get(arrays), ["q1", "q2"])
    assert back == res
    docs = protocol.unpack_docs(_get(protocol.pack_docs([r.docs for r in res])), 2)
    assert docs == [r.docs for r in res]


def test_errors_travel_with_their_code():
    msg = protocol.error_text(InputError("N_DOCS=0 is out of range"))
    assert msg == "[invalid_input] N_DOCS=0 is out of range"
    e = protocol.error_from_text("[request id: <id_unknown>] " + msg)
    assert isinstance(e, InputError) and str(e) == "N_DOCS=0 is out of range"
    assert isinstance(protocol.error_from_text("[bad_artifact] gone"), ArtifactError)
    plain = protocol.error_from_text("inference request batch-size must be <= 8", InputError)
    assert isinstance(plain, InputError) and "batch-size" in str(plain)
    assert "ZeroDivisionError" in protocol.error_text(ZeroDivisionError("x"))
    assert isinstance(protocol.error_from_text(protocol.error_text(KeyError("k"))), ServerError)


# -- model code with a stand-in for triton_python_backend_utils ------------------------------
class _Tensor:
    def __init__(self, name, arr):
        self._name, self._arr = name, np.asarray(arr)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._arr


class _TritonError(Exception):
    INVALID_ARG, INTERNAL = 3, 13

    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.msg, self.code = msg, code


class _Response:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class _Request:
    def __init__(self, arrays):
        self.arrays = arrays


@pytest.fixture
def fake_pb(monkeypatch):
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor = _Tensor
    m.TritonError = _TritonError
    m.InferenceResponse = _Response
    m.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    m.get_input_tensor_by_name = lambda r, n: _Tensor(n, r.arrays[n]) if n in r.arrays else None
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", m)
    return m


@dataclasses.dataclass(frozen=True)
class _FakeRequest:
    """Stands in for GenerationRequest: the keywords it was resolved from (defaults 1 beam,
    2 docs)."""

    items: tuple

    @property
    def kw(self):
        return dict(self.items)

    @property
    def n_docs(self):
        return self.kw.get("n_docs", 2)

    @property
    def num_beams(self):
        return self.kw.get("num_beams", 1)

    @property
    def decoder_rows(self):
        return self.n_docs * self.num_beams


class _FakeEngine:
    """Answers with the question's length; fails on a question containing 'boom'."""

    def __init__(self):
        self.calls = []

    def request(self, **kw):
        return _FakeRequest(tuple(sorted(kw.items())))

    def generate(self, qs, request):
        kw = request.kw
        self.calls.append((list(qs), kw))
        if any("boom" in q for q in qs):
            raise RuntimeError("boom")
        return [_result(q, [0, len(q), 2], n_docs=kw.get("n_docs", 2)) for q in qs]


def _rag_model(max_batch_size=8, **limits):
    from ragrt.triton_models.backend import RagModel

    m = RagModel()
    m.name, m.batched, m.engine = "rag", max_batch_size > 0, _FakeEngine()
    m.limits = protocol.Limits(**limits)
    return m


def test_rag_model_groups_and_isolates(fake_pb):
    m = _rag_model()
    reqs = [
        _Request(protocol.request_arrays(["aa", "bbb"], {"n_docs": 2})),
        _Request(protocol.request_arrays(["c"], {"n_docs": 3})),
        _Request(protocol.request_arrays([""], {})),  # bad: empty
        _Request(protocol.request_arrays(["dddd"], {"n_docs": 2})),
        _Request(protocol.request_arrays(["boom"], {"n_docs": 2})),  # engine failure
        _Request(protocol.request_arrays(["e"], {"n_docs": 99})),  # out of range
    ]
    out = m.execute(reqs)
    assert len(out) == len(reqs)
    ok = [o for o in out if o.error is None]
    assert len(ok) == 3
    assert protocol.unpack_results(lambda n: out[0].outputs.get(n), ["aa", "bbb"])[1].token_ids == [
        0,
        3,
        2,
    ]
    assert out[1].outputs["DOC_IDS"].shape == (1, 3)
    assert out[2].error.msg.startswith("[invalid_input] QUESTION row 0 is empty")
    assert out[2].error.code == _TritonError.INVALID_ARG
    assert (
        out[4].error.msg.startswith("[server_error] internal error") and "boom" in out[4].error.msg
    )
    assert "N_DOCS=99" in out[5].error.msg
    # one merged call for the n_docs=2 group, then one by one after the failure
    assert m.engine.calls[0] == (["aa", "bbb", "dddd", "boom"], {"n_docs": 2})
    assert (["dddd"], {"n_docs": 2}) in m.engine.calls


def test_rag_model_limits_decoder_rows(fake_pb):
    m = _rag_model(max_decoder_rows=6)
    out = m.execute(
        [
            _Request(protocol.request_arrays(["a"] * 4, {"n_docs": 2})),
            _Request(protocol.request_arrays(["b"], {"n_docs": 2})),
            _Request(protocol.request_arrays(["c"], {"n_docs": 2})),
        ]
    )
    assert "request too large" in out[0].error.msg
    assert out[1].error is None and out[2].error is None
    out = m.execute(
        [_Request(protocol.request_arrays(["a", "b"], {"n_docs": 2})) for _ in range(3)]
    )
    assert all(o.error is None for o in out)
    assert [len(c[0]) for c in m.engine.calls[-2:]] == [2, 2]  # chunked at 6 // 2 = 3 rows


def test_rag_model_runs_pieces_in_parallel(fake_pb):
    m = _rag_model()
    m.parallel = 2
    reqs = [_Request(protocol.request_arrays([f"q{i}" * (i + 1)], {"n_docs": 2})) for i in range(5)]
    out = m.execute(reqs)
    assert all(o.error is None for o in out)
    for i, o in enumerate(out):  # every request gets its own answer back
        assert o.outputs["TOKEN_IDS"][0].tolist() == [0, 2 * (i + 1), 2]
    assert sorted(len(c[0]) for c in m.engine.calls) == [2, 3]


class _Sender:
    """A decoupled response sender whose client goes away after ``polls`` cancellation polls."""

    def __init__(self, polls):
        self.responses, self.polls, self.limit = [], 0, polls

    def send(self, response, flags=0):
        self.responses.append((response, flags))

    def is_cancelled(self):
        self.polls += 1
        return self.polls > self.limit


class _StreamRequest(_Request):
    def __init__(self, arrays, sender):
        super().__init__(arrays)
        self.sender = sender

    def get_response_sender(self):
        return self.sender


def test_rag_stream_stops_the_decode_of_a_cancelled_request(fake_pb, rag_engine):
    """A beam stream has one piece: cancellation must be noticed inside the decode loop."""
    from concurrent.futures import ThreadPoolExecutor

    from ragrt.triton_models.backend import RagStreamModel

    m = RagStreamModel()
    m.name, m.engine, m.limits = "rag_stream", rag_engine, protocol.Limits()
    m.pool = ThreadPoolExecutor(1)
    sender = _Sender(polls=3)
    gen = {"num_beams": 2, "n_docs": 2, "max_new_tokens": 30, "min_new_tokens": 30}
    arrays = protocol.request_arrays(["what is a heap queue"], gen, batched=False)
    m.execute([_StreamRequest(arrays, sender)])
    m.finalize()
    ((resp, flags),) = sender.responses
    assert flags == fake_pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    assert resp.error.msg.startswith("[cancelled]")
    assert sender.polls == 4  # once per beam step: stopped at the first step after the cancel


# -- client URL parsing and the launcher -----------------------------------------------------
@pytest.mark.parametrize(
    "url,protocol,expect",
    [
        ("localhost:8001", None, ("localhost:8001", "grpc")),
        ("localhost:8000", None, ("localhost:8000", "http")),
        ("http://h:9000/", None, ("h:9000", "http")),
        ("grpc://h", None, ("h:8001", "grpc")),
        ("h:9000", "http", ("h:9000", "http")),
    ],
)
def test_parse_url(url, protocol, expect):
    from ragrt.serving.client import parse_url

    e = parse_url(url, protocol)
    assert (e.host_port, e.protocol) == expect


@pytest.mark.parametrize(
    "url,needle", [("", "empty"), ("ftp://h:1", "scheme"), ("h:x", "port"), ("h:1/v2", "path")]
)
def test_parse_url_errors(url, needle):
    from ragrt.serving.client import parse_url

    with pytest.raises(InputError, match=needle):
        parse_url(url)


def test_client_rejects_unknown_parameters():
    from ragrt.serving.client import RagClient

    c = RagClient("localhost:1", retries=0)
    with pytest.raises(InputError, match="temperature"):
        c.ask("q", temperature=0.5)
    with pytest.raises(InputError, match="list of strings"):
        c.ask_batch("q")


def test_client_gives_up_after_retries():
    from ragrt.serving.client import RagClient
    from ragrt.serving.server import free_port

    c = RagClient(f"127.0.0.1:{free_port()}", retries=2, backoff=0.01)
    with pytest.raises(ServerError, match="after 3 attempt"):
        c.embed(["q"])
    assert c.health()["live"] is False


def test_launcher_setup(tmp_path):
    from ragrt.serving.server import TritonServer, find_tritonserver

    with pytest.raises(InputError, match="does not exist"):
        TritonServer(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')
    with pytest.raises(InputError, match="--http-port"):
        TritonServer(tmp_path, http_port=70000)
    try:
        inst = find_tritonserver()
    except ServerError:
        pytest.skip("no tritonserver on this machine")
    srv = TritonServer(tmp_path, http_port=0, grpc_port=0, metrics_port=0)
    env = srv.environment()
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    if inst.bundled:
        srv._tmp = tmp_path / "t"
        cmd = srv.command()
        bd = Path(cmd[cmd.index("--backend-directory") + 1])
        assert (bd / "python" / "triton_python_backend_stub").is_file()
        assert (bd / "python" / "libtriton_python.so").is_file()
        assert str(inst.libs) in env["LD_LIBRARY_PATH"]
