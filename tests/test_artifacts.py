"""Artifact directories (``ragrt.artifacts``): manifest paths that try to leave their directory,
wrongly typed manifests, the Triton repository's code hashes, staging directories left by
killed runs, and --overwrite replacing only what ragrt wrote (issue 11 items 1, 3, 7, 13, 14).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragrt import artifacts
from ragrt.artifacts import ArtifactKind, safe_path, sha256_file, staging_dir
from ragrt.errors import ArtifactError, InputError
from tests.index_helpers import write_corpus

ROOT = Path(__file__).resolve().parents[1]
KIND = ArtifactKind(format="test-kind", noun="test output", dir_label="test dir", make="make it")


def _edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _record(p: Path) -> dict:
    return {"sha256": sha256_file(p), "bytes": p.stat().st_size}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- safe paths ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rel,why",
    [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("/etc/hostname", "absolute"),
        ("C:/x", "absolute"),
        ("a\\b", "Windows"),
        ("./a", "not a normalized"),
        ("a//b", "not a normalized"),
        ("", "empty"),
        (5, "not a string"),
    ],
)
def test_safe_path_refuses(tmp_path, rel, why):
    with pytest.raises(ArtifactError, match=why) as e:
        safe_path(tmp_path, rel, where="m.json", fix="fix it")
    assert "m.json" in str(e.value) and "fix it" in str(e.value)


def test_safe_path_follows_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("s" * 12345)
    (root / "inner").symlink_to(root / "sub")
    (root / "out").symlink_to(outside)
    assert safe_path(root, "inner/f", where="m", fix="f") == root / "inner" / "f"
    with pytest.raises(ArtifactError, match="symbolic link") as e:
        safe_path(root, "out/secret", where="m", fix="f")
    assert "12345" not in str(e.value) and "outside" not in str(e.value)


# -- issue 11 item 1: the four payloads --------------------------------------------------------
def _index_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_build_repo_refuses_a_key_that_writes_outside_out(rag_bart_art, rag_bart_index, tmp_path):
    from ragrt.triton_models.repository import build_repository

    # INDEX_DIR four levels down: "../../../../x" read from T/x, written next to --out
    idx = _index_copy(rag_bart_index, tmp_path / "a" / "b" / "c" / "idx")
    (tmp_path / "x").write_text("payload")
    _edit(
        idx / "manifest.json",
        lambda d: d["files"].update({"../../../../x": _record(tmp_path / "x")}),
    )
    out = tmp_path / "out" / "repo"
    (tmp_path / "out").mkdir()
    with pytest.raises(ArtifactError, match=r"'\.\./\.\./\.\./\.\./x'.*inside"):
        build_repository(rag_bart_art, idx, out)
    assert sorted(os.listdir(tmp_path / "out")) == []


def test_symlink_in_the_index_dir_is_refused(rag_bart_art, rag_bart_index, tmp_path):
    from ragrt.retrieval.index import IndexManifest, PassageIndex
    from ragrt.triton_models.repository import RepoOptions, build_repository

    outside = tmp_path / "home"
    outside.mkdir()
    (outside / ".bashrc").write_text("original")
    idx = _index_copy(rag_bart_index, tmp_path / "idx")
    (idx / "home").symlink_to(outside)
    for key in ("home/.bashrc", "home/../idx/index.faiss"):
        _edit(
            idx / "manifest.json",
            lambda d, key=key: d.update(
                files={
                    **{k: v for k, v in d["files"].items() if "home" not in k},
                    key: _record(outside / ".bashrc"),
                }
            ),
        )
        for attempt in (
            lambda: IndexManifest.load(idx),
            lambda: PassageIndex.open(idx),
            lambda: build_repository(
                rag_bart_art, idx, tmp_path / "repo", RepoOptions(link=True, overwrite=True)
            ),
        ):
            with pytest.raises(ArtifactError, match="inside"):
                attempt()
    assert (outside / ".bashrc").read_text() == "original"
    assert not (tmp_path / "repo").exists()


def test_absolute_key_is_not_copied_into_the_repository(rag_bart_art, rag_bart_index, tmp_path):
    from ragrt.triton_models.repository import build_repository

    secret = tmp_path / "hostname"
    secret.write_text("secret-host\n")
    idx = _index_copy(rag_bart_index, tmp_path / "idx")
    _edit(idx / "manifest.json", lambda d: d["files"].update({str(secret): _record(secret)}))
    with pytest.raises(ArtifactError, match="absolute path"):
        build_repository(rag_bart_art, idx, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_engine_does_not_open_a_tokenizer_outside_the_artifacts(
    rag_bart_art, rag_bart_index, tmp_path
):
    from ragrt.engine import RagEngine
    from ragrt.runtime import manifest

    art = tmp_path / "art"
    shutil.copytree(rag_bart_art, art)
    tok = tmp_path / "outside_tok.json"
    shutil.copy(art / "generator" / "tokenizer.json", tok)

    def tamper(d):
        d["generator"]["tokenizer"] = "../outside_tok.json"
        d["files"]["../outside_tok.json"] = _record(tok)  # whoever edits it writes the hash

    _edit(art / "manifest.json", tamper)
    with pytest.raises(ArtifactError, match=r"generator|outside_tok.*'\.\.'"):
        manifest.load(art, verify=False)
    with pytest.raises(ArtifactError, match="outside_tok"):
        RagEngine.load(art, rag_bart_index)


def test_error_for_an_absolute_key_does_not_leak_the_file_size(rag_bart_art, tmp_path):
    from ragrt.runtime import manifest

    secret = tmp_path / "shadow"
    secret.write_bytes(b"x" * 12345)
    art = tmp_path / "art"
    shutil.copytree(rag_bart_art, art)
    _edit(
        art / "manifest.json",
        lambda d: d["files"].update({str(secret): {"sha256": "0" * 64, "bytes": 1}}),
    )
    with pytest.raises(ArtifactError) as e:
        manifest.load(art)
    assert "absolute path" in str(e.value) and "12345" not in str(e.value)


# -- issue 11 item 14: wrongly typed manifest values -------------------------------------------
ART_CASES = [
    (lambda d: d.update(question_encoder=[1, 2]), r"question_encoder must be an object"),
    (lambda d: d["files"].update({"x": 5}), r"files.x must be an object"),
    (lambda d: d.pop("precisions"), r"precisions is missing"),
    (lambda d: d["question_encoder"].update(dim="32x"), r"question_encoder.dim must be an integer"),
    (lambda d: d.update(format_version="x"), r"format_version must be an integer"),
    (lambda d: d["generator"]["onnx"].update(fp32="x"), r"generator.onnx.fp32 must be an object"),
    (lambda d: d["generation"].update(length_penalty="2.0"), r"generation.length_penalty"),
    (lambda d: d.update(precisions=["fp32", "bf16"]), r"precisions lists 'bf16'"),
    (lambda d: d["generator"]["onnx"].pop("fp16"), r"generator.onnx has no 'fp16' entry"),
    (lambda d: d["files"].update({"x": {"sha256": "ab", "bytes": 1}}), r"64 hex digits"),
    (lambda d: d["question_encoder"].pop("tokenizer"), r"question_encoder.tokenizer is missing"),
]


@pytest.mark.parametrize("case", range(len(ART_CASES)))
def test_mistyped_artifact_manifest(rag_bart_art, tmp_path, capsys, case):
    from ragrt.cli import main
    from ragrt.runtime import manifest

    tamper, needle = ART_CASES[case]
    art = tmp_path / "art"
    shutil.copytree(rag_bart_art, art)
    _edit(art / "manifest.json", tamper)
    with pytest.raises(ArtifactError, match=needle) as e:
        manifest.load(art)
    assert "`ragrt export`" in str(e.value)  # the fix
    # the CLI: one line, exit 2, no traceback
    assert main(["ask", "--model", str(art), "--index", str(tmp_path), "q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "manifest.json" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    from ragrt.retrieval.build import BuildOptions, build_index

    root = tmp_path_factory.mktemp("small_index")
    p, e, _ = write_corpus(root / "corpus", 300, 16)
    build_index(p, root / "idx", embeddings=e, options=BuildOptions(progress=False))
    return root / "idx"


@pytest.mark.parametrize(
    "tamper,needle",
    [
        (lambda d: d.update(dimension="32x"), "dimension must be an integer"),
        (lambda d: d.update(nprobe=0), "nprobe must be >= 1"),
        (lambda d: d["files"].update({"index.faiss": 7}), r"files\['index.faiss'\] must be"),
        (lambda d: d.update(embedding_model=[]), "embedding_model must be an object"),
        (lambda d: d.update(format_version="x"), "format_version must be an integer"),
        (lambda d: d.update(scores="maybe"), "scores must be one of"),
    ],
)
def test_mistyped_index_manifest(small_index, tmp_path, capsys, tamper, needle):
    from ragrt.cli import main
    from ragrt.retrieval.index import PassageIndex

    idx = tmp_path / "idx"
    shutil.copytree(small_index, idx)
    _edit(idx / "manifest.json", tamper)
    with pytest.raises(ArtifactError, match=needle):
        PassageIndex.open(idx)
    assert main(["index", "info", str(idx)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "manifest.json" in err and "Traceback" not in err


# -- issue 11 item 3: the repository's code is hash-checked ----------------------------------
def test_triton_check_verifies_model_code_and_configs(rag_bart_art, rag_bart_index, tmp_path):
    from ragrt.cli import main
    from ragrt.triton_models.repository import RepoOptions, build_repository, verify_repository

    repo = tmp_path / "repo"
    build_repository(rag_bart_art, rag_bart_index, repo, RepoOptions(models=["rag", "retrieve"]))
    rec = json.loads((repo / "rag" / "artifacts" / "ragrt_repo.json").read_text())
    assert set(rec["code"]) == {
        "rag/config.pbtxt",
        "rag/1/model.py",
        "retrieve/config.pbtxt",
        "retrieve/1/model.py",
    }
    assert main(["triton", "check", str(repo)]) == 0
    model_py = repo / "retrieve" / "1" / "model.py"
    original = model_py.read_text()
    model_py.write_text(original + "\nimport os\nos.system('touch /tmp/pwned')\n")
    with pytest.raises(ArtifactError, match="retrieve/1/model.py is corrupt"):
        verify_repository(repo)
    assert main(["triton", "check", str(repo), "--no-hash"]) == 2  # code is hashed regardless
    # a matching hash in the record does not help: the code must be this ragrt's own
    _edit(
        repo / "rag" / "artifacts" / "ragrt_repo.json",
        lambda d: d["code"].update({"retrieve/1/model.py": _record(model_py)}),
    )
    with pytest.raises(ArtifactError, match="differs from the model code of this ragrt"):
        verify_repository(repo)
    model_py.write_text(original)
    _edit(
        repo / "rag" / "artifacts" / "ragrt_repo.json",
        lambda d: d["code"].update({"retrieve/1/model.py": _record(model_py)}),
    )
    verify_repository(repo)
    cfg = repo / "rag" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 8", "max_batch_size: 7"))
    with pytest.raises(ArtifactError, match="rag/config.pbtxt is corrupt"):
        verify_repository(repo)
    shutil.copytree(repo / "rag" / "1", repo / "rag" / "2")  # code that build-repo did not write
    _edit(
        repo / "rag" / "artifacts" / "ragrt_repo.json",
        lambda d: d["code"].update({"rag/config.pbtxt": _record(cfg)}),
    )
    with pytest.raises(ArtifactError, match="did not write: rag/2/model.py"):
        verify_repository(repo)


# -- issue 11 item 7: staging directories of killed runs -------------------------------------
def _run_killed(code: str) -> None:
    """Run ``code`` in a fresh interpreter that SIGKILLs itself where the code says ``die()``."""
    prelude = "import os, signal\ndef die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    r = subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_killed_build_repo_leaves_nothing_servable(rag_bart_art, rag_bart_index, tmp_path, capsys):
    from ragrt.cli import main
    from ragrt.triton_models.repository import RepoOptions, build_repository, check_repository

    out = tmp_path / "repo"
    _run_killed(
        "import ragrt.triton_models.repository as r\n"
        # after every file is written, before the rename (check_repository: ragrt <= 0.1.0)
        "r.check_models = r.check_repository = die\n"
        f"r.build_repository({str(rag_bart_art)!r}, {str(rag_bart_index)!r}, {str(out)!r},"
        " r.RepoOptions(models=['question_encoder']))\n"
    )
    left = [p for p in tmp_path.iterdir() if p.name != "repo"]
    assert len(left) == 1 and not out.exists()
    staging = left[0]
    assert (staging / "question_encoder" / "config.pbtxt").is_file()  # it looks like a repo
    with pytest.raises(InputError, match="unfinished staging directory.*no longer running"):
        check_repository(staging)
    assert main(["triton", "check", str(staging)]) == 2
    assert main(["serve", str(staging)]) == 2
    assert "unfinished staging directory" in capsys.readouterr().err
    # the next run cleans it up
    build_repository(rag_bart_art, rag_bart_index, out, RepoOptions(models=["question_encoder"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_killed_index_build_is_cleaned_by_the_next(tmp_path):
    from ragrt.retrieval.build import BuildOptions, build_index

    p, e, _ = write_corpus(tmp_path / "corpus", 400, 16)
    out = tmp_path / "out" / "idx"
    _run_killed(
        "import ragrt.retrieval.build as b\n"
        "b.calibrate_nprobe = die\n"
        f"b.build_index({str(p)!r}, {str(out)!r}, embeddings={str(e)!r},"
        " options=b.BuildOptions(factory='IVF8,Flat', progress=False))\n"
    )
    left = os.listdir(out.parent)
    assert len(left) == 1 and left[0].startswith(".idx.")
    build_index(p, out, embeddings=e, options=BuildOptions(progress=False))
    assert os.listdir(out.parent) == ["idx"]


def test_staging_dir_publishes_or_cleans(tmp_path):
    out = tmp_path / "o"
    with staging_dir(out, KIND, overwrite=False) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".o.ragrt-staging-")
        assert artifacts.staging_info(tmp)["pid"] == os.getpid()
        (tmp / "manifest.json").write_text(json.dumps({"format": "test-kind"}))
    assert sorted(os.listdir(out)) == ["manifest.json"]  # the marker is gone
    assert artifacts.staging_info(out) is None
    with pytest.raises(KeyboardInterrupt), staging_dir(tmp_path / "p", KIND, overwrite=False):
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_stale_dirs_of_dead_processes_are_cleaned(tmp_path):
    dead = _dead_pid()
    out = tmp_path / "o"
    stale = tmp_path / f".o.ragrt-staging-{dead}-abc"
    stale.mkdir()
    (stale / "f").write_text("x")
    live = tmp_path / f".o.ragrt-staging-{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / f".other.ragrt-staging-{dead}-abc"
    other.mkdir()
    # a replacement killed between moving the old output aside and renaming the new one in
    old = tmp_path / f".o.ragrt-old-{dead}"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": "test-kind"}))
    done = artifacts.clean_stale(out)
    assert set(done) == {stale, old}
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "o"])
    assert (out / "manifest.json").is_file()  # the old output is back


# -- issue 11 item 13: --overwrite replaces only ragrt's own outputs --------------------------
def test_overwrite_refuses_foreign_directories(tmp_path):
    from ragrt.retrieval.build import BuildOptions, build_index

    p, e, _ = write_corpus(tmp_path / "corpus", 300, 16)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    opts = BuildOptions(progress=False, overwrite=True)
    with pytest.raises(InputError, match="is not a ragrt index.*remove it yourself"):
        build_index(p, mine, embeddings=e, options=opts)
    assert (mine / "thesis.tex").read_text() == "years of work"
    # an index of ragrt is replaced; a model directory is not an index
    idx = tmp_path / "idx"
    build_index(p, idx, embeddings=e, options=BuildOptions(progress=False))
    build_index(p, idx, embeddings=e, options=opts)
    assert sorted(os.listdir(tmp_path)) == ["corpus", "idx", "mine"]
    art_like = tmp_path / "art"
    art_like.mkdir()
    (art_like / "manifest.json").write_text(json.dumps({"format": "ragrt-artifacts"}))
    with pytest.raises(InputError, match="not a ragrt index"):
        build_index(p, art_like, embeddings=e, options=opts)
    # an empty directory is fine without --overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    build_index(p, empty, embeddings=e, options=BuildOptions(progress=False))
    assert (empty / "manifest.json").is_file()


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path, monkeypatch):
    import ragrt.retrieval.build as ib
    from ragrt.retrieval.index import PassageIndex

    p, e, _ = write_corpus(tmp_path / "corpus", 300, 16)
    idx = tmp_path / "idx"
    ib.build_index(p, idx, embeddings=e, options=ib.BuildOptions(progress=False))
    before = (idx / "manifest.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("crash mid-build")

    monkeypatch.setattr(ib, "_check_finite", boom)
    with pytest.raises(RuntimeError):
        ib.build_index(
            p, idx, embeddings=e, options=ib.BuildOptions(progress=False, overwrite=True)
        )
    assert (idx / "manifest.json").read_text() == before
    assert len(PassageIndex.open(idx)) == 300
    assert sorted(os.listdir(tmp_path)) == ["corpus", "idx"]


def test_build_repo_and_export_refuse_foreign_directories(rag_bart_art, rag_bart_index, tmp_path):
    from ragrt.cli import main
    from ragrt.triton_models.repository import RepoOptions, build_repository

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not a ragrt Triton model repository"):
        build_repository(rag_bart_art, rag_bart_index, mine, RepoOptions(overwrite=True))
    assert main(["export", str(tmp_path), "--out", str(mine), "--overwrite"]) == 2
    assert (mine / "notes.txt").read_text() == "keep"


def test_remove_output_only_removes_its_kind(tmp_path):
    from ragrt.runtime.manifest import KIND as ART_KIND

    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({"format": "ragrt-artifacts"}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("x")
    with pytest.raises(InputError, match="not a ragrt artifact directory"):
        artifacts.remove_output(other, ART_KIND)
    assert artifacts.remove_output(art, ART_KIND) and not art.exists()
    assert not artifacts.remove_output(art, ART_KIND)
    assert other.exists()


def test_from_json_types(tmp_path):
    from ragrt.runtime.manifest import GenerationDefaults

    g = artifacts.from_json(
        GenerationDefaults,
        {"decoder_start_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "length_penalty": 1},
        where="m",
        fix="f",
    )
    assert g.length_penalty == 1.0 and isinstance(g.length_penalty, float)
    with pytest.raises(ArtifactError, match="early_stopping must be true or false or a string"):
        artifacts.from_json(
            GenerationDefaults,
            {
                "decoder_start_token_id": 2,
                "eos_token_id": 2,
                "pad_token_id": 1,
                "early_stopping": 3,
            },
            where="m",
            fix="f",
        )
    with pytest.raises(ArtifactError, match="eos_token_id must be an integer, got true"):
        artifacts.from_json(
            GenerationDefaults,
            {"decoder_start_token_id": 2, "eos_token_id": True, "pad_token_id": 1},
            where="m",
            fix="f",
        )
    assert np.isfinite(g.length_penalty)


def test_outputs_under_a_file_or_unwritable(rag_bart_art, rag_bart_index, tmp_path):
    from ragrt.retrieval.build import BuildOptions, build_index
    from ragrt.triton_models.repository import build_repository

    p, e, _ = write_corpus(tmp_path / "corpus", 300, 16)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is not a directory"):
        build_index(p, blocker / "idx", embeddings=e, options=BuildOptions(progress=False))
    with pytest.raises(InputError, match="is not a directory"):
        build_repository(rag_bart_art, rag_bart_index, blocker / "sub" / "repo")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(InputError, match="not writable"):
                build_index(p, locked / "idx", embeddings=e, options=BuildOptions(progress=False))
        finally:
            locked.chmod(0o700)
    assert blocker.read_text() == "x"
