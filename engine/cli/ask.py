"""``ragrt ask``: answer questions with a local engine or a running ragrt Triton server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

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
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8 (local engine)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | tensorrt (local engine)")
    p.add_argument("--nprobe", type=int, help="IVF lists probed per search (default: calibrated)")
    add_generation_args(p)
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--json", action="store_true", help="one JSON object per question per line")
    p.add_argument(
        "--show-docs", type=int, default=0, metavar="N", help="also print the top N passages"
    )
    p.add_argument(
        "--timings",
        action="store_true",
        help="print milliseconds per stage to stderr (local engine)",
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


def print_result(res: GenerationResult, as_json: bool, show_docs: int = 0) -> None:
    if as_json:
        print(json.dumps(res.to_json_dict(), ensure_ascii=False))
        return
    print(f"Q: {res.question}")
    print(f"A: {res.text}")
    for d in res.docs[:show_docs]:
        text = d.text if len(d.text) <= 160 else d.text[:157] + "..."
        print(f"   [{d.score:8.3f}] {d.title}: {text}")


def run(args: argparse.Namespace) -> int:
    from ragrt.errors import InputError

    kw = {k: v for k, v in generation_kwargs(args).items() if v is not None}
    if args.url:
        if args.timings:
            raise InputError("--timings needs the local engine (--model and --index), not --url")
        from ragrt.serving.client import RagClient

        client = RagClient(args.url, protocol=args.protocol)
        stream, answer = client.stream, client.ask_batch
    else:
        if args.model is None or not args.index:
            raise InputError(
                "pass --model ART_DIR and --index INDEX_DIR (or --url of a ragrt server)"
            )
        from ragrt.engine import RagEngine

        engine = RagEngine.load(
            args.model, args.index, precision=args.precision, device=args.device, nprobe=args.nprobe
        )
        stream, answer = engine.stream, engine.generate
    timer = None
    if args.timings:
        from ragrt.tracing import StageTimer

        timer = kw["tracer"] = StageTimer()
    if args.stream:
        for q in args.questions:
            for piece in stream(q, **kw):
                sys.stdout.write(piece)
                sys.stdout.flush()
            print()
            _print_timings(timer)
        return 0
    for res in answer(args.questions, **kw):
        print_result(res, args.json, args.show_docs)
    _print_timings(timer)
    return 0


def _print_timings(timer: StageTimer | None) -> None:
    if timer is not None:
        print(f"timings: {timer.summary()}", file=sys.stderr, flush=True)
        timer.reset()
