"""Build a Triton model repository for a ragrt model + passage index.

Every ``config.pbtxt`` is a :class:`tritonclient.grpc.model_config_pb2.ModelConfig` message
written with ``google.protobuf.text_format`` (never a string template) and parsed back before
the repository is published. The model code is the checked-in ``triton_models/<name>/1/model.py``
(thin files importing :mod:`ragrt.triton_models.backend`); the artifacts are copied (or
hard-linked) into the repository and checked against the sha256 their manifests record.

Layout (python flavor)::

    REPO/
      rag/config.pbtxt  rag/1/model.py           engine in-process: QUESTION -> ANSWER, docs
      rag/artifacts/model/...                    ART_DIR files of the chosen precision
      rag/artifacts/index/...                    INDEX_DIR (index-0, index-1, ... for shards)
      rag/artifacts/ragrt_repo.json              what was built from what, with sha256
      rag_stream/  config.pbtxt 1/model.py       decoupled: one response per text piece
      retrieve/    config.pbtxt 1/model.py       QUESTION -> DOC_IDS, DOC_SCORES, ...
      question_encoder/ config.pbtxt 1/model.py  QUESTION -> EMBEDDINGS

Triton treats every top-level folder as a model, so the artifacts live inside the first model's
folder (a non-numeric sub-folder, which Triton ignores) and the other models point at it with a
relative path: the repository can be moved or mounted into a container as a whole.

The native flavor serves the question encoder through Triton's ONNX Runtime backend
(``platform: "onnxruntime_onnx"``: dynamic batching, instance groups, optional TensorRT
accelerator on GPU) behind an ensemble ``question_encoder`` = ``question_tokenizer`` (python) ->
``question_encoder_onnx``, so clients send text either way. ``rag``, ``rag_stream`` and
``retrieve`` stay Python-backend models: the decode loop runs inside one model.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ragrt import __version__
from ragrt.errors import ArtifactError, InputError
from ragrt.publish import publish_dir
from ragrt.serving.protocol import INT_PARAMS

log = logging.getLogger(__name__)

CONFIG_NAME = "config.pbtxt"
ARTIFACTS = "artifacts"
REPO_MANIFEST = "ragrt_repo.json"

#: models of the python flavor, in build order (the first one present owns the artifacts)
MODELS = ("rag", "rag_stream", "retrieve", "question_encoder")
#: extra models of the native flavor
NATIVE_ENCODER = "question_encoder_onnx"
NATIVE_TOKENIZER = "question_tokenizer"
NATIVE_GENERATOR_ENCODER = "generator_encoder"
#: folders with checked-in model.py files (the ensemble and the ONNX models have none)
PYTHON_MODELS = ("rag", "rag_stream", "retrieve", "question_encoder", "question_tokenizer")

FLAVORS = ("python", "native")
DEVICES = ("cpu", "gpu")
MAX_BATCH_LIMIT = 1024


def _pb():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:  # pragma: no cover - tritonclient is a runtime dependency
        raise InputError(
            f"building a Triton repository needs tritonclient[grpc] ({e}); "
            "pip install 'tritonclient[grpc]'"
        ) from None
    return model_config_pb2


# -- options ---------------------------------------------------------------------------------
@dataclass
class RepoOptions:
    """Knobs of :func:`build_repository` (flags of ``ragrt triton build-repo``)."""

    precision: str = "fp32"
    max_batch_size: int = 8
    #: dynamic batcher's preferred batch sizes (default: none, batch whatever is queued)
    preferred_batch_sizes: list[int] = field(default_factory=list)
    #: how long the dynamic batcher waits to fill a batch (microseconds)
    queue_delay_us: int = 2000
    dynamic_batching: bool = True
    instances: int = 1  # per model (per GPU with device=gpu)
    stream_workers: int = 4  # concurrent streams per rag_stream instance
    #: engine calls one instance runs at once on threads (a dynamic batch is split into up to
    #: this many pieces); 0 = auto: the max batch size on CPU (at most 8), 1 on GPU
    parallel: int = 0
    device: str = "cpu"  # cpu | gpu
    gpus: list[int] = field(default_factory=list)  # device=gpu: GPU ids (default: all)
    #: device=gpu: ``replicate`` = one instance per GPU, each with the whole index on its GPU;
    #: ``shard`` = instances that see every GPU, the index split over them (corpora larger than
    #: one GPU's memory)
    index_on_gpus: str = "replicate"
    flavor: str = "python"  # python | native
    tensorrt: bool = False  # native + gpu: TensorRT accelerator for the ONNX models
    tensorrt_precision: str = "fp16"  # fp16 | fp32
    tensorrt_workspace_mb: int = 1024
    generator_encoder: bool = False  # native: also serve the generator encoder alone
    models: list[str] = field(default_factory=lambda: list(MODELS))
    link: bool = False  # hard-link artifacts instead of copying (same file system)
    intra_op_threads: int = 0  # ONNX Runtime threads per model instance (0 = one per core)
    nprobe: int | None = None
    #: request limits enforced by the models (a request beyond them gets an error response)
    max_n_docs: int = 50
    max_num_beams: int = 16
    max_decoder_rows: int = 4096  # rows * num_beams * n_docs per engine call
    overwrite: bool = False

    def validate(self) -> RepoOptions:
        from ragrt.runtime.manifest import PRECISIONS

        def positive(name: str, v: Any, lo: int = 1, hi: int | None = None) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi and v > hi):
                rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                raise InputError(f"{name} must be an integer {rng}, got {v!r}")

        if self.precision not in PRECISIONS:
            raise InputError(
                f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        if self.flavor not in FLAVORS:
            raise InputError(f"unknown flavor {self.flavor!r}: choose python or native")
        if self.device not in DEVICES:
            raise InputError(f"unknown device {self.device!r}: choose cpu or gpu")
        positive("--max-batch-size", self.max_batch_size, 0, MAX_BATCH_LIMIT)
        positive("--instances", self.instances)
        positive("--stream-workers", self.stream_workers)
        positive("--parallel", self.parallel, 0)
        positive("--queue-delay-us", self.queue_delay_us, 0)
        positive("--threads", self.intra_op_threads, 0)
        positive("--max-n-docs", self.max_n_docs)
        positive("--max-num-beams", self.max_num_beams)
        positive("--max-decoder-rows", self.max_decoder_rows)
        positive("--tensorrt-workspace-mb", self.tensorrt_workspace_mb)
        if self.nprobe is not None:
            positive("--nprobe", self.nprobe)
        for g in self.gpus:
            positive("--gpu", g, 0)
        if self.gpus and self.device != "gpu":
            raise InputError("--gpu ids need --device gpu")
        for s in self.preferred_batch_sizes:
            positive("--preferred-batch-size", s)
            if s > self.max_batch_size:
                raise InputError(
                    f"--preferred-batch-size {s} is larger than --max-batch-size "
                    f"{self.max_batch_size}"
                )
        if self.preferred_batch_sizes and not self.dynamic_batching:
            raise InputError(
                "--preferred-batch-size needs dynamic batching (drop --no-dynamic-batching)"
            )
        if self.max_batch_size == 0 and self.preferred_batch_sizes:
            raise InputError("--preferred-batch-size needs --max-batch-size >= 1")
        if self.device == "gpu" and self.precision == "int8":
            raise InputError(
                "int8 (dynamic quantization, MatMulInteger) has no CUDA kernels: use "
                "--precision fp16 or fp32 with --device gpu"
            )
        if self.tensorrt:
            if self.device != "gpu":
                raise InputError("--tensorrt needs --device gpu")
            if self.flavor != "native":
                raise InputError(
                    "--tensorrt applies to the native flavor's ONNX Runtime models: add "
                    "--flavor native"
                )
        if self.index_on_gpus not in ("replicate", "shard"):
            raise InputError(
                f"--index-on-gpus must be replicate or shard, got {self.index_on_gpus!r}"
            )
        if self.index_on_gpus == "shard" and self.device != "gpu":
            raise InputError("--index-on-gpus shard needs --device gpu")
        if self.tensorrt_precision not in ("fp16", "fp32"):
            raise InputError(
                f"--tensorrt-precision must be fp16 or fp32, got {self.tensorrt_precision!r}"
            )
        if self.generator_encoder and self.flavor != "native":
            raise InputError(
                "--generator-encoder is part of the native flavor: add --flavor native"
            )
        models = list(dict.fromkeys(self.models))
        if not models:
            raise InputError("no models selected: choose from " + ", ".join(MODELS))
        bad = [m for m in models if m not in MODELS]
        if bad:
            raise InputError(f"unknown model(s) {', '.join(bad)}: choose from {', '.join(MODELS)}")
        self.models = [m for m in MODELS if m in models]
        return self


# -- config.pbtxt ----------------------------------------------------------------------------
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


def check_repository(repo: str | os.PathLike) -> dict[str, Any]:
    """Parse every model's config in ``repo``; names must match their folders and every
    Python-backend model needs ``1/model.py``. Returns the configs by name."""
    root = Path(repo)
    if not root.is_dir():
        raise InputError(
            f"model repository {root} does not exist (build one with `ragrt triton build-repo`)"
        )
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        c = read_config(d)
        if c.name and c.name != d.name:
            raise ArtifactError(
                f"{d / CONFIG_NAME} names model {c.name!r}, but its folder is {d.name!r}"
            )
        if c.backend == "python" and not (d / "1" / "model.py").is_file():
            raise ArtifactError(f"{d}/1/model.py is missing: rebuild the repository")
        if (
            c.platform == "onnxruntime_onnx"
            and not (d / "1" / (c.default_model_filename or "model.onnx")).is_file()
        ):
            raise ArtifactError(f"{d}/1/model.onnx is missing: rebuild the repository")
        out[d.name] = c
    if not out:
        raise InputError(
            f"{root} holds no models (no */config.pbtxt): build it with `ragrt triton build-repo`"
        )
    return out


# -- artifacts -------------------------------------------------------------------------------
def _place(src: Path, dst: Path, sha256: str | None, size: int | None, link: bool) -> str:
    """Copy (or hard-link) ``src`` to ``dst``; check the result's sha256; return it."""
    from ragrt.runtime.manifest import sha256_file

    if not src.is_file():
        raise ArtifactError(
            f"{src} is missing: the directory is incomplete (re-export or rebuild it)"
        )
    if size is not None and src.stat().st_size != size:
        raise ArtifactError(
            f"{src} has {src.stat().st_size} bytes, its manifest says {size}: truncated or "
            "corrupt copy; re-copy or rebuild it"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    done = False
    if link:
        try:
            os.link(src, dst)
            done = True
        except OSError as e:
            log.info("cannot hard-link %s (%s): copying", src, e)
    if not done:
        shutil.copyfile(src, dst)
    got = sha256_file(dst)
    if sha256 is not None and got != sha256:
        raise ArtifactError(
            f"{src} does not match the sha256 in its manifest ({got[:12]} != {sha256[:12]}): "
            "corrupt file; re-copy or rebuild it"
        )
    return got


@dataclass
class RepoSummary:
    """What :func:`build_repository` wrote."""

    repo: Path
    models: list[str]
    files: dict[str, dict[str, Any]]
    options: dict[str, Any]

    @property
    def total_bytes(self) -> int:
        return sum(int(r["bytes"]) for r in self.files.values())


def _copy_model_py(name: str, dst_dir: Path) -> None:
    src = resources.files("ragrt.triton_models") / name / "1" / "model.py"
    if not src.is_file():
        raise ArtifactError(
            f"ragrt is missing its Triton model code {name}/1/model.py: reinstall ragrt"
        )
    (dst_dir / "1").mkdir(parents=True, exist_ok=True)
    (dst_dir / "1" / "model.py").write_text(src.read_text(encoding="utf-8"), encoding="utf-8")


def build_repository(
    model_dir: str | os.PathLike,
    index_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options: RepoOptions | None = None,
) -> RepoSummary:
    """Write a ready Triton model repository to ``out`` (see the module docstring).

    Checks before writing anything: the options, the artifact manifest (and that it has the
    precision), the index manifests, and that the index was built for this question encoder.
    The repository is written next to ``out`` and renamed into place when complete.
    """
    from ragrt.retrieval.index import IndexManifest, check_model_identity
    from ragrt.runtime import manifest as manifest_mod

    opts = (options or RepoOptions()).validate()
    art = Path(model_dir)
    dirs = [index_dirs] if isinstance(index_dirs, (str, os.PathLike)) else list(index_dirs)
    needs_index = any(m in opts.models for m in ("rag", "rag_stream", "retrieve"))
    if needs_index and not dirs:
        raise InputError("pass --index INDEX_DIR (rag, rag_stream and retrieve search it)")
    out = Path(out)
    if out.exists() and not opts.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    m = manifest_mod.load(art, verify=False, precision=opts.precision)
    imans = []
    q = m.question_encoder
    q_shas = {m.files[p]["sha256"] for p in q.onnx.values() if p in m.files}
    for d in dirs:
        im = IndexManifest.load(d)
        check_model_identity(im, name=q.name, dim=q.dim, sha256s=q_shas, where=d)
        imans.append((Path(d), im))

    configs = model_configs(
        opts,
        dim=q.dim,
        input_names=q.input_names,
        d_model=m.generator.d_model,
        n_shards=max(1, len(dirs)),
    )
    owner = opts.models[0]
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    files: dict[str, dict[str, Any]] = {}
    try:
        tmp.mkdir(parents=True)
        adir = tmp / owner / ARTIFACTS

        def place(src: Path, rel_dst: str, sha: str | None, size: int | None) -> None:
            dst = tmp / rel_dst
            got = _place(src, dst, sha, size, opts.link)
            files[rel_dst] = {"sha256": got, "bytes": dst.stat().st_size}

        # the model: manifest + every file the runtime opens at this precision
        place(
            art / manifest_mod.MANIFEST_NAME,
            f"{owner}/{ARTIFACTS}/model/{manifest_mod.MANIFEST_NAME}",
            None,
            None,
        )
        for rel in m.component_files(opts.precision):
            rec = m.files.get(rel) or {}
            place(
                art / rel, f"{owner}/{ARTIFACTS}/model/{rel}", rec.get("sha256"), rec.get("bytes")
            )
        # the index (or its shards)
        for i, (d, im) in enumerate(imans):
            name = "index" if len(imans) == 1 else f"index-{i}"
            place(d / "manifest.json", f"{owner}/{ARTIFACTS}/{name}/manifest.json", None, None)
            for rel, rec in im.files.items():
                place(
                    d / rel,
                    f"{owner}/{ARTIFACTS}/{name}/{rel}",
                    rec.get("sha256"),
                    rec.get("bytes"),
                )
        # native ONNX models: the graph (+ external data) in the version folder
        if NATIVE_ENCODER in configs:
            _place_onnx(m, q.onnx[opts.precision], NATIVE_ENCODER, place)
        if NATIVE_GENERATOR_ENCODER in configs:
            _place_onnx(
                m, m.generator.onnx[opts.precision]["encoder"], NATIVE_GENERATOR_ENCODER, place
            )
        # configs + model code
        for name, c in configs.items():
            mdir = tmp / name
            mdir.mkdir(parents=True, exist_ok=True)
            write_config(mdir, c)
            if name in PYTHON_MODELS:
                _copy_model_py(name, mdir)
        summary = RepoSummary(
            repo=out,
            models=list(configs),
            files=files,
            options=asdict(opts),
        )
        (adir).mkdir(parents=True, exist_ok=True)
        (adir / REPO_MANIFEST).write_text(
            json.dumps(
                {
                    "format": "ragrt-triton-repo",
                    "format_version": 1,
                    "ragrt_version": __version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "source": {
                        "model": str(art.resolve()),
                        "index": [str(Path(d).resolve()) for d in dirs],
                    },
                    "models": summary.models,
                    "options": summary.options,
                    "files": files,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        check_repository(tmp)
        publish_dir(tmp, out, opts.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _place_onnx(m: Any, rel: str, model_name: str, place: Any) -> None:
    """``<model>/1/model.onnx`` plus the graph's external-data files under their own names
    (an ONNX graph refers to its external data relative to itself)."""
    rec = m.files.get(rel) or {}
    place(m.path(rel), f"{model_name}/1/model.onnx", rec.get("sha256"), rec.get("bytes"))
    src = Path(rel)
    for other, r in m.files.items():
        o = Path(other)
        if other == rel or o.parent != src.parent or o.suffix == ".onnx":
            continue
        if o.name.startswith(src.name) or o.name.endswith("_data"):
            place(m.path(other), f"{model_name}/1/{o.name}", r.get("sha256"), r.get("bytes"))


def repository_models(repo: str | os.PathLike) -> list[str]:
    """Names of the models in ``repo`` (folders with a config.pbtxt)."""
    return sorted(p.parent.name for p in Path(repo).glob(f"*/{CONFIG_NAME}"))


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


def verify_repository(repo: str | os.PathLike, *, hash_files: bool = True) -> dict[str, Any]:
    """Parse every config (:func:`check_repository`) and check every artifact file against the
    sha256 and size recorded in ``ragrt_repo.json`` (e.g. after copying the repository to a
    server). Returns the configs by name."""
    from ragrt.runtime.manifest import sha256_file

    root = Path(repo)
    configs = check_repository(root)
    records = sorted(root.glob(f"*/{ARTIFACTS}/{REPO_MANIFEST}"))
    if not records:
        raise ArtifactError(
            f"{root} has no */{ARTIFACTS}/{REPO_MANIFEST}: not written by `ragrt triton build-repo`"
        )
    for rec in records:
        try:
            data = json.loads(rec.read_text(encoding="utf-8"))
            files = dict(data["files"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{rec} is malformed ({e}); rebuild the repository") from None
        for rel, r in files.items():
            p = root / rel
            if not p.is_file():
                raise ArtifactError(
                    f"{p} is missing: the repository is incomplete; rebuild or re-copy it"
                )
            if p.stat().st_size != int(r["bytes"]):
                raise ArtifactError(
                    f"{p} has {p.stat().st_size} bytes, {REPO_MANIFEST} says {r['bytes']}: "
                    "truncated copy; re-copy the repository"
                )
            if hash_files and sha256_file(p) != r["sha256"]:
                raise ArtifactError(
                    f"{p} does not match its sha256 in {rec}: corrupt copy; re-copy it"
                )
    return configs
