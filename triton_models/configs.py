"""The ``config.pbtxt`` of every model in a ragrt Triton repository.

Every config is a :class:`tritonclient.grpc.model_config_pb2.ModelConfig` message written with
``google.protobuf.text_format`` (never a string template) and parsed back after writing. The
python flavor serves everything from Python-backend models; the native flavor puts the
question encoder on Triton's ONNX Runtime backend behind an ensemble with the same interface.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ragrt.errors import ArtifactError, InputError
from ragrt.serving.protocol import INT_PARAMS
from ragrt.triton_models.options import (
    NATIVE_ENCODER,
    NATIVE_GENERATOR_ENCODER,
    NATIVE_TOKENIZER,
    RepoOptions,
)

CONFIG_NAME = "config.pbtxt"
ARTIFACTS = "artifacts"


def _pb():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:  # pragma: no cover - tritonclient is a runtime dependency
        raise InputError(
            f"building a Triton repository needs tritonclient[grpc] ({e}); "
            "pip install 'tritonclient[grpc]'"
        ) from None
    return model_config_pb2


def _tensor(msg_cls: Any, name: str, dtype: str, dims: Sequence[int], optional: bool = False):
    pb = _pb()
    t = msg_cls(name=name, data_type=getattr(pb, dtype), dims=list(dims))
    if optional:
        t.optional = True
    return t


def _inp(name: str, dtype: str, dims: Sequence[int], optional: bool = False):
    return _tensor(_pb().ModelInput, name, dtype, dims, optional)


def _out(name: str, dtype: str, dims: Sequence[int]):
    return _tensor(_pb().ModelOutput, name, dtype, dims)


def _base(
    name: str,
    opts: RepoOptions,
    *,
    backend: str | None = None,
    platform: str | None = None,
    batching: bool = True,
    instances: int | None = None,
    searches: bool = False,
):
    pb = _pb()
    c = pb.ModelConfig(name=name)
    if backend:
        c.backend = backend
    if platform:
        c.platform = platform
    c.max_batch_size = opts.max_batch_size if batching else 0
    if batching and opts.max_batch_size > 0 and opts.dynamic_batching:
        db = c.dynamic_batching
        db.preferred_batch_size.extend(opts.preferred_batch_sizes)
        db.max_queue_delay_microseconds = opts.queue_delay_us
    if platform != "ensemble":
        kind = (
            pb.ModelInstanceGroup.KIND_GPU
            if opts.device == "gpu"
            else pb.ModelInstanceGroup.KIND_CPU
        )
        if searches and opts.device == "gpu" and opts.index_on_gpus == "shard":
            # one instance sees every GPU: faiss splits the index over them (ORT on the first)
            kind = pb.ModelInstanceGroup.KIND_MODEL
        g = c.instance_group.add(count=instances or opts.instances, kind=kind)
        if kind == pb.ModelInstanceGroup.KIND_GPU and opts.gpus:
            g.gpus.extend(opts.gpus)
    return c


def _params(c: Any, values: dict[str, Any]) -> None:
    for k, v in values.items():
        if v is None:
            continue
        c.parameters[k].string_value = v if isinstance(v, str) else json.dumps(v)


def _engine_params(
    opts: RepoOptions, artifacts: str, n_shards: int, *, load: str
) -> dict[str, Any]:
    engine_device = "cpu" if opts.device == "cpu" else "cuda"
    return {
        "ragrt_artifacts": artifacts,
        "ragrt_model_dir": "model",
        "ragrt_index_dirs": [("index" if n_shards == 1 else f"index-{i}") for i in range(n_shards)],
        "ragrt_load": load,  # full | retrieve | encoder | tokenizer
        "ragrt_precision": opts.precision,
        "ragrt_device": engine_device,
        "ragrt_intra_op_threads": str(opts.intra_op_threads),
        "ragrt_nprobe": None if opts.nprobe is None else str(opts.nprobe),
        "ragrt_max_n_docs": str(opts.max_n_docs),
        "ragrt_max_num_beams": str(opts.max_num_beams),
        "ragrt_max_decoder_rows": str(opts.max_decoder_rows),
        "ragrt_stream_workers": str(opts.stream_workers),
        "ragrt_parallel": str(opts.parallel),
    }


def _gen_inputs(c: Any) -> None:
    c.input.append(_inp("QUESTION", "TYPE_STRING", [1]))
    for name in INT_PARAMS:
        c.input.append(_inp(name, "TYPE_INT32", [1], optional=True))
    c.input.append(_inp("MODE", "TYPE_STRING", [1], optional=True))


def _doc_outputs(c: Any) -> None:
    c.output.extend(
        [
            _out("DOC_IDS", "TYPE_STRING", [-1]),
            _out("DOC_SCORES", "TYPE_FP32", [-1]),
            _out("DOC_TITLES", "TYPE_STRING", [-1]),
            _out("DOC_TEXTS", "TYPE_STRING", [-1]),
        ]
    )


def rag_config(opts: RepoOptions, artifacts: str, n_shards: int = 1):
    """``rag``: the whole engine in one Python-backend model (the decode loop never leaves it)."""
    c = _base("rag", opts, backend="python", searches=True)
    _gen_inputs(c)
    c.output.extend(
        [
            _out("ANSWER", "TYPE_STRING", [1]),
            _out("TOKEN_IDS", "TYPE_INT64", [-1]),  # right-padded with -1 within a request
            _out("SCORE", "TYPE_FP32", [1]),
        ]
    )
    _doc_outputs(c)
    c.output.extend(
        [
            _out("SEQ_TEXTS", "TYPE_STRING", [-1]),  # num_return_sequences hypotheses
            _out("SEQ_SCORES", "TYPE_FP32", [-1]),
            _out("SEQ_TOKEN_IDS", "TYPE_INT64", [-1, -1]),
        ]
    )
    _params(c, _engine_params(opts, artifacts, n_shards, load="full"))
    return c


def rag_stream_config(opts: RepoOptions, artifacts: str, n_shards: int = 1):
    """``rag_stream``: decoupled; one response per text piece, ``FINAL`` true on the last."""
    c = _base("rag_stream", opts, backend="python", batching=False, searches=True)
    _gen_inputs(c)
    c.output.extend([_out("TEXT", "TYPE_STRING", [1]), _out("FINAL", "TYPE_BOOL", [1])])
    c.model_transaction_policy.decoupled = True
    _params(c, _engine_params(opts, artifacts, n_shards, load="full"))
    return c


def retrieve_config(opts: RepoOptions, artifacts: str, n_shards: int = 1):
    c = _base("retrieve", opts, backend="python", searches=True)
    c.input.append(_inp("QUESTION", "TYPE_STRING", [1]))
    c.input.append(_inp("N_DOCS", "TYPE_INT32", [1], optional=True))
    _doc_outputs(c)
    _params(c, _engine_params(opts, artifacts, n_shards, load="retrieve"))
    return c


def question_encoder_config(opts: RepoOptions, artifacts: str, dim: int, n_shards: int = 1):
    c = _base("question_encoder", opts, backend="python")
    c.input.append(_inp("QUESTION", "TYPE_STRING", [1]))
    c.output.append(_out("EMBEDDINGS", "TYPE_FP32", [dim]))
    _params(c, _engine_params(opts, artifacts, n_shards, load="encoder"))
    return c


def _onnx_optimization(c: Any, opts: RepoOptions) -> None:
    if not opts.tensorrt:
        return
    acc = c.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    acc.parameters["precision_mode"] = opts.tensorrt_precision.upper()
    acc.parameters["max_workspace_size_bytes"] = str(opts.tensorrt_workspace_mb << 20)
    acc.parameters["trt_engine_cache_enable"] = "1"
    acc.parameters["trt_engine_cache_path"] = "/tmp/ragrt_trt_cache"


def native_encoder_configs(
    opts: RepoOptions, artifacts: str, input_names: Sequence[str], dim: int, n_shards: int = 1
) -> dict[str, Any]:
    """Tokenizer (python) -> ``question_encoder_onnx`` (ONNX Runtime backend), as an ensemble
    named ``question_encoder`` with the python flavor's interface (QUESTION -> EMBEDDINGS)."""
    tok = _base(NATIVE_TOKENIZER, opts, backend="python")
    tok.input.append(_inp("QUESTION", "TYPE_STRING", [1]))
    for n in input_names:
        tok.output.append(_out(n, "TYPE_INT64", [-1]))
    _params(tok, _engine_params(opts, artifacts, n_shards, load="tokenizer"))
    # the tokenizer is cheap and always on CPU
    tok.instance_group[0].kind = _pb().ModelInstanceGroup.KIND_CPU
    del tok.instance_group[0].gpus[:]

    enc = _base(NATIVE_ENCODER, opts, platform="onnxruntime_onnx")
    enc.default_model_filename = "model.onnx"
    for n in input_names:
        enc.input.append(_inp(n, "TYPE_INT64", [-1]))
    enc.output.append(_out("embeddings", "TYPE_FP32", [dim]))
    _onnx_optimization(enc, opts)

    ens = _base("question_encoder", opts, platform="ensemble", batching=True)
    ens.ClearField("dynamic_batching")
    ens.input.append(_inp("QUESTION", "TYPE_STRING", [1]))
    ens.output.append(_out("EMBEDDINGS", "TYPE_FP32", [dim]))
    s1 = ens.ensemble_scheduling.step.add(model_name=NATIVE_TOKENIZER, model_version=-1)
    s1.input_map["QUESTION"] = "QUESTION"
    for n in input_names:
        s1.output_map[n] = f"_{n}"
    s2 = ens.ensemble_scheduling.step.add(model_name=NATIVE_ENCODER, model_version=-1)
    for n in input_names:
        s2.input_map[n] = f"_{n}"
    s2.output_map["embeddings"] = "EMBEDDINGS"
    return {NATIVE_TOKENIZER: tok, NATIVE_ENCODER: enc, "question_encoder": ens}


def generator_encoder_config(opts: RepoOptions, d_model: int):
    """The generator encoder served alone (ONNX Runtime backend): ids -> encoder states."""
    c = _base(NATIVE_GENERATOR_ENCODER, opts, platform="onnxruntime_onnx")
    c.default_model_filename = "model.onnx"
    c.input.append(_inp("input_ids", "TYPE_INT64", [-1]))
    c.input.append(_inp("attention_mask", "TYPE_INT64", [-1]))
    c.output.append(_out("last_hidden_state", "TYPE_FP32", [-1, d_model]))
    _onnx_optimization(c, opts)
    return c


def model_configs(
    opts: RepoOptions,
    *,
    dim: int,
    input_names: Sequence[str] = ("input_ids", "attention_mask"),
    d_model: int = 0,
    n_shards: int = 1,
    owner: str | None = None,
) -> dict[str, Any]:
    """All ``ModelConfig`` messages of a repository, by model name (no files touched)."""
    opts.validate()
    owner = owner or opts.models[0]
    out: dict[str, Any] = {}
    for name in opts.models:
        art = ARTIFACTS if name == owner else f"../{owner}/{ARTIFACTS}"
        if name == "rag":
            out[name] = rag_config(opts, art, n_shards)
        elif name == "rag_stream":
            out[name] = rag_stream_config(opts, art, n_shards)
        elif name == "retrieve":
            out[name] = retrieve_config(opts, art, n_shards)
        elif name == "question_encoder":
            if opts.flavor == "native":
                out.update(
                    native_encoder_configs(
                        opts, f"../{owner}/{ARTIFACTS}", input_names, dim, n_shards
                    )
                )
            else:
                out[name] = question_encoder_config(opts, art, dim, n_shards)
    if opts.flavor == "native" and opts.generator_encoder:
        out[NATIVE_GENERATOR_ENCODER] = generator_encoder_config(opts, d_model)
    return out


def config_to_text(config: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str, where: Any = "config.pbtxt"):
    """Parse ``config.pbtxt`` text into a ``ModelConfig``; an :class:`ArtifactError` names the
    file and the parser's complaint."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, _pb().ModelConfig())
    except text_format.ParseError as e:
        raise ArtifactError(f"{where} is not a valid Triton model config: {e}") from None


def read_config(path: str | os.PathLike):
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_NAME
    if not p.is_file():
        raise ArtifactError(f"{p} does not exist: not a Triton model folder")
    return parse_config(p.read_text(encoding="utf-8"), p)


def write_config(model_dir: str | os.PathLike, config: Any) -> Path:
    """Write ``model_dir/config.pbtxt`` and check that it parses back to the same message."""
    p = Path(model_dir) / CONFIG_NAME
    text = config_to_text(config)
    p.write_text(text, encoding="utf-8")
    if read_config(p) != config:  # pragma: no cover - protobuf round trip is exact
        raise ArtifactError(f"{p} does not parse back to the config that was written")
    return p


def describe(configs: Iterable[Any]) -> list[str]:
    """One line per model: name, backend/platform, batching and instances (for the CLI)."""
    lines = []
    for c in configs:
        kind = c.backend or c.platform
        batching = f"max_batch_size={c.max_batch_size}"
        if c.HasField("dynamic_batching"):
            db = c.dynamic_batching
            batching += f", dynamic batching (queue {db.max_queue_delay_microseconds} us"
            if db.preferred_batch_size:
                batching += ", preferred " + "/".join(map(str, db.preferred_batch_size))
            batching += ")"
        inst = (
            ", ".join(f"{g.count}x {'GPU' if g.kind == 1 else 'CPU'}" for g in c.instance_group)
            or "-"
        )
        extra = " decoupled" if c.model_transaction_policy.decoupled else ""
        lines.append(f"{c.name:22s} {kind:16s} {batching}; instances {inst}{extra}")
    return lines
