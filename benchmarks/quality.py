"""Answer quality per decoding and precision: the PyTorch reference vs ragrt fp32 / fp16 / int8.

On the demo model's held-out questions (``engine/demo/heldout_questions.jsonl``: objects and
passages the generator never saw in training), for RAG-Token, RAG-Sequence thorough and
RAG-Sequence fast decoding, greedy and 4 beams:

- **reference**: transformers 4.57 on the source generator checkpoint, fed the docs and doc
  scores that ragrt fp32 retrieved, contexts rebuilt and padded to 300 tokens as
  ``RagRetriever`` pads them: ``RagTokenForGeneration.generate``,
  ``RagSequenceForGeneration.generate``, and for fast decoding (which transformers does not
  offer) :func:`reference_fast_decode`, the generator's own beam search per doc with
  ``compute_transition_scores``;
- **ragrt-P** for each system P (``--precisions``): the artifact's fp32 / fp16 / int8 variants,
  and ``int8-<scheme>`` for the speed work's calibration-free int8 generator schemes
  (:func:`scheme_artifact`): ``RagEngine.generate`` end to end, its own retrieval at that
  precision included.

Rows report EM / F1 (SQuAD normalisation, :mod:`ragrt.evaluation`), recall@5, and the share of
questions whose tokens equal the reference's for the same decoding. fp32 must match the
reference token for token. Run::

    python -m ragrt.benchmarks.quality --work .cache/quality \\
        --out benchmarks/results/quality_demo.json

``--work`` gets the demo artifact (every precision asked) and index, built once and reused.
Timings are recorded in the JSON per configuration as wall seconds and as CPU seconds of this
process (``time.process_time``, all threads: the work done, much less sensitive than wall time
to other jobs on shared cores); ``--timings`` adds CPU ms per question to the table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_QUESTIONS = ROOT / "engine" / "demo" / "heldout_questions.jsonl"
DECODINGS = (("token", None), ("sequence", "thorough"), ("sequence", "fast"))
BEAMS = (1, 4)
# int8 generator schemes of the speed work (benchmarks/int8_schemes.py); ragrt's own "int8" is
# its dynamic-pc. static-*: activation scales calibrated on training questions (never held-out
# ones); nbits8 needs the onnx-ir package (ONNX Runtime's MatMulNBits quantizer imports it)
INT8_SCHEMES = ("dynamic-pt", "static-pc-u8", "static-pc-s8", "nbits8")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8", *(f"int8-{s}" for s in INT8_SCHEMES))
CALIBRATION_QUESTIONS = 8
RECALL_K = 5


@dataclass
class Row:
    system: str  # reference | ragrt-<precision>
    mode: str
    sequence_decoding: str | None
    num_beams: int
    exact_match: float
    f1: float
    recall_at_5: float | None
    same_tokens_as_reference: float | None  # fraction of questions
    seconds: float  # wall
    cpu_seconds: float  # time.process_time of this process, all threads
    answers: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)

    @property
    def decoding(self) -> str:
        if self.mode == "token":
            return "RAG-Token"
        return f"RAG-Sequence {self.sequence_decoding}"


# -- the reference ------------------------------------------------------------------------------
def strip_fill(row: Sequence[int], start: bool, eos: int, fill: Sequence[int]) -> list[int]:
    """Generated ids as ragrt returns them: no decoder start token, up to and including the
    first EOS, no trailing fill."""
    ids = list(row[1:] if start else row)
    if eos in ids:
        return ids[: ids.index(eos) + 1]
    while ids and ids[-1] in fill:
        ids.pop()
    return ids


def reference_fast_decode(generator, ids, mask, scores, params) -> list[list[tuple[tuple, float]]]:
    """RAG-Sequence fast decoding on transformers (Lewis et al. 2020, section 2.5).

    Per question and doc, the generator's own ``generate`` (beam search with
    ``num_return_sequences = num_beams``, or greedy); each hypothesis's log-probability is the
    sum of its ``compute_transition_scores``; identical hypotheses are merged across docs and
    scored by ``logsumexp`` over the docs that produced them of ``log_softmax(doc_scores) +
    log p(y | x, z)``. Returns per question ``[(token ids, score), ...]`` in first-occurrence
    order (doc, then beam). ``params`` is a :class:`ragrt.runtime.generation.GenerationParams`.
    """
    import torch

    n_docs = scores.shape[1]
    doc_lp = torch.log_softmax(torch.as_tensor(scores).double(), dim=1).numpy()
    kw = dict(
        num_beams=params.num_beams,
        num_return_sequences=params.num_beams,
        max_length=params.max_new_tokens + 1,
        min_length=params.min_new_tokens + 1 if params.min_new_tokens else 0,
        no_repeat_ngram_size=params.no_repeat_ngram_size,
        length_penalty=params.length_penalty,
        early_stopping=params.early_stopping,
        forced_bos_token_id=params.forced_bos_token_id,
        forced_eos_token_id=params.forced_eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    out = []
    with torch.no_grad():
        for b in range(scores.shape[0]):
            terms: dict[tuple, list[float]] = {}
            for d in range(n_docs):
                r = b * n_docs + d
                o = generator.generate(
                    torch.as_tensor(ids[r : r + 1]),
                    attention_mask=torch.as_tensor(mask[r : r + 1]),
                    **kw,
                )
                if params.num_beams > 1:
                    steps = generator.compute_transition_scores(
                        o.sequences, o.scores, o.beam_indices
                    )
                    lengths = (o.beam_indices != -1).sum(dim=1).tolist()
                else:
                    steps = generator.compute_transition_scores(
                        o.sequences, o.scores, normalize_logits=True
                    )
                    lengths = [steps.shape[1]] * o.sequences.shape[0]
                for seq, st, n in zip(o.sequences, steps, lengths):
                    toks = tuple(seq[1 : 1 + n].tolist())
                    terms.setdefault(toks, []).append(doc_lp[b, d] + float(st[:n].double().sum()))
            out.append([(c, float(np.logaddexp.reduce(v))) for c, v in terms.items()])
    return out


class Reference:
    """transformers' RAG classes around the artifact's source generator (and the question
    encoder's tokenizer, which decides the question string the generator reads)."""

    def __init__(self, generator_dir: Path, question_tokenizer_dir: Path, n_docs: int):
        from transformers import (
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
            RagSequenceForGeneration,
            RagTokenForGeneration,
        )

        from ragrt.export.fixtures import dpr_question_encoder, rag_config

        self.generator = AutoModelForSeq2SeqLM.from_pretrained(str(generator_dir)).eval()
        self.tok = AutoTokenizer.from_pretrained(str(generator_dir))
        self.qtok = AutoTokenizer.from_pretrained(str(question_tokenizer_dir))
        qenc = dpr_question_encoder()  # never run: RAG classes need one, contexts are given
        cfg = rag_config(qenc.config, self.generator.config)
        cfg.n_docs = n_docs  # RagSequenceForGeneration.generate only works at the config's
        self.token_model = RagTokenForGeneration(
            config=cfg, question_encoder=qenc, generator=self.generator
        ).eval()
        self.sequence_model = RagSequenceForGeneration(
            config=cfg, question_encoder=qenc, generator=self.generator
        ).eval()
        self.n_docs = n_docs

    def contexts(self, questions: Sequence[str], docs, defaults) -> tuple[Any, Any, Any]:
        """``RagRetriever.postprocess_docs``: decoded question ids, contexts padded to 300."""
        import torch

        from ragrt.runtime.contexts import build_contexts

        q_ids = self.qtok(list(questions), truncation=True)["input_ids"]
        qtexts = self.qtok.batch_decode(q_ids, skip_special_tokens=True)
        strings = build_contexts(qtexts, docs, defaults)
        enc = self.tok(
            strings,
            max_length=defaults.max_combined_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        scores = torch.tensor([[d.score for d in row] for row in docs], dtype=torch.float32)
        return enc["input_ids"], enc["attention_mask"], scores

    def generate(
        self, mode: str, decoding: str | None, params, ids, mask, scores
    ) -> list[list[int]]:
        import torch

        fill = {params.pad_token_id, params.eos_token_id}
        eos = params.eos_token_id
        if mode == "sequence" and decoding == "fast":
            found = reference_fast_decode(
                self.generator, ids.numpy(), mask.numpy(), scores.numpy(), params
            )
            best = [max(range(len(c)), key=lambda i: (c[i][1], -i)) for c in found]
            return [strip_fill(c[i][0], False, eos, fill) for c, i in zip(found, best)]
        kw = dict(
            context_input_ids=ids,
            context_attention_mask=mask,
            doc_scores=scores,
            n_docs=scores.shape[1],
            num_beams=params.num_beams,
            num_return_sequences=1,
            max_length=params.max_new_tokens + 1,
            min_length=params.min_new_tokens + 1 if params.min_new_tokens else 0,
            no_repeat_ngram_size=params.no_repeat_ngram_size,
            length_penalty=params.length_penalty,
            early_stopping=params.early_stopping,
            forced_bos_token_id=params.forced_bos_token_id,
            forced_eos_token_id=params.forced_eos_token_id,
        )
        model = self.token_model if mode == "token" else self.sequence_model
        with torch.no_grad():
            out = model.generate(**kw)
        return [strip_fill(r, True, eos, fill) for r in out.tolist()]


# -- the table ----------------------------------------------------------------------------------
def calibration_feeds(art: Path, index: Path, n_docs: int) -> dict[str, list[dict[str, Any]]]:
    """fp32 generator feeds (encoder, decoder, every 4th decoder-with-past step) recorded
    while RAG-Token greedy answers ``CALIBRATION_QUESTIONS`` *training* questions of the demo
    split (the held-out ones are what the table measures)."""
    from ragrt.benchmarks.int8_schemes import record_feeds
    from ragrt.engine import RagEngine
    from ragrt.export import demo_generator as dg
    from ragrt.runtime.generation import rag_token
    from ragrt.runtime.generation.params import GenerationParams

    cfg = json.loads((dg.model_path() / "training.json").read_text())["config"]
    items = dg.qa_items(dg.read_passages(dg.corpus_path()))
    train, _ = dg.split(items, cfg["heldout_fraction"], cfg["seed"])
    qs = [it.questions[0] for it in train[:: max(1, len(train) // CALIBRATION_QUESTIONS)]]
    eng = RagEngine.load(art, index)
    params = GenerationParams.from_defaults(eng.manifest.generation, n_docs=n_docs)
    prep = eng.prepare(qs[:CALIBRATION_QUESTIONS], n_docs)
    return record_feeds(
        eng.generator,
        lambda gen: rag_token.generate(
            gen, prep.context_ids, prep.context_mask, prep.doc_scores, params
        ),
    )


def scheme_available(scheme: str) -> bool:
    if scheme.startswith("nbits8"):
        try:
            import onnx_ir  # noqa: F401
        except ImportError:
            return False
    return True


def scheme_artifact(
    art: Path, scheme: str, work: Path, calib: dict[str, list[dict[str, Any]]] | None = None
) -> Path:
    """A copy of ``art`` whose int8 generator graphs are built from its fp32 ones with an int8
    scheme of :mod:`ragrt.benchmarks.int8_schemes` (question encoder: ragrt's int8). Loaded
    with ``precision="int8", verify=False`` (the manifest's sha256 are the dynamic-pc files')."""
    import shutil

    from ragrt.benchmarks import int8_schemes

    out = work / f"art-int8-{scheme}"
    if (out / "manifest.json").exists():
        return out
    tmp = work / f".art-int8-{scheme}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(art, tmp)
    onnx = json.loads((art / "manifest.json").read_text())["generator"]["onnx"]
    conv = int8_schemes.schemes(calib or {})[scheme]
    for role, rel in onnx["int8"].items():
        dst = tmp / rel
        dst.unlink()
        for extra in dst.parent.glob(dst.name + ".data"):
            extra.unlink()
        conv(art / onnx["fp32"][role], dst, role)
    tmp.rename(out)
    return out


def load_system(art: Path, index: Path, system: str, work: Path, n_docs: int = 5) -> Any:
    """``fp32`` / ``fp16`` / ``int8`` (the artifact's variants) or ``int8-<scheme>``."""
    from ragrt.engine import RagEngine

    if system.startswith("int8-"):
        scheme = system.removeprefix("int8-")
        calib = calibration_feeds(art, index, n_docs) if scheme.startswith("static") else None
        alt = scheme_artifact(art, scheme, work, calib)
        return RagEngine.load(alt, index, precision="int8", verify=False)
    return RagEngine.load(art, index, precision=system)


def prepare_demo(work: Path, precisions: Sequence[str]) -> tuple[Path, Path]:
    """The demo artifact (MiniLM + the shipped generator, every precision) and its index."""
    import shutil

    from ragrt.artifacts import sha256_file
    from ragrt.export import ExportOptions, export_artifacts
    from ragrt.export.demo_generator import corpus_path, model_path
    from ragrt.export.fixtures import minilm_path
    from ragrt.retrieval.build import build_index

    art, index = work / "art", work / "index"
    want = sorted({p.split("-")[0] for p in precisions} | {"fp32"})
    # the artifact is rebuilt when the shipped generator changed (a retrained model): the
    # folder's path stays the same, so the weights' digest is what tells
    digest = sha256_file(model_path() / "model.safetensors")
    stamp = work / "generator.sha256"
    have = []
    if (art / "manifest.json").exists() and stamp.is_file() and stamp.read_text() == digest:
        have = json.loads((art / "manifest.json").read_text()).get("precisions", [])
    if not set(want) <= set(have):
        for stale in work.glob("art-int8-*"):  # int8 scheme copies of the old artifact
            shutil.rmtree(stale)
        export_artifacts(
            ExportOptions(
                out=art,
                question_encoder=minilm_path(),
                context_encoder=minilm_path(),
                generator=model_path(),
                precisions=want,
                overwrite=True,
            )
        )
        stamp.write_text(digest)
    if not (index / "manifest.json").exists():
        build_index(corpus_path(), index, model=art)
    return art, index


def _source_dirs(art: Path) -> tuple[Path, Path]:
    src = json.loads((art / "manifest.json").read_text())["source"]
    if src.get("kind") == "rag":
        rag = Path(src["rag_dir"])
        return rag / "generator_tokenizer", rag / "question_encoder_tokenizer"
    return Path(src["generator"]), Path(src["question_encoder"])


def run(
    art: Path,
    index: Path,
    questions_file: Path,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    n_docs: int = 5,
    work: Path | None = None,
    beams: Sequence[int] = BEAMS,
    decodings: Sequence[tuple[str, str | None]] = DECODINGS,
    limit: int | None = None,
    batch_size: int = 16,
    log=print,
) -> dict[str, Any]:
    """Every (decoding, beams) for the reference and each precision; returns the JSON record."""
    import torch

    from ragrt.engine import RagEngine
    from ragrt.evaluation import read_questions, score
    from ragrt.runtime.generation import GenerationParams

    torch.set_num_threads(1)
    qs = read_questions(questions_file)[:limit]
    texts = [q.question for q in qs]
    work = work or art.parent
    skipped = [p for p in precisions if not scheme_available(p.removeprefix("int8-"))]
    for p in skipped:
        log(f"skipping {p}: its quantizer needs the onnx-ir package (pip install onnx-ir)")
    precisions = [p for p in precisions if p not in skipped]
    engines = {p: load_system(art, index, p, work, n_docs) for p in precisions}
    if "fp32" not in engines:
        engines["fp32"] = RagEngine.load(art, index, precision="fp32")
    fp32 = engines["fp32"]
    defaults = fp32.manifest.generation
    docs = [
        d
        for s in range(0, len(texts), batch_size)
        for d in fp32.retrieve(texts[s : s + batch_size], k=n_docs)
    ]
    retrieved = {
        p: [
            [d.id for d in row]
            for s in range(0, len(texts), batch_size)
            for row in e.retrieve(texts[s : s + batch_size], k=max(RECALL_K, n_docs))
        ]
        for p, e in engines.items()
    }
    from ragrt.export.demo_generator import DEMO_QUESTIONS, cpu_model

    demo_docs = fp32.retrieve(DEMO_QUESTIONS, k=n_docs)
    demo_answers = fp32.generate(DEMO_QUESTIONS, n_docs=min(3, n_docs))
    gen_dir, qtok_dir = _source_dirs(art)
    ref = Reference(gen_dir, qtok_dir, n_docs)
    rows: list[Row] = []
    for mode, decoding in decodings:
        for K in beams:
            overrides = dict(num_beams=K, n_docs=n_docs)
            if mode == "sequence":
                overrides["sequence_decoding"] = decoding
            params = GenerationParams.from_defaults(defaults, **overrides)
            t0, c0 = time.perf_counter(), time.process_time()
            ref_ids: list[list[int]] = []
            for s in range(0, len(texts), batch_size):
                ids, mask, sc = ref.contexts(
                    texts[s : s + batch_size], docs[s : s + batch_size], defaults
                )
                ref_ids += ref.generate(mode, decoding, params, ids, mask, sc)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            ref_text = ref.tok.batch_decode(ref_ids, skip_special_tokens=True)
            rep = score(qs, ref_text, retrieved["fp32"], (RECALL_K,))
            rows.append(
                Row(
                    "reference",
                    mode,
                    decoding,
                    K,
                    rep.exact_match,
                    rep.f1,
                    rep.recall.get(RECALL_K),
                    None,
                    round(secs, 2),
                    round(cpu, 2),
                    ref_text,
                    ref_ids,
                )
            )
            log(_line(rows[-1]))
            for p in precisions:
                eng = engines[p]
                t0, c0 = time.perf_counter(), time.process_time()
                res = []
                for s in range(0, len(texts), batch_size):
                    res += eng.generate(texts[s : s + batch_size], mode=mode, **overrides)
                secs, cpu = time.perf_counter() - t0, time.process_time() - c0
                answers = [r.text for r in res]
                ids_p = [list(r.token_ids) for r in res]
                rep = score(qs, answers, retrieved[p], (RECALL_K,))
                same = float(np.mean([a == b for a, b in zip(ids_p, ref_ids)]))
                rows.append(
                    Row(
                        f"ragrt-{p}",
                        mode,
                        decoding,
                        K,
                        rep.exact_match,
                        rep.f1,
                        rep.recall.get(RECALL_K),
                        round(same, 4),
                        round(secs, 2),
                        round(cpu, 2),
                        answers,
                        ids_p,
                    )
                )
                log(_line(rows[-1]))
    return {
        "what": "answer quality on held-out questions: PyTorch reference vs ragrt per precision",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "artifact": str(art),
        "questions_file": str(questions_file),
        "questions": len(qs),
        "n_docs": n_docs,
        "max_new_tokens": GenerationParams.from_defaults(defaults).max_new_tokens,
        "precisions": list(precisions),
        "skipped": {p: "needs the onnx-ir package" for p in skipped},
        "commit": _commit(),
        "machine": {
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "note": "seconds: wall, cpu_seconds: this process's CPU time (all threads); "
            "cores shared with other jobs; compare only rows of one run",
        },
        "rows": [asdict(r) for r in rows],
        "questions_list": [q.question for q in qs],
        # what ragrt fp32 retrieved (the reference's docs), kept so that tests can generate
        # from the same docs without building the MiniLM index
        "retrieval": [[{"id": d.id, "score": d.score} for d in row] for row in docs],
        "demo": [
            {
                "question": q,
                "retrieval": [{"id": d.id, "score": d.score} for d in row],
                "answer_fp32_token_greedy_3_docs": a.text,
            }
            for q, row, a in zip(DEMO_QUESTIONS, demo_docs, demo_answers)
        ],
    }


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _line(r: Row) -> str:
    same = (
        ""
        if r.same_tokens_as_reference is None
        else f" same-as-ref {r.same_tokens_as_reference:.3f}"
    )
    return (
        f"{r.decoding:24s} beams {r.num_beams} {r.system:12s} EM {r.exact_match:5.1f} "
        f"F1 {r.f1:5.1f} R@5 {r.recall_at_5}{same} ({r.seconds:.1f}s)"
    )


def markdown(record: dict[str, Any], timings: bool = False) -> str:
    """The README table: deltas against ragrt fp32 of the same decoding."""
    rows = [Row(**r) for r in record["rows"]]
    head = "| decoding | beams | system | EM | ΔEM | F1 | ΔF1 | recall@5 | tokens = reference |"
    sep = "|---|---|---|---|---|---|---|---|---|"
    if timings:
        head += " CPU ms / question |"
        sep += "---|"
    out = [head, sep]
    base = {(r.mode, r.sequence_decoding, r.num_beams): r for r in rows if r.system == "ragrt-fp32"}
    thorough = {
        (r.system, r.num_beams): r
        for r in rows
        if r.mode == "sequence" and r.sequence_decoding == "thorough"
    }
    for r in rows:
        b = base.get((r.mode, r.sequence_decoding, r.num_beams))
        dem = "" if b is None or r is b else f"{r.exact_match - b.exact_match:+.1f}"
        df1 = "" if b is None or r is b else f"{r.f1 - b.f1:+.1f}"
        same = (
            "" if r.same_tokens_as_reference is None else f"{100 * r.same_tokens_as_reference:.1f}%"
        )
        rec = "" if r.recall_at_5 is None else f"{r.recall_at_5:.1f}"
        line = (
            f"| {r.decoding} | {r.num_beams} | {r.system} | {r.exact_match:.1f} | {dem} | "
            f"{r.f1:.1f} | {df1} | {rec} | {same} |"
        )
        if timings:
            line += f" {1000 * r.cpu_seconds / record['questions']:.1f} |"
        out.append(line)
    fast = [
        (r, thorough.get((r.system, r.num_beams)))
        for r in rows
        if r.mode == "sequence" and r.sequence_decoding == "fast"
    ]
    notes = [
        f"fast vs thorough, {r.system}, beams {r.num_beams}: EM {r.exact_match - t.exact_match:+.1f}"
        for r, t in fast
        if t is not None
    ]
    return "\n".join(out) + ("\n\n" + "; ".join(notes) if notes else "") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "quality")
    ap.add_argument("--model", type=Path, help="use this artifact instead of building one")
    ap.add_argument("--index", type=Path, help="and this index")
    ap.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    ap.add_argument(
        "--precisions",
        default=",".join(DEFAULT_PRECISIONS),
        help="comma-separated: fp32, fp16, int8 (the artifact's) and int8-<scheme> "
        f"({', '.join(INT8_SCHEMES)}: int8_schemes' generator graphs)",
    )
    ap.add_argument("--n-docs", type=int, default=5)
    ap.add_argument("--limit", type=int)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_demo.json"
    )
    ap.add_argument("--timings", action="store_true", help="add ms/question to the table")
    args = ap.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model:
        art, index = args.model, args.index
    else:
        art, index = prepare_demo(args.work, precisions)
    record = run(
        art, index, args.questions, precisions, args.n_docs, work=args.work, limit=args.limit
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    table = markdown(record, args.timings)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
