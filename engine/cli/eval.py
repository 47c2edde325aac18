"""``ragrt eval``: exact match, token F1, retrieval recall@k and latency on a question file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ragrt.cli.ask import add_generation_args, generation_kwargs

DESCRIPTION = """\
Answer every question of a JSON-lines file with a local engine and report exact match and
token F1 (SQuAD answer normalisation, best over the gold answers), retrieval recall@k for
lines with gold passage ids, and latency percentiles. One line per question:
  {"question": "...", "answers": ["...", ...], "gold_ids": ["passage id", ...]}
("gold_ids" optional)."""


def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not ks or any(k <= 0 for k in ks):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return ks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="exact match / F1 / recall@k / latency of a model on a question file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="artifact directory (ragrt export)")
    p.add_argument(
        "--index",
        type=Path,
        action="append",
        required=True,
        help="index directory (ragrt index build); repeat for shards",
    )
    p.add_argument(
        "--questions", type=Path, required=True, metavar="FILE.jsonl", help="question file"
    )
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8 (default fp32)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | tensorrt")
    p.add_argument("--nprobe", type=int, help="IVF lists probed per search (default: calibrated)")
    add_generation_args(p)
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="questions per generate call (latency is per call)",
    )
    p.add_argument(
        "--recall-at", type=_ks, default=[1, 5], metavar="K,K", help="recall@k cut-offs (1,5)"
    )
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--predictions",
        type=Path,
        metavar="OUT.jsonl",
        help="also write each question's answer, retrieved ids, EM and F1",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ragrt.engine import RagEngine
    from ragrt.errors import InputError
    from ragrt.evaluation import evaluate, read_questions

    questions = read_questions(args.questions)
    if args.limit is not None:
        if args.limit <= 0:
            raise InputError(f"--limit must be a positive integer, got {args.limit}")
        questions = questions[: args.limit]
    engine = RagEngine.load(
        args.model, args.index, precision=args.precision, device=args.device, nprobe=args.nprobe
    )
    kw = {k: v for k, v in generation_kwargs(args).items() if v is not None}
    report = evaluate(
        engine,
        questions,
        batch_size=args.batch_size,
        recall_k=args.recall_at,
        progress=not args.quiet,
        **kw,
    )
    d = engine.defaults
    mode = kw.get("mode") or d.rag_type
    report.settings = {
        "model": str(args.model),
        "questions_file": str(args.questions),
        "precision": args.precision,
        "mode": mode,
        "sequence_decoding": kw.get("sequence_decoding", "thorough")
        if mode == "sequence"
        else None,
        "n_docs": kw.get("n_docs", d.n_docs),
        "num_beams": kw.get("num_beams", d.num_beams),
    }
    if args.predictions:
        with args.predictions.open("w", encoding="utf-8") as f:
            for p in report.predictions:
                f.write(json.dumps(p.__dict__, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(report.summary())
    return 0
