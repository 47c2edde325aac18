"""Session-wide fixtures: seeded offline checkpoints and their exported artifacts.

Everything is built once per test session (tiny models; a few seconds each). Checkpoints come
from ``ragrt.export.fixtures``; artifacts from the real ``ragrt export`` pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ragrt_fixtures")


@pytest.fixture(scope="session")
def rag_bart_ckpt(fixture_root) -> dict[str, Path]:
    """A RAG-Token checkpoint (DPR + BART) and a DPR context encoder folder."""
    from ragrt.export.fixtures import build_rag_checkpoint

    rag = fixture_root / "rag-token-bart"
    ctx = fixture_root / "ctx-encoder"
    build_rag_checkpoint(rag, generator="bart", rag_type="token", context_encoder_dir=ctx)
    return {"rag": rag, "context_encoder": ctx}


@pytest.fixture(scope="session")
def rag_bart_art(fixture_root, rag_bart_ckpt) -> Path:
    """ART_DIR of the BART RAG-Token fixture, fp32 + fp16 + int8, with a context encoder."""
    from ragrt.export import ExportOptions, export_artifacts

    out = fixture_root / "art-rag-bart"
    export_artifacts(
        ExportOptions(
            out=out,
            rag_dir=rag_bart_ckpt["rag"],
            context_encoder=rag_bart_ckpt["context_encoder"],
            precisions=["fp32", "fp16", "int8"],
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def rag_t5_ckpt(fixture_root) -> Path:
    from ragrt.export.fixtures import build_rag_checkpoint

    return build_rag_checkpoint(fixture_root / "rag-token-t5", generator="t5")


@pytest.fixture(scope="session")
def t5_folders(fixture_root) -> dict[str, Path]:
    """Separate folders: DPR question/context encoders and a T5 generator."""
    from ragrt.export.fixtures import build_separate_folders

    return build_separate_folders(fixture_root / "folders-t5", generator="t5")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from ragrt.export.fixtures import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def minilm_art(fixture_root, minilm_dir, t5_folders) -> Path:
    """Real all-MiniLM-L6-v2 as question + context encoder, T5 fixture generator, all precisions."""
    from ragrt.export import ExportOptions, export_artifacts

    out = fixture_root / "art-minilm-t5"
    export_artifacts(
        ExportOptions(
            out=out,
            question_encoder=minilm_dir,
            context_encoder=minilm_dir,
            generator=t5_folders["generator"],
            precisions=["fp32", "fp16", "int8"],
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def small_corpus(fixture_root) -> Path:
    """The first 240 passages of the bundled demo corpus (real Python stdlib docs)."""
    from importlib import resources

    src = Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))
    out = fixture_root / "corpus-small.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()[:240]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def rag_bart_index(fixture_root, rag_bart_art, small_corpus) -> Path:
    """INDEX_DIR over ``small_corpus`` embedded with the BART fixture's context encoder."""
    from ragrt.retrieval.build import BuildOptions, build_index

    out = fixture_root / "index-rag-bart"
    build_index(small_corpus, out, model=rag_bart_art, options=BuildOptions(progress=False))
    return out


@pytest.fixture(scope="session")
def rag_engine(rag_bart_art, rag_bart_index):
    from ragrt.engine import RagEngine

    return RagEngine.load(rag_bart_art, rag_bart_index)


@pytest.fixture(scope="session")
def trained_engines(fixture_root, rag_bart_ckpt, small_corpus):
    """fp32/fp16/int8 engines over a briefly trained (copying) BART generator: the fixture
    on which reduced-precision token agreement is meaningful (see train_copy_generator)."""
    from ragrt.engine import RagEngine
    from ragrt.export import ExportOptions, export_artifacts
    from ragrt.export.fixtures import save_encoder, train_copy_generator
    from ragrt.retrieval.build import BuildOptions, build_index

    model, tok = train_copy_generator()
    gen = save_encoder(model, tok, fixture_root / "trained-bart")
    enc = rag_bart_ckpt["context_encoder"]
    art = fixture_root / "art-trained"
    export_artifacts(
        ExportOptions(
            out=art,
            question_encoder=enc,
            context_encoder=enc,
            generator=gen,
            precisions=["fp32", "fp16", "int8"],
            progress=False,
        )
    )
    index = fixture_root / "index-trained"
    build_index(small_corpus, index, model=art, options=BuildOptions(progress=False))
    return {p: RagEngine.load(art, index, precision=p) for p in ("fp32", "fp16", "int8")}
