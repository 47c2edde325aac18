"""``ragrt index build | search | info``: build an INDEX_DIR, query it, show its manifest."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index",
        help="build and search a passage index (FAISS IVF-PQ + memory-mapped passage store)",
        description="Build and search a passage index.",
    )
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    b = sub.add_parser(
        "build",
        help="embed passages and build INDEX_DIR",
        description=(
            "Embed passages (DPR TSV id<TAB>text<TAB>title with header, or JSONL id/title/text; "
            "optionally .gz) with the exported context encoder, or take precomputed embeddings, "
            "and build a FAISS inner-product index plus an on-disk passage store in INDEX_DIR. "
            "The directory appears only when the build is complete."
        ),
    )
    b.add_argument(
        "--passages", required=True, metavar="FILE", help="passage file (.tsv/.jsonl[.gz])"
    )
    b.add_argument(
        "--model",
        metavar="ART_DIR",
        help="artifact dir from `ragrt export` (its context encoder embeds the passages; "
        "with --embeddings only its identity is recorded)",
    )
    b.add_argument(
        "--embeddings",
        metavar="FILE.npy",
        help="precomputed [passages, dim] embeddings, in file order",
    )
    b.add_argument("--out", required=True, metavar="INDEX_DIR", help="index directory to create")
    b.add_argument(
        "--factory",
        help="FAISS index factory string (default: from corpus size, e.g. IVF4096,PQ64; Flat when tiny)",
    )
    b.add_argument("--train-size", type=int, metavar="N", help="training sample size")
    b.add_argument(
        "--exact-embeddings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep exact float16 embeddings (exact doc scores and re-ranking; default: on)",
    )
    b.add_argument("--skip-bad-rows", action="store_true", help="log and skip malformed rows")
    b.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    b.add_argument("--precision", default="fp32", help="context encoder precision (default fp32)")
    b.add_argument(
        "--encoder-device",
        choices=("cpu", "cuda", "tensorrt"),
        help="where the context encoder runs (default cpu)",
    )
    b.add_argument(
        "--device",
        choices=("cpu", "cuda", "tensorrt"),
        help=argparse.SUPPRESS,  # deprecated alias of --encoder-device
    )
    b.add_argument("--nprobe", type=int, help="fix the default nprobe instead of calibrating it")
    b.add_argument(
        "--calibration-queries",
        metavar="FILE.npy",
        help="question embeddings [Q, dim] to calibrate the default nprobe on (recommended: a "
        "few hundred real questions; default: sampled passages as a proxy)",
    )
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing INDEX_DIR (only an index ragrt built)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = b.add_argument_group(
        "Ray cluster (the `distributed` extra; the result equals the one-process build)"
    )
    r.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="embed on a Ray cluster: HOST:PORT of its head, `auto` for the cluster this node "
        "is in; without ADDRESS the cluster in RAY_ADDRESS, else a new local Ray runtime",
    )
    r.add_argument("--workers", type=int, help="embedding actors (default 1)")
    r.add_argument(
        "--cpus-per-worker",
        type=float,
        help="Ray CPUs per actor, also its ONNX Runtime threads (default 1)",
    )
    r.add_argument(
        "--block-rows",
        type=int,
        help="passages per shard (default 4096; multiples of 4096 embed exactly the "
        "one-process build's batches)",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted Ray build of INDEX_DIR, reusing its embedded shards",
    )
    r.add_argument(
        "--max-retries",
        type=int,
        help="restarts of a dead embedding actor and retries of its blocks (default 3)",
    )
    b.set_defaults(func=_build)

    s = sub.add_parser(
        "search",
        help="retrieve passages for questions",
        description="Embed questions with the question encoder and print the top-k passages.",
    )
    s.add_argument("index_dir", metavar="INDEX_DIR", help="index directory")
    s.add_argument("question", nargs="+", help="question(s)")
    s.add_argument(
        "--model", required=True, metavar="ART_DIR", help="artifact dir (question encoder)"
    )
    s.add_argument(
        "--shard",
        action="append",
        default=[],
        metavar="INDEX_DIR",
        help="more index dirs searched as shards of one corpus (repeatable)",
    )
    s.add_argument("-k", type=int, default=5, help="passages per question (default 5)")
    s.add_argument("--nprobe", type=int, help="IVF lists to probe (default: calibrated at build)")
    s.add_argument("--precision", default="fp32", help="question encoder precision")
    s.add_argument(
        "--index-device",
        choices=("cpu", "cuda", "auto"),
        help="where the FAISS index searches (default cpu; auto = a GPU when FAISS has one); "
        "the question encoder runs on the CPU",
    )
    s.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        help=argparse.SUPPRESS,  # deprecated alias of --index-device
    )
    s.add_argument("--json", action="store_true", help="one JSON object per question per line")
    s.set_defaults(func=_search)

    i = sub.add_parser(
        "info",
        help="print an index manifest; --verify hashes every file",
        description=(
            "Print INDEX_DIR's manifest as JSON: passages, dimension, FAISS factory, default "
            "nprobe and its calibration, the embedding model, the passage source, build "
            "timings, and every file's size and sha256. With --verify, first check every file "
            "against its recorded sha256 (reads the whole index) and say so on stderr."
        ),
    )
    i.add_argument("index_dir", metavar="INDEX_DIR")
    i.add_argument("--verify", action="store_true", help="check every file's size and sha256 first")
    i.set_defaults(func=_info)


_RAY_FLAGS = ("workers", "cpus_per_worker", "block_rows", "resume", "max_retries")


def _build(args: argparse.Namespace) -> int:
    from ragrt.errors import InputError
    from ragrt.retrieval.build import BuildOptions, build_index

    if not args.model and not args.embeddings:
        raise InputError(
            "give --model ART_DIR (embed with its context encoder) or --embeddings FILE.npy"
        )
    device = _device_alias(args.encoder_device, args.device, "--encoder-device", "cpu")
    if args.ray is None:
        used = [
            f"--{f.replace('_', '-')}"
            for f in _RAY_FLAGS
            if getattr(args, f) is not None and getattr(args, f) is not False
        ]
        if used:
            raise InputError(f"{', '.join(used)} only apply to a Ray build: add --ray [ADDRESS]")
    elif args.embeddings:
        raise InputError(
            "--ray embeds passages with --model's context encoder; precomputed --embeddings "
            "need no cluster: drop --ray"
        )
    opts = BuildOptions(
        factory=args.factory,
        train_size=args.train_size,
        exact_embeddings=args.exact_embeddings,
        skip_bad_rows=args.skip_bad_rows,
        batch_size=args.batch_size,
        nprobe=args.nprobe,
        calibration_queries=args.calibration_queries,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if args.ray is not None:
        from ragrt.retrieval.distributed import RayOptions, build_index_ray

        given = {f: getattr(args, f) for f in _RAY_FLAGS if getattr(args, f) is not None}
        m = build_index_ray(
            args.passages,
            args.out,
            model=args.model,
            precision=args.precision,
            device=device,
            options=opts,
            ray_options=RayOptions(address=args.ray or None, **given),
        )
    else:
        m = build_index(
            args.passages,
            args.out,
            model=args.model,
            embeddings=args.embeddings,
            precision=args.precision,
            device=device,
            options=opts,
        )
    skipped = m.source.get("skipped_rows", 0)
    print(
        f"built {args.out}: {m.passages} passages, {m.dimension}-d, {m.factory}, "
        f"scores {m.scores}, nprobe {m.nprobe}"
        + (f", {skipped} bad rows skipped" if skipped else "")
        + f" ({m.build.get('seconds', 0):.1f}s)"
    )
    ray = m.build.get("ray")
    if ray:
        print(
            f"on Ray: {ray['nodes']} nodes, {ray['workers']} workers, {ray['blocks']} shards "
            f"({ray['reused_blocks']} reused), {ray['embedded_passages_per_s']} passages/s"
        )
    return 0


def _search(args: argparse.Namespace) -> int:
    from ragrt.errors import InputError
    from ragrt.retrieval.retriever import Retriever

    questions = list(args.question)
    if any(not q.strip() for q in questions):
        raise InputError("empty question")
    retriever = Retriever.load(
        args.model,
        [args.index_dir, *args.shard],
        args.precision,
        index_device=_device_alias(args.index_device, args.device, "--index-device", "cpu"),
        nprobe=args.nprobe,
    )
    if args.nprobe is not None and retriever.index is not None and retriever.index.nlist is None:
        _warn(
            f"--nprobe {args.nprobe} ignored: the index is flat (exact search over every "
            "passage, no IVF lists to probe)"
        )
    for q, docs in zip(questions, retriever.retrieve(questions, args.k)):
        if args.json:
            print(
                json.dumps({"question": q, "docs": [d.to_dict() for d in docs]}, ensure_ascii=False)
            )
            continue
        print(f"question: {q}")
        for rank, d in enumerate(docs, 1):
            print(f"{rank:>3}. [{d.score:.4f}] {d.id}  {d.title}")
            print(f"     {' '.join(d.text.split())}")
    sys.stdout.flush()
    return 0


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ragrt.retrieval.index import IndexManifest

    m = IndexManifest.load(args.index_dir)
    if args.verify:
        m.verify(Path(args.index_dir), "full")
    print(json.dumps(m.to_dict(), indent=2))
    if args.verify:
        size = sum(int(r["bytes"]) for r in m.files.values())
        print(
            f"verified {args.index_dir}: all {len(m.files)} files match their recorded size "
            f"and sha256 ({size / 1e6:.1f} MB)",
            file=sys.stderr,
        )
    return 0


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _device_alias(new: str | None, old: str | None, name: str, default: str) -> str:
    """``--device`` meant the encoder's device in ``index build`` and the index's in
    ``index search``; each now has its own name and ``--device`` is a deprecated alias."""
    if old is not None:
        if new is not None and new != old:
            from ragrt.errors import InputError

            raise InputError(f"--device {old} contradicts {name} {new}; pass only {name}")
        _warn(f"--device is deprecated here: use {name} {old}")
    return new or old or default
