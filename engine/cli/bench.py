"""``ragrt bench``: latency/throughput of ragrt against transformers and optimum (one process).

The code lives in ``ragrt.benchmarks`` (the repository's ``benchmarks/`` folder) and needs the
``export`` and ``dev`` extras (torch, transformers, optimum, onnx, matplotlib).
"""

from __future__ import annotations

import argparse
import tempfile


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _names(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    if not vals:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return vals


SIZES = ("bart-tiny", "bart-base", "bart-large")
SYSTEMS = ("reference", "optimum", "optimum-longest", "ragrt-fp32", "ragrt-fp16", "ragrt-int8")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark ragrt against transformers and optimum (latency, throughput, roofline)",
        description=(
            "Run ragrt, transformers' RagTokenForGeneration and optimum's ORTModelForSeq2SeqLM "
            "in one process on the same questions, retrieved docs and output length; write "
            "JSON, PNG plots and SUMMARY.md. Models are published DPR/BART configurations with "
            "seeded random weights, built once into --cache (no download)."
        ),
    )
    p.add_argument(
        "--sizes",
        type=_names,
        default=["bart-base", "bart-large"],
        help=f"generator sizes, comma-separated ({', '.join(SIZES)}; default bart-base,bart-large)",
    )
    p.add_argument(
        "--encoder-size", default="bert-base", help="DPR question/context encoder (bert-base)"
    )
    p.add_argument(
        "--systems",
        type=_names,
        help="systems to compare (default cpu: reference,optimum,optimum-longest,ragrt-fp32,"
        "ragrt-int8; cuda: reference,optimum,ragrt-fp32,ragrt-fp16)",
    )
    p.add_argument("--batch-sizes", type=_ints, default=[1, 4, 16], help="batch sweep (1,4,16)")
    p.add_argument("--n-docs", type=_ints, default=[1, 5, 10], help="n_docs sweep (1,5,10)")
    p.add_argument("--num-beams", type=_ints, default=[1, 4], help="beam sweep (1,4)")
    p.add_argument(
        "--new-tokens", type=_ints, default=[8, 32, 64], help="output length sweep (8,32,64)"
    )
    p.add_argument("--batch-systems", type=_names, help="systems in the batch sweep (default: all)")
    p.add_argument(
        "--sweep-systems",
        type=_names,
        help="systems in the n_docs/beams/length sweeps (default: the ragrt ones)",
    )
    p.add_argument(
        "--sweep-sizes", type=_names, help="sizes the sweeps run on (default: the first size)"
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (3)")
    p.add_argument(
        "--questions", type=int, default=8, help="question batches per repeat at batch 1 (8)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per system (1)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu (default) | cuda")
    p.add_argument(
        "--tensorrt",
        action="store_true",
        help="with --device cuda: ragrt runs on the TensorRT execution provider",
    )
    p.add_argument("--threads", type=int, default=0, help="threads per system (0 = all cores)")
    p.add_argument(
        "--out", help="output folder (default benchmarks/results; a temp folder with --smoke)"
    )
    p.add_argument("--cache", help="model cache folder (default .cache/bench)")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--max-load",
        type=float,
        help="wait until the 1-minute load average is below this before starting",
    )
    p.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for --max-load at most (0)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run (same settings) from the partial results in --cache",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long run: tiny fixture, one repeat, every system and sweep kind",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ragrt.errors import InputError
    from ragrt.runtime.stack import COMPUTE, missing_extra, require

    needs = ("ragrt bench", "export", "dev", COMPUTE)
    try:
        require(*needs)  # harness imports torch/optimum/matplotlib only inside its functions
        from ragrt.benchmarks import harness
    except ImportError as e:
        raise missing_extra(e, *needs) from None

    for name in args.sizes:
        if name not in SIZES:
            raise InputError(f"unknown size {name!r}: choose from {', '.join(SIZES)}")
    for name in (args.systems or []) + (args.batch_systems or []) + (args.sweep_systems or []):
        if name not in SYSTEMS:
            raise InputError(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
    if args.repeats <= 0 or args.questions <= 0 or args.warmup < 0:
        raise InputError("--repeats and --questions must be >= 1, --warmup >= 0")
    if args.tensorrt and args.device != "cuda":
        raise InputError("--tensorrt needs --device cuda")

    if args.smoke:
        s = harness.Settings.smoke_settings(
            args.out or tempfile.mkdtemp(prefix="ragrt-bench-smoke-")
        )
        s.device = args.device
        if args.systems:
            s.systems = args.systems
    else:
        s = harness.Settings(
            sizes=args.sizes,
            encoder_size=args.encoder_size,
            systems=args.systems,
            batch_sizes=args.batch_sizes,
            n_docs=args.n_docs,
            num_beams=args.num_beams,
            new_tokens=args.new_tokens,
            batch_systems=args.batch_systems,
            sweep_systems=args.sweep_systems,
            sweep_sizes=args.sweep_sizes,
            repeats=args.repeats,
            questions=args.questions,
            warmup=args.warmup,
            device=args.device,
            threads=args.threads,
            out=args.out or str(harness.RESULTS),
            tag=args.tag,
        )
    s.cache = args.cache
    s.plots = not args.no_plots
    s.max_load = args.max_load
    s.wait_s = args.wait
    s.resume = args.resume
    harness.main(s, tensorrt=args.tensorrt)
    return 0
