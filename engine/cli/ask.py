"""``ragrt ask``: answer questions with a local engine or a running ragrt Triton server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ragrt.results import GenerationResult
    from ragrt.tracing import StageTimer


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        metavar="token|sequence",
        help="RAG-Token or RAG-Sequence (default: the checkpoint's)",
    )
    p.add_argument("--n-docs", type=int, help="passages retrieved per question (default: manifest)")
    p.add_argument("--num-beams", type=int, help="beam width (1 = greedy)")
    p.add_argument("--max-new-tokens", type=int, help="maximum generated tokens")
    p.add_argument(
        "--min-new-tokens", type=int, help="minimum generated tokens before EOS is allowed"
    )
    p.add_argument("--num-return-sequences", type=int, help="hypotheses per question (<= beams)")
    p.add_argument("--no-repeat-ngram-size", type=int, help="ban repeated n-grams of this size")
    p.add_argument(
        "--sequence-decoding",
        choices=["thorough", "fast"],
        help="RAG-Sequence: rescore every candidate on every doc (thorough, default) or not (fast)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ask",
        help="answer questions (local engine, or --url for a ragrt Triton server)",
        description="Retrieve passages and generate an answer for each QUESTION.",
    )
    p.add_argument("questions", nargs="+", metavar="QUESTION")
    p.add_argument("--model", type=Path, help="artifact directory from `ragrt export`")
    p.add_argument(
        "--index", type=Path, action="append", help="index directory (repeat for shards)"
    )
    p.add_argument("--url", help="ask a running server instead (e.g. localhost:8001 for gRPC)")
    p.add_argument(
        "--protocol", choices=["grpc", "http"], help="server protocol (default: from the URL)"
    )
    p.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="--url: the key of a server started with --api-key-file (also $RAGRT_API_KEY)",
    )
    p.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="--url grpcs://...: the CA certificate that signed the server's (default: system)",
    )
    p.add_argument("--precision", help="fp32 | fp16 | int8 (local engine; default fp32)")
    p.add_argument("--device", help="cpu | cuda | tensorrt (local engine; default cpu)")
    p.add_argument(
        "--nprobe",
        type=int,
        help="IVF lists probed per search (local engine; default: calibrated at build)",
    )
    add_generation_args(p)
    p.add_argument(
        "--stream",
        action="store_true",
        help="print the answer as it is generated (with --json: one JSON line per piece, "
        "then the result)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per question per line (with --timings: its stage timings)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the answers, not the sources (passage id, title, score) under each",
    )
    p.add_argument(
        "--show-docs",
        type=int,
        default=0,
        metavar="N",
        help="also print the text of the top N sources",
    )
    p.add_argument(
        "--timings",
        action="store_true",
        help="milliseconds per stage (local engine): a stderr line per call, or a 'timings' "
        "field in each --json line",
    )
    p.set_defaults(func=run)


def generation_kwargs(args: argparse.Namespace) -> dict:
    return {
        "mode": args.mode,
        "n_docs": args.n_docs,
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens,
        "num_return_sequences": args.num_return_sequences,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "sequence_decoding": args.sequence_decoding,
    }


def print_result(
    res: GenerationResult,
    as_json: bool,
    show_docs: int = 0,
    *,
    quiet: bool = False,
    timings: dict[str, Any] | None = None,
) -> None:
    """One answer: a JSON line, or ``Q:``/``A:`` lines followed (unless ``quiet``) by its
    sources, best first: rank, doc score, passage id and title (and the text of the first
    ``show_docs``)."""
    if as_json:
        line = res.to_json_dict()
        if timings is not None:
            line["timings"] = timings
        print(json.dumps(line, ensure_ascii=False))
        return
    print(f"Q: {res.question}")
    print(f"A: {res.text}")
    if quiet:
        return
    for rank, d in enumerate(res.docs, 1):
        print(f"   [{rank}] {d.score:8.3f}  {d.id}  {d.title}")
        if rank <= show_docs:
            text = " ".join(d.text.split())
            print(f"        {text if len(text) <= 160 else text[:157] + '...'}")


def warn(message: str) -> None:
    """A note on stderr about an option that has no effect (never fails the command)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ragrt.errors import InputError

    kw: dict[str, Any] = {k: v for k, v in generation_kwargs(args).items() if v is not None}
    if args.show_docs < 0:
        raise InputError(f"--show-docs must be >= 0, got {args.show_docs}")
    if args.url:
        if args.timings:
            raise InputError("--timings needs the local engine (--model and --index), not --url")
        ignored = [
            flag
            for flag, value in (
                ("--precision", args.precision),
                ("--device", args.device),
                ("--nprobe", args.nprobe),
                ("--model", args.model),
                ("--index", args.index),
            )
            if value is not None
        ]
        if ignored:
            warn(
                f"{', '.join(ignored)} ignored with --url: the server runs the model, index, "
                "precision and device it was started with"
            )
        import os

        from ragrt.serving.client import RagClient
        from ragrt.serving.security import read_key_file

        key = read_key_file(args.api_key_file) if args.api_key_file else None
        key = key or os.environ.get("RAGRT_API_KEY", "").strip() or None
        client = RagClient(
            args.url, protocol=args.protocol, api_key=key, root_certificates=args.tls_ca
        )
        stream, answer = client.stream, client.ask_batch
    else:
        if args.model is None or not args.index:
            raise InputError(
                "pass --model ART_DIR and --index INDEX_DIR (or --url of a ragrt server)"
            )
        from ragrt.engine import RagEngine

        engine = RagEngine.load(
            args.model,
            args.index,
            precision=args.precision or "fp32",
            device=args.device or "cpu",
            nprobe=args.nprobe,
        )
        index = engine.index
        if args.nprobe is not None and index is not None and index.nlist is None:
            warn(
                f"--nprobe {args.nprobe} ignored: the index is flat (exact search over every "
                "passage, no IVF lists to probe)"
            )
        stream, answer = engine.stream, engine.generate
    timer = None
    if args.timings:
        from ragrt.tracing import StageTimer

        timer = kw["tracer"] = StageTimer()
    if args.stream:
        for q in args.questions:
            pieces = []
            for piece in stream(q, **kw):
                pieces.append(piece)
                if args.json:
                    print(json.dumps({"type": "piece", "text": piece}, ensure_ascii=False))
                else:
                    sys.stdout.write(piece)
                sys.stdout.flush()
            if args.json:
                final: dict[str, Any] = {"type": "result", "question": q, "answer": "".join(pieces)}
                if timer is not None:
                    final["timings"] = timer.to_dict()
                    timer.reset()
                print(json.dumps(final, ensure_ascii=False), flush=True)
            else:
                print()
                _print_timings(timer)
        return 0
    results = answer(args.questions, **kw)
    batch_timings = None
    if timer is not None and args.json:
        batch_timings = {**timer.to_dict(), "batch_size": len(results)}
    for res in results:
        print_result(res, args.json, args.show_docs, quiet=args.quiet, timings=batch_timings)
    if not args.json:
        _print_timings(timer)
    return 0


def _print_timings(timer: StageTimer | None) -> None:
    if timer is not None:
        print(f"timings: {timer.summary()}", file=sys.stderr, flush=True)
        timer.reset()
