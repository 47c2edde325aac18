"""Index build and search: exact vs IVF-PQ agreement, passages, shards, manifests, GPU decisions,
bad input, CLI. Precomputed embeddings here; the encoder path is at the end (needs ragrt.export).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ragrt.errors import ArtifactError, DeviceError, InputError
from ragrt.retrieval.build import BuildOptions, build_index, exact_topk
from ragrt.retrieval.index import (
    INDEX_FILE,
    IndexManifest,
    PassageIndex,
    check_model_identity,
    default_factory,
    describe_index,
    gpu_plan,
    is_gpu_index,
    nlist_for,
    pq_m_for,
    to_device,
    with_flat_coarse_quantizer,
)
from tests.index_helpers import exact_top, recall, write_corpus

faiss = pytest.importorskip("faiss")

N, DIM = 3000, 32
IVFPQ = "IVF32,PQ16x4"  # 4-bit codes train on 3000 points without warnings


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    # OpenMP spin-waits badly on shared, oversubscribed cores; these indexes are tiny
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _opts(**kw) -> BuildOptions:
    kw.setdefault("progress", False)
    kw.setdefault("calibrate_queries", 100)
    return BuildOptions(**kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), N, DIM)


@pytest.fixture(scope="module")
def flat_dir(corpus, tmp_path_factory):
    p, e, _ = corpus
    out = tmp_path_factory.mktemp("flat") / "idx"
    build_index(p, out, embeddings=e, options=_opts())
    return out


@pytest.fixture(scope="module")
def pq_dir(corpus, tmp_path_factory):
    p, e, _ = corpus
    out = tmp_path_factory.mktemp("pq") / "idx"
    build_index(p, out, embeddings=e, options=_opts(factory=IVFPQ))
    return out


@pytest.fixture(scope="module")
def queries(corpus):
    _, _, x = corpus
    rng = np.random.default_rng(7)
    q = x[rng.choice(N, 40, replace=False)] + 0.05 * rng.normal(size=(40, DIM)).astype(np.float32)
    return q.astype(np.float32)


# -- factory choice --------------------------------------------------------------------------
def test_default_factory_from_corpus_size():
    assert default_factory(500, 384) == "Flat"
    assert default_factory(1_000_000, 384) == "IVF4096,PQ48"
    assert default_factory(1_000_000, 768) == "IVF4096,PQ64"
    assert default_factory(21_000_000, 768) == "IVF16384,PQ64"
    assert default_factory(400_000_000, 768).startswith("IVF65536_HNSW32,PQ64")
    for d in (32, 128, 256, 384, 512, 768, 1024):
        assert d % pq_m_for(d) == 0
    assert nlist_for(50_000) == 1024 and nlist_for(50_000) * 39 <= 50_000


# -- exact (flat) ----------------------------------------------------------------------------
def test_flat_search_is_exact(flat_dir, corpus, queries):
    _, _, x = corpus
    ix = PassageIndex.open(flat_dir)
    m = ix.manifest
    assert m.factory == "Flat" and m.scores == "exact" and m.passages == N and m.dimension == DIM
    assert m.metric == "inner_product" and m.exact_embeddings is None  # flat already stores them
    assert set(m.files) == {
        INDEX_FILE,
        "passages.data",
        "passages.offsets",
        "passages.ids",
        "passages.idhash",
    }
    res = ix.search(queries, 10, return_embeddings=True)
    truth, tscores = exact_top(x, queries, 10)
    assert recall(res.rows, truth) == 1.0  # same docs; order equal up to float near-ties
    np.testing.assert_allclose(res.scores, tscores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.embeddings, x[res.rows], atol=1e-6)
    assert res.rows.dtype == np.int64 and res.scores.dtype == np.float32


# -- IVF-PQ ----------------------------------------------------------------------------------
def test_ivfpq_agrees_with_exact_and_scores_are_exact(pq_dir, corpus, queries):
    _, _, x = corpus
    ix = PassageIndex.open(pq_dir)
    m = ix.manifest
    assert m.factory == IVFPQ and m.scores == "exact" and m.exact_embeddings["dtype"] == "float16"
    assert m.calibration["recall@10"] >= 0.95 and m.nprobe == m.calibration["nprobe"]
    assert (pq_dir / "embeddings.f16").stat().st_size == N * DIM * 2
    truth, _ = exact_top(x, queries, 10)
    res = ix.search(queries, 10)  # calibrated nprobe + exact re-rank
    assert recall(res.rows, truth) >= 0.9
    x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(
        res.scores, np.einsum("bd,bkd->bk", queries, x16[res.rows]), rtol=1e-5, atol=1e-5
    )
    assert np.all(np.diff(res.scores, axis=1) <= 1e-6)  # ranked by score
    # the reference's way: keep the index's (PQ) ranking, recompute exact q.d scores
    plain = ix.search(queries, 10, rerank=False, return_embeddings=True)
    np.testing.assert_allclose(
        plain.scores, np.einsum("bd,bkd->bk", queries, x16[plain.rows]), atol=1e-5
    )
    np.testing.assert_allclose(plain.embeddings, x16[plain.rows])
    assert recall(plain.rows, truth) < recall(res.rows, truth) + 1e-9
    # more probes never hurt; nprobe=nlist with re-rank finds nearly everything
    full = ix.search(queries, 10, nprobe=32)
    assert recall(full.rows, truth) >= recall(ix.search(queries, 10, nprobe=1).rows, truth)


def test_ivfpq_without_exact_embeddings(corpus, tmp_path, queries):
    p, e, x = corpus
    out = tmp_path / "noexact"
    m = build_index(
        p, out, embeddings=e, options=_opts(factory=IVFPQ, exact_embeddings=False, nprobe=8)
    )
    assert m.scores == "pq_approximate" and m.exact_embeddings is None and m.nprobe == 8
    assert sorted(os.listdir(out)) == sorted(
        [
            INDEX_FILE,
            "manifest.json",
            "passages.data",
            "passages.ids",
            "passages.idhash",
            "passages.offsets",
        ]
    )
    ix = PassageIndex.open(out)
    res = ix.search(queries, 5, return_embeddings=True)
    # approximate scores and reconstructions, but close to the exact ones
    exact_scores = np.einsum("bd,bkd->bk", queries, x[res.rows])
    assert np.abs(res.scores - exact_scores).mean() < 0.2
    assert np.abs(res.embeddings - x[res.rows]).mean() < 0.2
    truth, _ = exact_top(x, queries, 5)
    assert recall(res.rows, truth) >= 0.5


def test_k_hits_even_when_probed_lists_are_small(pq_dir, queries):
    ix = PassageIndex.open(pq_dir)
    res = ix.search(queries[:2], N, nprobe=1, rerank=False)  # k = whole corpus
    assert (res.rows >= 0).all() and all(len(set(r)) == N for r in res.rows)


def test_passages_and_ids(pq_dir, queries):
    ix = PassageIndex.open(pq_dir)
    res = ix.search(queries[:3], 4)
    docs = ix.docs(res)
    assert [len(d) for d in docs] == [4, 4, 4]
    d = docs[0][0]
    row = int(res.rows[0, 0])
    assert d.id == f"p{row}" and d.title == f"Title {row}" and d.text == f"passage number {row}"
    assert d.score == pytest.approx(float(res.scores[0, 0]))
    assert ix.by_id("p42").text == "passage number 42" and ix.row_of("p42") == 42
    assert [x.id for x in ix.passages([5, -1, 6])] == ["p5", "p6"]
    with pytest.raises(InputError, match="no passage with id"):
        ix.by_id("nope")
    with pytest.raises(InputError, match="out of range"):
        ix.passage(N)


def test_exact_topk_helper(corpus, queries):
    _, _, x = corpus
    truth, _ = exact_top(x, queries, 7)
    got = exact_topk(x, queries, 7, chunk=500)
    assert recall(got, truth) == 1.0


# -- shards ----------------------------------------------------------------------------------
def test_shards_search_like_one_index(corpus, tmp_path, queries):
    p, e, x = corpus
    lines = p.read_text().splitlines(keepends=True)
    dirs = []
    for i, (a, b) in enumerate([(0, 1800), (1800, N)]):
        sp = tmp_path / f"s{i}.jsonl"
        sp.write_text("".join(lines[a:b]))
        np.save(tmp_path / f"s{i}.npy", x[a:b])
        dirs.append(tmp_path / f"shard{i}")
        build_index(sp, dirs[-1], embeddings=tmp_path / f"s{i}.npy", options=_opts(factory="Flat"))
    ix = PassageIndex.open(dirs)
    assert len(ix) == N and type(faiss.downcast_index(ix._search_index)).__name__ == "IndexShards"
    res = ix.search(queries, 10, return_embeddings=True)
    truth, tscores = exact_top(x, queries, 10)
    assert recall(res.rows, truth) == 1.0  # global rows: shard 1 starts at 1800
    np.testing.assert_allclose(res.scores, tscores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.embeddings, x[res.rows], atol=1e-6)
    assert ix.by_id("p2500").text == "passage number 2500" and ix.row_of("p2500") == 2500
    assert [d.id for d in ix.docs(res)[0]] == [f"p{r}" for r in res.rows[0]]


def test_ivfpq_shards_with_exact_embeddings(corpus, tmp_path, queries):
    p, e, x = corpus
    lines = p.read_text().splitlines(keepends=True)
    dirs = []
    for i, (a, b) in enumerate([(0, 1500), (1500, N)]):
        sp = tmp_path / f"s{i}.jsonl"
        sp.write_text("".join(lines[a:b]))
        np.save(tmp_path / f"s{i}.npy", x[a:b])
        dirs.append(tmp_path / f"shard{i}")
        build_index(
            sp,
            dirs[-1],
            embeddings=tmp_path / f"s{i}.npy",
            options=_opts(factory="IVF16,PQ16x4", nprobe=16),
        )
    ix = PassageIndex.open(dirs)
    res = ix.search(queries, 10)
    truth, _ = exact_top(x, queries, 10)
    assert recall(res.rows, truth) >= 0.9
    x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(
        res.scores, np.einsum("bd,bkd->bk", queries, x16[res.rows]), atol=1e-5
    )


def test_incompatible_shards(flat_dir, tmp_path):
    p, e, _ = write_corpus(tmp_path / "c16", 200, 16)
    build_index(p, tmp_path / "i16", embeddings=e, options=_opts())
    with pytest.raises(ArtifactError, match="does not match shard"):
        PassageIndex.open([flat_dir, tmp_path / "i16"])


def _overlapping_shards(corpus, tmp_path, ranges):
    p, e, x = corpus
    lines = p.read_text().splitlines(keepends=True)
    dirs = []
    for i, (a, b) in enumerate(ranges):
        sp = tmp_path / f"s{i}.jsonl"
        sp.write_text("".join(lines[a:b]))
        np.save(tmp_path / f"s{i}.npy", x[a:b])
        dirs.append(tmp_path / f"shard{i}")
        build_index(sp, dirs[-1], embeddings=tmp_path / f"s{i}.npy", options=_opts(factory="Flat"))
    return dirs


def test_shards_sharing_a_passage_id_are_refused_naming_both(corpus, tmp_path):
    # rows 1000..1099 in both shards: the same passage would come back twice
    dirs = _overlapping_shards(corpus, tmp_path, [(0, 1100), (1000, 2000), (2000, 2100)])
    with pytest.raises(ArtifactError, match=r"passage id 'p\d+' is in two shards") as e:
        PassageIndex.open(dirs)
    assert str(dirs[0]) in str(e.value) and str(dirs[1]) in str(e.value)
    PassageIndex.open([dirs[0], dirs[2]])  # disjoint shards still open


def test_shared_id_without_id_hashes_is_refused_when_found(corpus, tmp_path, queries):
    # an index built before ragrt stored sorted id hashes: caught when a search returns both
    dirs = _overlapping_shards(corpus, tmp_path, [(0, 1100), (1000, 2000)])
    for d in dirs:
        (d / "passages.idhash").unlink()
        m = json.loads((d / "manifest.json").read_text())
        del m["files"]["passages.idhash"]
        (d / "manifest.json").write_text(json.dumps(m))
    ix = PassageIndex.open(dirs)
    _, _, x = corpus
    with pytest.raises(ArtifactError, match=r"passage id 'p1050' is in two shards"):
        ix.docs(ix.search(x[1050], 5))


def test_build_refuses_nprobe_below_one(corpus, tmp_path):
    p, e, _ = corpus
    for bad in (0, -3):
        with pytest.raises(InputError, match="--nprobe must be an integer >= 1"):
            build_index(p, tmp_path / "i", embeddings=e, options=_opts(factory=IVFPQ, nprobe=bad))
        assert not (tmp_path / "i").exists()


def test_same_size_corruption_of_a_large_store_is_a_clean_error(
    flat_dir, tmp_path, queries, monkeypatch
):
    # a store over 64 MiB is only size-checked when opened (hashing it would take seconds):
    # stand in a small one by lowering the limit, flip bytes inside a passage, keep the size
    import ragrt.artifacts

    monkeypatch.setattr(ragrt.artifacts, "AUTO_HASH_BYTES", 16)
    d = tmp_path / "idx"
    shutil.copytree(flat_dir, d)
    data = bytearray((d / "passages.data").read_bytes())
    i = data.index(b"passage number 17")
    data[i : i + 3] = b"\xff\xfe\xfd"
    (d / "passages.data").write_bytes(bytes(data))
    ix = PassageIndex.open(d)  # the default open check passes
    with pytest.raises(ArtifactError, match=f"corrupt.*ragrt index info --verify {d}"):
        ix.by_id("p17")
    with pytest.raises(ArtifactError, match="passage row 17 is not valid UTF-8"):
        ix.passages([17])
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        PassageIndex.open(d, verify="full")


# -- manifest / encoder checks ---------------------------------------------------------------
def _with_identity(m: IndexManifest) -> IndexManifest:
    m.embedding_model = {
        "name": "ctx",
        "dim": DIM,
        "question_encoder": {
            "name": "qenc",
            "dim": DIM,
            "sha256": {"fp32": "a" * 64, "fp16": "b" * 64},
        },
    }
    return m


def test_encoder_checks(flat_dir):
    ix = PassageIndex.open(flat_dir)
    ix.check_encoder(SimpleNamespace(name="anything", dim=DIM, onnx_sha256="c" * 64))  # dim only
    with pytest.raises(ArtifactError, match=r"holds 32-d embeddings .* outputs 16-d"):
        ix.check_encoder(SimpleNamespace(name="x", dim=16, onnx_sha256=None))
    m = _with_identity(IndexManifest.load(flat_dir))
    check_model_identity(m, name="qenc", dim=DIM, sha256s={"b" * 64})  # the fp16 variant is fine
    with pytest.raises(ArtifactError, match="another encoder"):
        check_model_identity(m, name="other", dim=DIM, sha256s={"a" * 64})
    with pytest.raises(ArtifactError, match="another encoder"):
        check_model_identity(m, name="qenc", dim=DIM, sha256s={"d" * 64})
    with pytest.raises(ArtifactError, match="outputs 8-d"):
        check_model_identity(m, name="qenc", dim=8, sha256s={"a" * 64})


def test_manifest_contents(pq_dir):
    data = json.loads((pq_dir / "manifest.json").read_text())
    for key in (
        "format",
        "dimension",
        "metric",
        "factory",
        "passages",
        "embedding_model",
        "scores",
        "files",
        "nprobe",
    ):
        assert key in data
    assert data["format"] == "ragrt-index"
    for rel, rec in data["files"].items():
        assert (pq_dir / rel).stat().st_size == rec["bytes"] and len(rec["sha256"]) == 64


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "q,k,match",
    [
        ("ok", 0, "k must be >= 1"),
        ("ok", -3, "k must be >= 1"),
        ("ok", N + 1, "larger than the corpus"),
        ("ok", 2.5, "k must be an integer"),
        ("ok", True, "k must be an integer"),
        (np.zeros((2, DIM + 1), np.float32), 3, r"shape \[batch, 32\]"),
        (np.zeros((2, 2, DIM), np.float32), 3, r"shape \[batch, 32\]"),
        (np.zeros((0, DIM), np.float32), 3, "batch of 0"),
        (np.full((1, DIM), np.nan, np.float32), 3, "NaN"),
        (np.array([["a"] * DIM]), 3, "numeric"),
    ],
)
def test_bad_search_input(flat_dir, q, k, match):
    ix = PassageIndex.open(flat_dir)
    q = np.ones((1, DIM), np.float32) if isinstance(q, str) else q
    with pytest.raises(InputError, match=match):
        ix.search(q, k)


def test_bad_nprobe(pq_dir):
    with pytest.raises(InputError, match="nprobe"):
        PassageIndex.open(pq_dir).search(np.ones(DIM, np.float32), 3, nprobe=0)


def _assert_nothing_left(out: Path):
    assert not out.exists()
    assert not [x for x in os.listdir(out.parent) if x.startswith(f".{out.name}.")]


def test_bad_embeddings_leave_nothing(corpus, tmp_path):
    p, _, x = corpus
    out = tmp_path / "idx"
    cases = [
        (x[:-1], "embeddings have 2999 rows but .* has 3000 passage rows"),
        (x[:, :, None], r"shape \[passages, dim\]"),
        (x.astype(np.int32), "float16/32/64"),
    ]
    nan = x.copy()
    nan[1234, 3] = np.nan
    cases.append((nan, r"NaN or infinite values \(first at passage row 1234\)"))
    inf = x.copy()
    inf[10, 0] = np.inf
    cases.append((inf, "NaN or infinite"))
    for arr, match in cases:
        np.save(tmp_path / "bad.npy", arr)
        with pytest.raises(InputError, match=match):
            build_index(
                p, out, embeddings=tmp_path / "bad.npy", options=_opts(factory="IVF16,PQ8x4")
            )
        _assert_nothing_left(out)
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(InputError, match="cannot read embeddings"):
        build_index(p, out, embeddings=tmp_path / "junk.npy", options=_opts())
    with pytest.raises(InputError, match="does not exist"):
        build_index(p, out, embeddings=tmp_path / "none.npy", options=_opts())
    _assert_nothing_left(out)


def test_bad_passage_files_leave_nothing(tmp_path):
    x = np.ones((3, 8), np.float32)
    np.save(tmp_path / "e.npy", x)
    out = tmp_path / "idx"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="no passages"):
        build_index(tmp_path / "empty.jsonl", out, embeddings=tmp_path / "e.npy", options=_opts())
    _assert_nothing_left(out)
    (tmp_path / "dup.jsonl").write_text(
        '{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n{"id": 1, "text": "c"}\n'
    )
    with pytest.raises(InputError, match="duplicate passage id"):
        build_index(tmp_path / "dup.jsonl", out, embeddings=tmp_path / "e.npy", options=_opts())
    _assert_nothing_left(out)
    (tmp_path / "bad.tsv").write_text("id\ttext\ttitle\n1\ta\tT\n2\tb\tT\textra\n3\tc\tT\n")
    with pytest.raises(InputError, match=r"bad.tsv:3: expected 3 tab-separated fields"):
        build_index(tmp_path / "bad.tsv", out, embeddings=tmp_path / "e.npy", options=_opts())
    _assert_nothing_left(out)


def test_skip_bad_rows_drops_their_embeddings(tmp_path):
    x = np.eye(4, 8, dtype=np.float32) + 0.01
    np.save(tmp_path / "e.npy", x)
    (tmp_path / "p.tsv").write_text("id\ttext\ttitle\na\tA\tT\nb\tB\tT\tX\nc\tC\tT\nd\tD\tT\n")
    m = build_index(
        tmp_path / "p.tsv",
        tmp_path / "idx",
        embeddings=tmp_path / "e.npy",
        options=_opts(skip_bad_rows=True),
    )
    assert (
        m.passages == 3
        and m.source["skipped_rows"] == 1
        and "line 3" in m.source["skipped_examples"][0]
    )
    ix = PassageIndex.open(tmp_path / "idx")
    np.testing.assert_allclose(ix.embeddings([0, 1, 2]), x[[0, 2, 3]])
    assert [d.id for d in ix.docs(ix.search(x[2], 1))[0]] == ["c"]


def test_bad_factory_and_too_few_training_points(corpus, tmp_path):
    p, e, _ = corpus
    with pytest.raises(InputError, match="bad FAISS factory"):
        build_index(p, tmp_path / "a", embeddings=e, options=_opts(factory="IVF16,PQ7"))
    with pytest.raises(InputError, match="bad FAISS factory"):
        build_index(p, tmp_path / "a", embeddings=e, options=_opts(factory="NotAnIndex"))
    with pytest.raises(InputError, match="cannot train"):
        build_index(p, tmp_path / "a", embeddings=e, options=_opts(factory="IVF4096,Flat"))
    _assert_nothing_left(tmp_path / "a")


def test_existing_output_needs_overwrite(corpus, tmp_path):
    p, e, _ = corpus
    out = tmp_path / "idx"
    build_index(p, out, embeddings=e, options=_opts())
    with pytest.raises(InputError, match="already exists"):
        build_index(p, out, embeddings=e, options=_opts())
    build_index(p, out, embeddings=e, options=_opts(overwrite=True))
    assert PassageIndex.open(out).manifest.passages == N
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_corrupt_truncated_or_half_written_index(pq_dir, tmp_path):
    d = tmp_path / "idx"
    shutil.copytree(pq_dir, d)
    raw = (d / INDEX_FILE).read_bytes()
    (d / INDEX_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        PassageIndex.open(d)
    with pytest.raises(ArtifactError, match="cannot read"):  # even without the manifest's check
        PassageIndex.open(d, verify="none")
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF
    (d / INDEX_FILE).write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        PassageIndex.open(d)
    (d / INDEX_FILE).write_bytes(raw)
    (d / "embeddings.f16").write_bytes(b"\0" * 10)
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        PassageIndex.open(d)
    (d / "manifest.json").unlink()  # what an interrupted build would look like
    with pytest.raises(ArtifactError, match="not a \\(complete\\) ragrt index"):
        PassageIndex.open(d)
    (d / "manifest.json").write_text("{ nope")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        PassageIndex.open(d)
    with pytest.raises(ArtifactError, match="does not exist"):
        PassageIndex.open(tmp_path / "missing")


def test_interrupted_build_leaves_nothing(corpus, tmp_path, monkeypatch):
    p, e, _ = corpus
    import ragrt.retrieval.build as ib

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ib, "calibrate_nprobe", boom)
    with pytest.raises(KeyboardInterrupt):
        build_index(p, tmp_path / "idx", embeddings=e, options=_opts(factory="IVF16,PQ8x4"))
    _assert_nothing_left(tmp_path / "idx")


# -- GPU decisions (no GPU here: pure decisions + a fake faiss module) ------------------------
def test_gpu_plan_decisions():
    pq64 = {
        "kind": "ivfpq",
        "M": 64,
        "nbits": 8,
        "d": 768,
        "coarse": "IndexFlatIP",
        "class": "IndexIVFPQ",
    }
    plan = gpu_plan(pq64, device="auto", num_gpus=1, has_gpu_faiss=True)
    assert plan.use_gpu and plan.float16_lookup_tables and not plan.flat_coarse_quantizer
    assert plan.gpus == [0] and not plan.shard
    hnsw = dict(pq64, coarse="IndexHNSWFlat")
    assert gpu_plan(hnsw, device="auto", num_gpus=1, has_gpu_faiss=True).flat_coarse_quantizer
    multi = gpu_plan(pq64, device="cuda", num_gpus=4, has_gpu_faiss=True)
    assert multi.shard and multi.gpus == [0, 1, 2, 3]
    assert not gpu_plan(pq64, device="cuda", num_gpus=4, has_gpu_faiss=True, shard=False).shard
    assert gpu_plan(pq64, device="cuda", num_gpus=4, has_gpu_faiss=True, gpus=[2]).gpus == [2]
    with pytest.raises(InputError, match="invalid"):
        gpu_plan(pq64, device="cuda", num_gpus=2, has_gpu_faiss=True, gpus=[3])
    # fallbacks (auto) and errors (cuda)
    for kw, why in [
        (dict(num_gpus=0, has_gpu_faiss=True), "no CUDA device"),
        (dict(num_gpus=1, has_gpu_faiss=False), "no GPU support"),
    ]:
        p = gpu_plan(pq64, device="auto", **kw)
        assert not p.use_gpu and why in p.reason
        with pytest.raises(DeviceError, match=why):
            gpu_plan(pq64, device="cuda", **kw)
    assert not gpu_plan(dict(pq64, nbits=4), device="auto", num_gpus=1, has_gpu_faiss=True).use_gpu
    assert not gpu_plan(
        dict(pq64, M=7, d=770), device="auto", num_gpus=1, has_gpu_faiss=True
    ).use_gpu
    assert gpu_plan(
        {"kind": "flat", "class": "IndexFlatIP"}, device="auto", num_gpus=1, has_gpu_faiss=True
    ).use_gpu
    assert not gpu_plan(pq64, device="cpu", num_gpus=8, has_gpu_faiss=True).use_gpu
    with pytest.raises(InputError):
        gpu_plan(pq64, device="tpu", num_gpus=1, has_gpu_faiss=True)


def test_describe_real_indexes():
    ivf = faiss.index_factory(64, "IVF8_HNSW32,PQ16", faiss.METRIC_INNER_PRODUCT)
    info = describe_index(ivf)
    assert info == {
        "class": "IndexIVFPQ",
        "kind": "ivfpq",
        "coarse": "IndexHNSWFlat",
        "M": 16,
        "nbits": 8,
        "d": 64,
    }
    assert describe_index(faiss.IndexFlatIP(8))["kind"] == "flat"
    assert not is_gpu_index(ivf)


def test_flat_coarse_quantizer_keeps_results(corpus, queries):
    _, _, x = corpus
    ivf = faiss.index_factory(DIM, "IVF16_HNSW32,PQ16x4", faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add(x)
    flat = with_flat_coarse_quantizer(ivf)
    assert type(faiss.downcast_index(flat.quantizer)).__name__ == "IndexFlatIP"
    p = faiss.SearchParametersIVF(nprobe=16)
    d1, i1 = ivf.search(queries, 10, params=p)
    d2, i2 = flat.search(queries, 10, params=p)
    assert recall(i1, i2) == 1.0
    np.testing.assert_allclose(d1, d2, atol=1e-5)


class _FakeGpuFaiss:
    """Just enough of faiss-gpu's Python API to exercise to_device's decisions."""

    METRIC_INNER_PRODUCT = faiss.METRIC_INNER_PRODUCT

    def __init__(self, ngpu: int, clone_class: str = "GpuIndexIVFPQ"):
        self.ngpu, self.clone_class, self.calls = ngpu, clone_class, []
        self.IndexFlatIP, self.IndexFlatL2 = faiss.IndexFlatIP, faiss.IndexFlatL2
        self.clone_index = faiss.clone_index

    def get_num_gpus(self):
        return self.ngpu

    def downcast_index(self, index):
        return faiss.downcast_index(index) if isinstance(index, faiss.Index) else index

    class StandardGpuResources:
        pass

    class GpuMultipleClonerOptions:
        useFloat16LookupTables = False
        shard = False

    def _clone(self, src, co):
        quant = type(faiss.downcast_index(faiss.downcast_index(src).quantizer)).__name__
        self.calls.append(
            {"fp16_lut": co.useFloat16LookupTables, "shard": co.shard, "coarse": quant}
        )
        return type(self.clone_class, (), {})()

    def index_cpu_to_gpu(self, res, dev, src, co):
        return self._clone(src, co)

    def index_cpu_to_gpu_multiple_py(self, resources, src, co, gpus):
        self.calls.append({"gpus": list(gpus)})
        return self._clone(src, co)


def test_to_device_with_fake_gpu_faiss(corpus):
    _, _, x = corpus
    ivf = faiss.index_factory(DIM, "IVF16_HNSW32,PQ8", faiss.METRIC_INNER_PRODUCT)
    ivf.quantizer.add(x[:16])  # 16 coarse centroids; the clone path needs nothing else
    fake = _FakeGpuFaiss(ngpu=2)
    gpu, plan = to_device(ivf, device="cuda", faiss_module=fake)
    assert type(gpu).__name__ == "GpuIndexIVFPQ" and plan.use_gpu and plan.shard
    assert fake.calls == [
        {"gpus": [0, 1]},
        {"fp16_lut": True, "shard": True, "coarse": "IndexFlatIP"},
    ]
    fake1 = _FakeGpuFaiss(ngpu=1)
    gpu, plan = to_device(ivf, device="auto", faiss_module=fake1)
    assert fake1.calls[0]["coarse"] == "IndexFlatIP" and not plan.shard
    # a clone that is not a Gpu* index: CPU fallback on auto, error on cuda
    bad = _FakeGpuFaiss(ngpu=1, clone_class="IndexIVFPQ")
    same, plan = to_device(ivf, device="auto", faiss_module=bad)
    assert same is ivf and not plan.use_gpu and "not a Gpu* index" in plan.reason
    with pytest.raises(DeviceError, match="not a Gpu"):
        to_device(ivf, device="cuda", faiss_module=_FakeGpuFaiss(ngpu=1, clone_class="IndexIVFPQ"))


def test_real_faiss_cpu_falls_back(flat_dir):
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if has_gpu:
        pytest.skip("a GPU is present")
    ix = PassageIndex.open(flat_dir, device="auto")
    assert not ix.plan.use_gpu and ix.search(np.ones(DIM, np.float32), 2).rows.shape == (1, 2)
    with pytest.raises(DeviceError):
        PassageIndex.open(flat_dir, device="cuda")


# -- CLI -------------------------------------------------------------------------------------
def test_cli_build_info_and_errors(corpus, tmp_path, capsys):
    from ragrt.cli import main

    p, e, _ = corpus
    out = tmp_path / "idx"
    rc = main(
        [
            "index",
            "build",
            "--passages",
            str(p),
            "--embeddings",
            str(e),
            "--out",
            str(out),
            "--factory",
            "IVF16,PQ8x4",
            "--no-progress",
            "--no-exact-embeddings",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "3000 passages" in text and "pq_approximate" in text
    assert main(["index", "info", str(out), "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["factory"] == "IVF16,PQ8x4"
    assert main(["index", "build", "--passages", str(p), "--out", str(tmp_path / "x")]) == 2
    assert "error: give --model" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                "build",
                "--passages",
                str(p),
                "--embeddings",
                str(e),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "e.jsonl").write_text("")
    assert (
        main(
            [
                "index",
                "build",
                "--passages",
                str(tmp_path / "e.jsonl"),
                "--embeddings",
                str(e),
                "--out",
                str(tmp_path / "y"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "no passages" in capsys.readouterr().err
    assert main(["index", "info", str(tmp_path / "nope")]) == 2


# -- encoder path ----------------------------------------------------------------------------
class _HashEncoder:
    """Deterministic stand-in for a context encoder: a unit vector per (title, text) input.

    Seeded from a sha256 of the text (``hash()`` is randomized per process) and normalized, so
    that inner-product search finds each passage's own vector first.
    """

    name, dim, precision, onnx_sha256 = "hash-encoder", 16, "fp32", "e" * 64

    def __init__(self):
        self.calls = []

    def encode(self, items, batch_size=64, sort_by_length=True, progress=False):
        self.calls.append((len(items), batch_size, sort_by_length))
        out = []
        for it in items:
            key = "\x1f".join(it) if isinstance(it, tuple) else it
            seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_build_with_encoder_keeps_passage_order(tmp_path, fmt):
    p, _, _ = write_corpus(tmp_path, 300, 8, fmt=fmt)
    enc = _HashEncoder()
    m = build_index(p, tmp_path / "idx", encoder=enc, options=_opts(batch_size=7, embed_chunk=64))
    assert m.passages == 300 and m.factory == "Flat" and m.source["embeddings"] == "context_encoder"
    assert (
        m.embedding_model["name"] == "hash-encoder" and m.embedding_model["onnx_sha256"] == "e" * 64
    )
    assert all(c[1] == 7 and c[2] is False for c in enc.calls)  # we sorted; encoder must not
    ix = PassageIndex.open(tmp_path / "idx")
    want = enc.encode([(f"Title {i}", f"passage number {i}") for i in range(300)])
    np.testing.assert_allclose(ix.embeddings(np.arange(300)), want, atol=1e-6)
    res = ix.search(want[[5, 250]], 1)
    assert res.rows[:, 0].tolist() == [5, 250]
    assert [d[0].id for d in ix.docs(res)] == ["p5", "p250"]


def _jsonl_to_tsv(src: Path, dst: Path) -> Path:
    import csv

    with open(dst, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["id", "text", "title"])
        for line in src.read_text(encoding="utf-8").splitlines():
            o = json.loads(line)
            w.writerow([o["id"], o["text"], o.get("title", "")])
    return dst


def test_fixture_encoder_tsv_and_jsonl_builds_agree(
    rag_bart_art, rag_bart_index, small_corpus, tmp_path, capsys
):
    from ragrt.cli import main
    from ragrt.runtime.encoders import TextEncoder

    tsv = _jsonl_to_tsv(small_corpus, tmp_path / "corpus.tsv")
    out = tmp_path / "idx-tsv"
    assert (
        main(
            [
                "index",
                "build",
                "--passages",
                str(tsv),
                "--model",
                str(rag_bart_art),
                "--out",
                str(out),
                "--no-progress",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    a, b = PassageIndex.open(rag_bart_index), PassageIndex.open(out)
    n = len(a)
    assert n == len(b) == 240 and a.manifest.factory == "Flat"
    em = a.manifest.embedding_model
    assert em["question_encoder"]["sha256"]["fp32"] and em["context_encoder"]["sha256"]["fp32"]
    np.testing.assert_allclose(a.embeddings(np.arange(n)), b.embeddings(np.arange(n)), atol=1e-5)
    for i in (0, 1, 239):  # same passages, text preserved through the TSV quoting
        pa, pb = a.passage(i), b.passage(i)
        assert (pa.id, pa.title, pa.text) == (pb.id, pb.title, pb.text)
    # the index holds what the context encoder gives for (title, text) pairs
    ctx = TextEncoder.load(rag_bart_art, "context_encoder")
    first = [a.passage(i) for i in range(8)]
    want = ctx.encode(
        [(d.title, d.text) if d.title else d.text for d in first], sort_by_length=False
    )
    np.testing.assert_allclose(a.embeddings(np.arange(8)), want, atol=1e-5)
    a.check_encoder(TextEncoder.load(rag_bart_art, "question_encoder"))
    a.check_encoder(TextEncoder.load(rag_bart_art, "question_encoder", precision="fp16"))


def test_cli_search(rag_bart_art, rag_bart_index, capsys):
    from ragrt.cli import main
    from ragrt.runtime.encoders import TextEncoder

    q = ["how do I parse command line arguments?", "sort a list in place"]
    assert (
        main(
            [
                "index",
                "search",
                str(rag_bart_index),
                "--model",
                str(rag_bart_art),
                *q,
                "-k",
                "3",
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["question"] for x in lines] == q and all(len(x["docs"]) == 3 for x in lines)
    ix = PassageIndex.open(rag_bart_index)
    qe = TextEncoder.load(rag_bart_art, "question_encoder").encode(q[:1])[0]
    for d in lines[0]["docs"]:
        assert set(d) == {"id", "title", "text", "score"}
        assert d["score"] == pytest.approx(
            float(qe @ ix.embeddings([ix.row_of(d["id"])])[0]), abs=1e-4
        )
    scores = [d["score"] for d in lines[0]["docs"]]
    assert scores == sorted(scores, reverse=True)
    assert (
        main(
            ["index", "search", str(rag_bart_index), "--model", str(rag_bart_art), q[0], "-k", "2"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert text.startswith(f"question: {q[0]}") and "  1. [" in text and "  2. [" in text
    assert (
        main(
            ["index", "search", str(rag_bart_index), "--model", str(rag_bart_art), q[0], "-k", "0"]
        )
        == 2
    )
    assert "k must be >= 1" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                "search",
                str(rag_bart_index),
                "--model",
                str(rag_bart_art),
                q[0],
                "-k",
                "241",
            ]
        )
        == 2
    )
    assert "larger than the corpus (240 passages)" in capsys.readouterr().err


def test_index_refuses_another_model(rag_bart_index, minilm_art, capsys):
    from ragrt.cli import main
    from ragrt.runtime import manifest as manifest_mod

    ix = PassageIndex.open(rag_bart_index)
    with pytest.raises(ArtifactError, match="outputs 384-d"):
        ix.check_encoder(manifest_mod.load(minilm_art, verify=False))
    assert (
        main(["index", "search", str(rag_bart_index), "--model", str(minilm_art), "a question"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: index") and "384-d" in err and "Traceback" not in err


def test_mmap_open_searches_the_same(pq_dir, queries):
    a = PassageIndex.open(pq_dir).search(queries, 5)
    b = PassageIndex.open(pq_dir, mmap=True, verify="full").search(queries, 5)
    assert np.array_equal(a.rows, b.rows) and np.allclose(a.scores, b.scores)


def test_calibration_on_given_question_embeddings(corpus, tmp_path, queries):
    p, e, x = corpus
    np.save(tmp_path / "cal.npy", queries[:20])
    m = build_index(
        p,
        tmp_path / "idx",
        embeddings=e,
        options=_opts(factory=IVFPQ, calibration_queries=tmp_path / "cal.npy"),
    )
    cal = m.calibration
    assert cal["queries_from"] == "given question embeddings" and cal["queries"] == 20
    assert cal["recall@10"] >= 0.95 and cal["goal"] == 0.95
    truth, _ = exact_top(x, queries[:20], 10)
    assert recall(PassageIndex.open(tmp_path / "idx").search(queries[:20], 10).rows, truth) >= 0.95
    np.save(tmp_path / "bad.npy", queries[:, :5])
    with pytest.raises(InputError, match=r"calibration queries must have shape \[queries, 32\]"):
        build_index(
            p,
            tmp_path / "idx2",
            embeddings=e,
            options=_opts(factory=IVFPQ, calibration_queries=tmp_path / "bad.npy"),
        )
    _assert_nothing_left(tmp_path / "idx2")


def test_corrupt_gz_with_an_encoder_is_an_input_error(tmp_path):
    # with a model the builder first counts lines for the progress bar: that read must fail
    # as cleanly as the passage reader does
    import gzip

    p = tmp_path / "c.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"id": 1, "text": "x"}\n' * 200)[:50])
    enc = SimpleNamespace(name="fake", dim=4, precision="fp32", onnx_sha256=None)
    with pytest.raises(InputError, match="cannot read"):
        build_index(p, tmp_path / "i", encoder=enc, options=_opts())
    _assert_nothing_left(tmp_path / "i")


def test_progress_total_leaves_out_the_tsv_header(tmp_path, monkeypatch):
    import ragrt.retrieval.build as build_mod

    p, _, x = write_corpus(tmp_path / "c", 30, 8, fmt="tsv")
    totals = []

    class Bar:
        def __init__(self, total=None, **kw):
            totals.append(total)

        def update(self, n):
            pass

        def close(self):
            pass

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    enc = SimpleNamespace(
        name="fake",
        dim=8,
        precision="fp32",
        onnx_sha256=None,
        encode=lambda items, **kw: x[: len(items)],
    )
    build_mod.build_index(p, tmp_path / "i", encoder=enc, options=_opts(progress=True))
    assert totals == [30]  # 31 lines: the header is not a passage
