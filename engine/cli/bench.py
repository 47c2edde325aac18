"""``ragrt bench``: latency/throughput of ragrt against transformers, optimum and CTranslate2
(one process), optionally under contention for the cores.

The code lives in ``ragrt.benchmarks`` (the repository's ``benchmarks/`` folder) and needs the
``export`` and ``dev`` extras (torch, transformers, optimum, onnx, matplotlib, ctranslate2).
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

EPILOG = """\
examples:
  ragrt bench --smoke                      seconds: tiny models, every system and sweep kind
  ragrt bench --sizes bart-base --max-load 0.5 --wait 600
                                           the headline with every peer (transformers,
                                           optimum, ragrt fp32/int8, CTranslate2 fp32/int8),
                                           then the batch / n_docs / beams / length sweeps
  ragrt bench --sizes bart-base --batch-sizes 1 --n-docs 5 --num-beams 1 --new-tokens 32 \\
      --contention 2 --tag loaded          the headline alone, then again quiet vs 2 busy
                                           processes (ragrt and CTranslate2 side by side)

systems: reference = transformers RagTokenForGeneration; optimum = the same with optimum's
ORTModelForSeq2SeqLM generator (optimum-longest: contexts padded to the longest, the tensors
ragrt feeds); ragrt-<fp32|int8|fp16> = RagEngine.generate; ctranslate2-<fp32|int8> = the same
generator converted to CTranslate2, decoding ragrt-fp32's contexts alone (no marginalization,
its clock covers the generator call only).

output (--out, default benchmarks/results): bench_<device>[_<tag>].json (settings, machine,
every sample, token ids, targets), PNG plots (latency, throughput, stages, roofline, sweeps,
contention) and SUMMARY.md (or <stem>_SUMMARY.md with --tag): every issue-12 target with its
verdict (met / missed and the ratio), the headline tables with agreement and distinct tokens,
the contention table, sweeps, roofline and physical floor. Regenerate the summary and plots
from a JSON with: python -m ragrt.benchmarks.report <json>.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark ragrt against transformers, optimum and CTranslate2 (latency, "
        "throughput, contention, roofline, targets)",
        description=(
            "Run ragrt, transformers' RagTokenForGeneration, optimum's ORTModelForSeq2SeqLM and "
            "CTranslate2 in one process on the same questions, retrieved docs and output "
            "length, interleaved; optionally the headline again while busy processes compete "
            "for the cores (--contention); write JSON, PNG plots and SUMMARY.md with the "
            "targets' verdicts. Models are published DPR/BART configurations with seeded "
            "random weights, built once into --cache (no download)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "ragrt-int8,ctranslate2-fp32,ctranslate2-int8; cuda: reference,optimum,ragrt-fp32,"
        "ragrt-fp16)",
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
    p.add_argument(
        "--contention",
        type=int,
        default=0,
        metavar="N",
        help="after the runs of the first size, its headline again on a quiet machine and "
        "while N busy processes compete for the cores (slowdown per system; 0 = skip)",
    )
    p.add_argument(
        "--contention-systems",
        type=_names,
        help="systems of the contention phase (default: the ragrt and CTranslate2 ones)",
    )
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
        from ragrt.benchmarks.results_view import SYSTEM_ORDER as SYSTEMS  # every known system
    except ImportError as e:
        raise missing_extra(e, *needs) from None

    for name in args.sizes:
        if name not in SIZES:
            raise InputError(f"unknown size {name!r}: choose from {', '.join(SIZES)}")
    named = (args.systems or []) + (args.batch_systems or []) + (args.sweep_systems or [])
    for name in named + (args.contention_systems or []):
        if name not in SYSTEMS:
            raise InputError(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
    if args.repeats <= 0 or args.questions <= 0 or args.warmup < 0:
        raise InputError("--repeats and --questions must be >= 1, --warmup >= 0")
    if args.contention < 0:
        raise InputError("--contention must be >= 0 (busy processes)")
    if args.contention_systems and args.systems:
        extra = [x for x in args.contention_systems if x not in args.systems]
        if extra:
            raise InputError(f"--contention-systems {','.join(extra)} not in --systems")
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
    s.contention = args.contention
    s.contention_systems = args.contention_systems
    harness.main(s, tensorrt=args.tensorrt)
    return 0
