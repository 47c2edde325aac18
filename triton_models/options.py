"""What a Triton repository is built with: :class:`RepoOptions` (the flags of
``ragrt triton build-repo``), validated in one place before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragrt.errors import InputError

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


@dataclass
class RepoOptions:
    """Knobs of :func:`~ragrt.triton_models.repository.build_repository` (flags of
    ``ragrt triton build-repo``)."""

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
        """Check every option (one :class:`InputError` naming the flag); returns ``self`` with
        ``models`` deduplicated in canonical order."""
        self._check_choices()
        self._check_numbers()
        self._check_batching()
        self._check_devices()
        self.models = _canonical_models(self.models)
        return self

    def _check_choices(self) -> None:
        from ragrt.runtime.manifest import PRECISIONS

        if self.precision not in PRECISIONS:
            raise InputError(
                f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        if self.flavor not in FLAVORS:
            raise InputError(f"unknown flavor {self.flavor!r}: choose python or native")
        if self.device not in DEVICES:
            raise InputError(f"unknown device {self.device!r}: choose cpu or gpu")
        if self.index_on_gpus not in ("replicate", "shard"):
            raise InputError(
                f"--index-on-gpus must be replicate or shard, got {self.index_on_gpus!r}"
            )
        if self.tensorrt_precision not in ("fp16", "fp32"):
            raise InputError(
                f"--tensorrt-precision must be fp16 or fp32, got {self.tensorrt_precision!r}"
            )
        if self.generator_encoder and self.flavor != "native":
            raise InputError(
                "--generator-encoder is part of the native flavor: add --flavor native"
            )

    def _check_numbers(self) -> None:
        _integer("--max-batch-size", self.max_batch_size, 0, MAX_BATCH_LIMIT)
        for flag, value, lo in (
            ("--instances", self.instances, 1),
            ("--stream-workers", self.stream_workers, 1),
            ("--parallel", self.parallel, 0),
            ("--queue-delay-us", self.queue_delay_us, 0),
            ("--threads", self.intra_op_threads, 0),
            ("--max-n-docs", self.max_n_docs, 1),
            ("--max-num-beams", self.max_num_beams, 1),
            ("--max-decoder-rows", self.max_decoder_rows, 1),
            ("--tensorrt-workspace-mb", self.tensorrt_workspace_mb, 1),
        ):
            _integer(flag, value, lo)
        if self.nprobe is not None:
            _integer("--nprobe", self.nprobe)
        for g in self.gpus:
            _integer("--gpu", g, 0)

    def _check_batching(self) -> None:
        for s in self.preferred_batch_sizes:
            _integer("--preferred-batch-size", s)
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

    def _check_devices(self) -> None:
        if self.gpus and self.device != "gpu":
            raise InputError("--gpu ids need --device gpu")
        if self.device == "gpu" and self.precision == "int8":
            raise InputError(
                "int8 (dynamic quantization, MatMulInteger) has no CUDA kernels: use "
                "--precision fp16 or fp32 with --device gpu"
            )
        if self.tensorrt and self.device != "gpu":
            raise InputError("--tensorrt needs --device gpu")
        if self.tensorrt and self.flavor != "native":
            raise InputError(
                "--tensorrt applies to the native flavor's ONNX Runtime models: add --flavor native"
            )
        if self.index_on_gpus == "shard" and self.device != "gpu":
            raise InputError("--index-on-gpus shard needs --device gpu")


def _integer(name: str, v: Any, lo: int = 1, hi: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise InputError(f"{name} must be an integer {rng}, got {v!r}")


def _canonical_models(selected: list[str]) -> list[str]:
    models = list(dict.fromkeys(selected))
    if not models:
        raise InputError("no models selected: choose from " + ", ".join(MODELS))
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise InputError(f"unknown model(s) {', '.join(bad)}: choose from {', '.join(MODELS)}")
    return [m for m in MODELS if m in models]
