"""``ragrt triton build-repo | check``: write a Triton model repository, or check one."""

from __future__ import annotations

import argparse
from pathlib import Path


def _models(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "triton",
        help="build a Triton Inference Server model repository",
        description="Build or check a Triton model repository for a ragrt model + index.",
    )
    sub = p.add_subparsers(dest="triton_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    b = sub.add_parser(
        "build-repo",
        help="write a model repository (rag, rag_stream, retrieve, question_encoder)",
        description=(
            "Write a ready Triton model repository: config.pbtxt files generated from "
            "tritonclient's model_config protobuf, ragrt's Python-backend model code, and the "
            "artifacts copied (or hard-linked) and checked against their sha256. Serve it with "
            "`ragrt serve REPO` or any tritonserver with the Python backend."
        ),
    )
    b.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="ART_DIR",
        help="artifact dir from `ragrt export`",
    )
    b.add_argument(
        "--index",
        type=Path,
        action="append",
        default=[],
        metavar="INDEX_DIR",
        help="index dir from `ragrt index build` (repeat for shards of one corpus)",
    )
    b.add_argument("--out", required=True, type=Path, metavar="REPO", help="repository to create")
    b.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8 (default fp32)")
    b.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        metavar="N",
        help="largest batch a request or the dynamic batcher may form (0 = no batching; default 8)",
    )
    b.add_argument(
        "--preferred-batch-size",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="dynamic batcher's preferred batch size (repeatable)",
    )
    b.add_argument(
        "--queue-delay-us",
        type=int,
        default=2000,
        metavar="US",
        help="how long the dynamic batcher waits to fill a batch (default 2000)",
    )
    b.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_false",
        help="leave dynamic batching off",
    )
    b.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="instances per model (per GPU with --device gpu; default 1)",
    )
    b.add_argument(
        "--stream-workers",
        type=int,
        default=4,
        metavar="N",
        help="answers one rag_stream instance streams at once (default 4)",
    )
    b.add_argument(
        "--parallel",
        type=int,
        default=0,
        metavar="N",
        help="engine calls one instance runs at once on threads: a dynamic batch is split into "
        "up to N pieces (0 = auto: max batch size on CPU, capped at 8; 1 on GPU)",
    )
    b.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where the models run")
    b.add_argument(
        "--gpu",
        type=int,
        action="append",
        default=[],
        metavar="ID",
        help="GPU id for the instances (repeatable; default: every GPU)",
    )
    b.add_argument(
        "--index-on-gpus",
        choices=["replicate", "shard"],
        default="replicate",
        help="--device gpu: replicate = one instance per GPU with the whole index on it; shard "
        "= instances see every GPU and the index is split over them (larger corpora)",
    )
    b.add_argument(
        "--flavor",
        choices=["python", "native"],
        default="python",
        help="python: everything in the Python backend (any tritonserver); native: the "
        "question encoder on Triton's ONNX Runtime backend (production servers)",
    )
    b.add_argument(
        "--tensorrt",
        action="store_true",
        help="native + gpu: TensorRT execution accelerator for the ONNX models",
    )
    b.add_argument("--tensorrt-precision", choices=["fp16", "fp32"], default="fp16")
    b.add_argument(
        "--generator-encoder",
        action="store_true",
        help="native: also serve the generator encoder alone (ONNX Runtime backend)",
    )
    b.add_argument(
        "--models",
        type=_models,
        metavar="A,B",
        help="subset of rag,rag_stream,retrieve,question_encoder (default: all)",
    )
    b.add_argument(
        "--link",
        action="store_true",
        help="hard-link the artifacts instead of copying (same file system)",
    )
    b.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="ONNX Runtime threads per model instance (0 = one per core)",
    )
    b.add_argument("--nprobe", type=int, help="IVF lists probed per search (default: the index's)")
    b.add_argument(
        "--max-n-docs", type=int, default=50, help="largest N_DOCS a request may ask (default 50)"
    )
    b.add_argument("--max-num-beams", type=int, default=16, help="largest NUM_BEAMS (default 16)")
    b.add_argument(
        "--max-decoder-rows",
        type=int,
        default=4096,
        help="largest questions x beams x docs per engine call (default 4096)",
    )
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing REPO (only one build-repo wrote)",
    )
    b.set_defaults(func=_build)

    c = sub.add_parser(
        "check",
        help="parse every config.pbtxt and verify the sha256 of the artifacts and model code",
        description=(
            "Check a repository written by `ragrt triton build-repo` (e.g. after copying it): "
            "configs parse, every config.pbtxt and model.py matches the sha256 build-repo "
            "recorded and this ragrt's model code, every artifact its sha256 (sizes only with "
            "--no-hash). A staging directory left by a killed build-repo is refused."
        ),
    )
    c.add_argument("repo", type=Path, metavar="REPO")
    c.add_argument(
        "--no-hash", action="store_true", help="check artifact sizes only (fast; code is hashed)"
    )
    c.set_defaults(func=_check)


def _build(args: argparse.Namespace) -> int:
    from ragrt.triton_models.repository import (
        MODELS,
        RepoOptions,
        build_repository,
        describe,
        read_config,
    )

    opts = RepoOptions(
        precision=args.precision,
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=list(args.preferred_batch_size),
        queue_delay_us=args.queue_delay_us,
        dynamic_batching=args.dynamic_batching,
        instances=args.instances,
        stream_workers=args.stream_workers,
        parallel=args.parallel,
        device=args.device,
        gpus=list(args.gpu),
        index_on_gpus=args.index_on_gpus,
        flavor=args.flavor,
        tensorrt=args.tensorrt,
        tensorrt_precision=args.tensorrt_precision,
        generator_encoder=args.generator_encoder,
        models=args.models or list(MODELS),
        link=args.link,
        intra_op_threads=args.threads,
        nprobe=args.nprobe,
        max_n_docs=args.max_n_docs,
        max_num_beams=args.max_num_beams,
        max_decoder_rows=args.max_decoder_rows,
        overwrite=args.overwrite,
    )
    s = build_repository(args.model, args.index, args.out, opts)
    print(
        f"wrote {s.repo} ({len(s.files)} artifact files, {s.total_bytes / 1e6:.1f} MB, "
        f"{'hard-linked' if opts.link else 'copied'} and sha256-checked)"
    )
    for line in describe(read_config(s.repo / m) for m in s.models):
        print("  " + line)
    print(f"serve it: ragrt serve {s.repo}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ragrt.triton_models.repository import describe, verify_repository

    configs = verify_repository(args.repo, hash_files=not args.no_hash)
    for line in describe(configs.values()):
        print(line)
    print(
        f"{args.repo}: {len(configs)} models, configs parse, configs and model code match "
        f"their sha256, artifacts {'sizes' if args.no_hash else 'sha256'} match"
    )
    return 0
