"""``ragrt export``: Hugging Face checkpoint(s) -> ONNX artifact directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a RAG checkpoint (or separate encoder/generator folders) to ONNX",
        description=(
            "Export a Hugging Face RAG checkpoint (config.json model_type 'rag', e.g. "
            "facebook/rag-token-nq) or separate models (--question-encoder, --generator, "
            "optional --context-encoder) to ONNX in fp32/fp16/int8, with manifest.json and a "
            "parity report against PyTorch. Each model is a local folder or a Hugging Face hub "
            "id (a local folder of that name wins; then the local HF cache; then a download). "
            "Needs the `export` extra and a compute stack (`cpu` or `gpu`)."
        ),
    )
    p.add_argument("model_dir", nargs="?", type=Path, help="RAG checkpoint: folder or hub id")
    p.add_argument(
        "--out", "-o", type=Path, required=True, help="artifact directory to write (ART_DIR)"
    )
    p.add_argument(
        "--question-encoder",
        type=Path,
        help="question encoder: folder or hub id (DPR, BERT, ALBERT, MiniLM, ...)",
    )
    p.add_argument(
        "--generator", type=Path, help="generator: folder or hub id (BART or T5/mT5 family)"
    )
    p.add_argument(
        "--context-encoder",
        type=Path,
        help="context encoder: folder or hub id (needed to index passages: `ragrt index build`)",
    )
    p.add_argument(
        "--precision",
        action="append",
        dest="precisions",
        metavar="P",
        help="fp32 (default), fp16 (GPU) or int8 (CPU); repeat for several",
    )
    p.add_argument(
        "--pooling", choices=["pooler", "cls", "mean"], help="override the encoders' pooling"
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise embeddings (default: as the source model does)",
    )
    p.add_argument(
        "--no-parity",
        dest="parity",
        action="store_false",
        help="skip the parity check against PyTorch (and its fp32 gate)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing ART_DIR (only one `ragrt export` wrote)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ragrt.runtime.stack import COMPUTE, missing_extra, onnxruntime

    needs = ("ragrt export", "export", COMPUTE)  # ONNX Runtime runs the parity check and int8
    try:
        from ragrt.export import ExportOptions, export_artifacts

        onnxruntime()
    except ImportError as e:
        raise missing_extra(e, *needs) from None
    opts = ExportOptions(
        out=args.out,
        rag_dir=args.model_dir,
        question_encoder=args.question_encoder,
        generator=args.generator,
        context_encoder=args.context_encoder,
        precisions=args.precisions or ["fp32"],
        pooling=args.pooling,
        normalize=args.normalize,
        parity=args.parity,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    try:
        res = export_artifacts(opts)
    except ImportError as e:  # installed, but versions that do not import together
        raise missing_extra(e, *needs) from None
    if res.parity is not None:
        print(res.parity.table())
        print(f"parity report: {res.art_dir / 'parity.json'}")
    m = res.manifest
    print(
        f"exported {m.generator.family} generator + {m.question_encoder.family} question encoder"
        f"{' + context encoder' if m.context_encoder else ''} ({', '.join(m.precisions)}) to {res.art_dir}"
    )
    if res.parity is not None and not res.parity.passed:
        failed = ", ".join(f"{r.component}/{r.precision}" for r in res.parity.failures())
        print(f"warning: below the documented parity floors: {failed} (see parity.json)")
    return 0
