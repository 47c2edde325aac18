"""The Ray index build (``ragrt index build --ray``) against the one-process build.

The cluster tests share one real two-node Ray cluster for the module (``tests/ray_cluster.py``:
a head and a second node started by ``ray start`` in sessions of their own, one CPU each, so
two embedding actors land one per node). Builds are submitted as ``ragrt index build --ray``
subprocesses, or as a driver script that connects itself where options the CLI does not expose
are needed; the test process keeps no Ray state. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ragrt.cli import main as cli_main
from ragrt.errors import InputError
from ragrt.retrieval.build import BuildOptions, build_index
from ragrt.retrieval.distributed import RayOptions, build_index_ray, work_dir_for
from ragrt.retrieval.index import PassageIndex
from tests.ray_cluster import TwoNodeCluster

#: one ragrt build on the cluster; the slowest seen here is ~40 s on 2 busy cores
BUILD_TIMEOUT_S = 300
STORE = ("passages.data", "passages.offsets", "passages.ids")


@pytest.fixture(scope="module")
def cluster():
    c = TwoNodeCluster()
    try:
        yield c.start()
    finally:
        left = c.stop()
        assert not left, f"the test cluster outlived the tests: {left}"


# -- corpora and reference builds ---------------------------------------------------------------
@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """The demo corpus four times over (new ids, shifted texts: 2888 distinct passages), with
    one malformed row that --skip-bad-rows must drop in both builds alike."""
    from importlib import resources

    src = Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()]
    out = tmp_path_factory.mktemp("corpus") / "big.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for k in range(4):
            for r in rows:
                text = r["text"][7 * k :] or r["text"]
                f.write(json.dumps({**r, "id": f"{r['id']}~{k}", "text": text}) + "\n")
            if k == 1:
                f.write('{"id": "broken", "text": \n')
    return out


def _reference(out: Path, corpus: Path, art: Path, **opts) -> Path:
    if not out.exists():
        build_index(
            corpus,
            out,
            model=art,
            options=BuildOptions(progress=False, skip_bad_rows=True, **opts),
        )
    return out


@pytest.fixture(scope="module")
def flat_reference(tmp_path_factory, big_corpus, rag_bart_art) -> Path:
    """The one-process Flat build of ``big_corpus`` in the fault tests' chunks (16 rows)."""
    out = tmp_path_factory.mktemp("flat-ref") / "ref"
    return _reference(out, big_corpus, rag_bart_art, factory="Flat", embed_chunk=16)


def _ray_cli(cluster: TwoNodeCluster, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ragrt", "index", "build", "--no-progress", *args]
    return subprocess.Popen(
        cmd, env=env or cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(p: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"the Ray build ran over {BUILD_TIMEOUT_S}s:\n{err[-3000:]}")
    return p.returncode, out, err


def _marks(out: Path) -> int:
    return len(list((work_dir_for(out) / "shards").glob("block-*.json")))


def assert_same_index(a: Path, b: Path) -> None:
    """Same store, same embeddings, same FAISS index (bytes), same manifest but timings, same
    search results."""
    for name in STORE:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert set(ma["files"]) == set(mb["files"])
    for name in ma["files"]:
        if name not in STORE:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for m in (ma, mb):
        m.pop("build"), m.pop("created")
    assert ma == mb
    ia, ib = PassageIndex.open(a), PassageIndex.open(b)
    n = len(ia)
    ea, eb = ia.embeddings(np.arange(n)), ib.embeddings(np.arange(n))
    assert np.abs(ea - eb).max() <= 1e-6
    q = np.random.default_rng(0).normal(size=(16, ia.dim)).astype(np.float32)
    q = np.concatenate([q, ea[:: max(1, n // 16)][:16]])
    ra, rb = ia.search(q, 10), ib.search(q, 10)
    assert np.array_equal(ra.rows, rb.rows)
    assert np.array_equal(ra.scores, rb.scores)
    assert len({tuple(r) for r in ra.rows}) > 8  # diverse results, not one repeated list
    if ia.nlist is not None:  # IVF-PQ: the same codes in the same lists, in row order
        from faiss.contrib.inspect_tools import get_invlist

        fa, fb = (_ivf(x) for x in (ia, ib))
        for lst in range(fa.nlist):
            (ids_a, codes_a), (ids_b, codes_b) = (get_invlist(f.invlists, lst) for f in (fa, fb))
            assert np.array_equal(ids_a, ids_b) and np.array_equal(codes_a, codes_b)


def _ivf(index: PassageIndex):
    import faiss

    return faiss.extract_index_ivf(index.shards[0].index)


# -- no cluster needed --------------------------------------------------------------------------
def test_importing_the_ray_build_imports_no_ray():
    code = (
        "import sys, ragrt.retrieval.distributed, ragrt.cli.index, ragrt.engine\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--workers", "2"], "--workers only apply to a Ray build"),
        (["--resume", "--block-rows", "8"], "--block-rows, --resume only apply to a Ray build"),
        (["--ray", "--embeddings", "e.npy"], "precomputed --embeddings need no cluster"),
    ],
)
def test_ray_flags_are_checked(tmp_path, small_corpus, capsys, extra, message):
    args = ["index", "build", "--passages", str(small_corpus), "--out", str(tmp_path / "o")]
    rc = cli_main([*args, "--model", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_bad_ray_options_fail_before_any_work(tmp_path, small_corpus, rag_bart_art):
    for bad, flag in (
        (RayOptions(workers=0), "--workers"),
        (RayOptions(block_rows=0), "--block-rows"),
        (RayOptions(max_retries=-1), "--max-retries"),
    ):
        with pytest.raises(InputError, match=flag):
            build_index_ray(small_corpus, tmp_path / "o", model=rag_bart_art, ray_options=bad)
    assert not any(tmp_path.iterdir())


def test_an_unfinished_build_is_not_overwritten_and_resumes_only_the_same_plan(
    tmp_path, small_corpus, rag_bart_art
):
    out = tmp_path / "idx"
    wd = work_dir_for(out)
    wd.mkdir()
    (wd / "shards").mkdir()
    (wd / "shards" / "block-000000.json").write_text("{}")
    (wd / "plan.json").write_text(json.dumps({"block_rows": 1}))
    with pytest.raises(InputError, match=r"1 embedded shards\): pass --resume"):
        build_index_ray(small_corpus, out, model=rag_bart_art)
    with pytest.raises(InputError, match=r"differs from the interrupted one in .*block_rows"):
        build_index_ray(small_corpus, out, model=rag_bart_art, ray_options=RayOptions(resume=True))
    assert (wd / "shards" / "block-000000.json").exists() and not out.exists()


def test_a_bad_row_stops_the_build_before_any_work_and_leaves_nothing(tmp_path, rag_bart_art):
    src = tmp_path / "p.jsonl"
    src.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": ""}\n')
    out = tmp_path / "idx"
    with pytest.raises(InputError, match=r"p.jsonl:2: empty text .*--skip-bad-rows"):
        build_index_ray(src, out, model=rag_bart_art)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p.jsonl"]


# -- on the two-node cluster --------------------------------------------------------------------
@pytest.mark.slow
def test_two_node_build_equals_the_one_process_build(cluster, tmp_path, small_corpus, rag_bart_art):
    """Flat index, fp32 vectors: two actors (one per node), submitted as a RayJob would be
    (``--ray`` with the cluster in RAY_ADDRESS)."""
    ref = _reference(tmp_path / "ref", small_corpus, rag_bart_art, embed_chunk=48)
    out = tmp_path / "ray"
    p = _ray_cli(
        cluster,
        *("--passages", str(small_corpus), "--model", str(rag_bart_art), "--out", str(out)),
        *("--skip-bad-rows", "--ray", "--workers", "2", "--block-rows", "48"),
        env={**cluster.env, "RAY_ADDRESS": cluster.address},
    )
    rc, stdout, err = _finish(p)
    assert rc == 0, err[-3000:]
    assert stdout.startswith(f"built {out}: 240 passages")
    assert_same_index(ref, out)
    ray_info = json.loads((out / "manifest.json").read_text())["build"]["ray"]
    assert ray_info["nodes"] == 2 and ray_info["workers"] == 2
    assert ray_info["blocks"] == 5 and ray_info["embedded_blocks"] == 5
    assert not work_dir_for(out).exists()


#: a driver that connected itself (``ray.init``) before the build, with BuildOptions the CLI
#: does not expose; in a subprocess, so the test process keeps no Ray state
_CONNECTED_DRIVER = """
import json, sys
import ray
from ragrt.retrieval.build import BuildOptions
from ragrt.retrieval.distributed import RayOptions, build_index_ray

a = json.loads(sys.argv[1])
ray.init(address=a["address"], logging_level="WARNING")
m = build_index_ray(a["corpus"], a["out"], model=a["art"], options=BuildOptions(**a["opts"]),
                    ray_options=RayOptions(**a["ray"]))
assert ray.is_initialized(), "the build shut down a Ray connection it did not open"
print(json.dumps(m.to_dict()))
"""


@pytest.mark.slow
def test_ivfpq_codes_are_computed_on_the_cluster_and_equal(
    cluster, tmp_path, big_corpus, rag_bart_art
):
    """IVF-PQ with float16 exact embeddings: the same quantizer (same training sample), codes
    of five add chunks encoded on the cluster and appended in row order."""
    kw = dict(factory="IVF16,PQ8x4", embed_chunk=256, add_chunk=700)
    ref = _reference(tmp_path / "ref", big_corpus, rag_bart_art, **kw)
    job = {
        "address": cluster.address,
        "corpus": str(big_corpus),
        "out": str(tmp_path / "ray"),
        "art": str(rag_bart_art),
        "opts": {**kw, "progress": False, "skip_bad_rows": True},
        "ray": {"workers": 2, "block_rows": 512},
    }
    p = subprocess.Popen(
        [sys.executable, "-c", _CONNECTED_DRIVER, json.dumps(job)],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rc, stdout, err = _finish(p)
    assert rc == 0, err[-3000:]
    m = json.loads(stdout.strip().splitlines()[-1])
    assert m["passages"] == 2888 and m["source"]["skipped_rows"] == 1
    assert m["exact_embeddings"] == {"file": "embeddings.f16", "dtype": "float16"}
    assert m["build"]["ray"]["nodes"] == 2
    assert_same_index(ref, tmp_path / "ray")
    index = PassageIndex.open(ref)  # owns the faiss index that _ivf() points into
    sizes = [_ivf(index).get_list_size(i) for i in range(16)]
    assert sum(x > 0 for x in sizes) >= 8, sizes  # codes spread over the lists


def _kill_a_busy_actor(cluster: TwoNodeCluster, p: subprocess.Popen, out: Path) -> tuple[int, int]:
    """Once shards are landing, SIGKILL an embedding actor in the middle of a block; returns
    (pid, shards done at that moment)."""
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while p.poll() is None and time.monotonic() < deadline:
        done = _marks(out) if work_dir_for(out).exists() else 0
        busy = cluster.embedding_actors(busy=True) if done else []
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            return busy[0], done
        time.sleep(0.01)
    pytest.fail("the build ended before an embedding actor could be killed mid-block")


@pytest.mark.slow
def test_a_killed_worker_costs_no_passage(
    cluster, tmp_path, big_corpus, rag_bart_art, flat_reference
):
    out = tmp_path / "ray"
    p = _ray_cli(
        cluster,
        *("--passages", str(big_corpus), "--model", str(rag_bart_art), "--out", str(out)),
        *("--skip-bad-rows", "--factory", "Flat"),
        *("--ray", cluster.address, "--workers", "2", "--block-rows", "16"),
    )
    pid, done = _kill_a_busy_actor(cluster, p, out)
    rc, _, err = _finish(p)
    assert rc == 0, err[-3000:]
    assert 0 < done < 181
    assert pid not in cluster.processes()
    assert_same_index(
        flat_reference, out
    )  # no passage lost, none twice: same rows, same ids, same order


@pytest.mark.slow
def test_a_failed_build_leaves_no_index_and_resume_embeds_only_the_rest(
    cluster, tmp_path, big_corpus, rag_bart_art, flat_reference
):
    out = tmp_path / "ray"
    args = [
        *("--passages", str(big_corpus), "--model", str(rag_bart_art), "--out", str(out)),
        *("--skip-bad-rows", "--factory", "Flat"),
        *("--ray", cluster.address, "--workers", "2", "--block-rows", "16"),
    ]
    for _ in range(3):  # a kill can land just after a block ended: then nothing fails; again
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work_dir_for(out), ignore_errors=True)
        p = _ray_cli(cluster, *args, "--max-retries", "0")
        _kill_a_busy_actor(cluster, p, out)
        rc, _, err = _finish(p)
        if rc != 0:
            break
    assert rc == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the Ray build failed: ") and "rerun with --resume" in last
    assert "Traceback" not in last
    assert not out.exists()  # nothing that looks like an index
    kept = _marks(out)
    assert 0 < kept < 181
    rc, _, err = _finish(_ray_cli(cluster, *args, "--resume"))
    assert rc == 0, err[-3000:]
    ray_info = json.loads((out / "manifest.json").read_text())["build"]["ray"]
    assert ray_info["reused_blocks"] == kept and ray_info["embedded_blocks"] == 181 - kept
    assert_same_index(flat_reference, out)
