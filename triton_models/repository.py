"""Build a Triton model repository for a ragrt model + passage index.

The configs come from :mod:`ragrt.triton_models.configs` (protobuf messages, never string
templates), the options from :mod:`ragrt.triton_models.options`. The model code is the
checked-in ``triton_models/<name>/1/model.py`` (thin files importing
:mod:`ragrt.triton_models.backend`); the artifacts are copied (or hard-linked) into the
repository and checked against the sha256 their manifests record. Every file name taken from a
manifest is checked to stay inside its directory (:func:`ragrt.artifacts.safe_path`), and the
repository is written in a staging directory published only when complete
(:func:`ragrt.artifacts.staging_dir`). ``ragrt_repo.json`` records the sha256 of every file,
code and configs included, for :func:`ragrt.triton_models.verify.verify_repository`.

Layout (python flavor)::

    REPO/
      rag/config.pbtxt  rag/1/model.py           engine in-process: QUESTION -> ANSWER, docs
      rag/artifacts/model/...                    ART_DIR files of the chosen precision
      rag/artifacts/index/...                    INDEX_DIR (index-0, index-1, ... for shards)
      rag/artifacts/ragrt_repo.json              what was built from what, with sha256
      rag_stream/  config.pbtxt 1/model.py       decoupled: one response per text piece
      retrieve/    config.pbtxt 1/model.py       QUESTION -> DOC_IDS, DOC_SCORES, ...
      question_encoder/ config.pbtxt 1/model.py  QUESTION -> EMBEDDINGS

Triton treats every top-level folder as a model, so the artifacts live inside the first model's
folder (a non-numeric sub-folder, which Triton ignores) and the other models point at it with a
relative path: the repository can be moved or mounted into a container as a whole.

The native flavor serves the question encoder through Triton's ONNX Runtime backend
(``platform: "onnxruntime_onnx"``: dynamic batching, instance groups, optional TensorRT
accelerator on GPU) behind an ensemble ``question_encoder`` = ``question_tokenizer`` (python) ->
``question_encoder_onnx``, so clients send text either way. ``rag``, ``rag_stream`` and
``retrieve`` stay Python-backend models: the decode loop runs inside one model.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragrt import __version__
from ragrt.artifacts import MANIFEST_NAME, check_output, safe_path, sha256_file, staging_dir
from ragrt.errors import ArtifactError, InputError
from ragrt.triton_models.configs import (
    ARTIFACTS,
    CONFIG_NAME,
    config_to_text,
    describe,
    generator_encoder_config,
    model_configs,
    native_encoder_configs,
    parse_config,
    question_encoder_config,
    rag_config,
    rag_stream_config,
    read_config,
    retrieve_config,
    write_config,
)
from ragrt.triton_models.options import (
    DEVICES,
    FLAVORS,
    MAX_BATCH_LIMIT,
    MODELS,
    NATIVE_ENCODER,
    NATIVE_GENERATOR_ENCODER,
    NATIVE_TOKENIZER,
    PYTHON_MODELS,
    RepoOptions,
)
from ragrt.triton_models.verify import (
    KIND,
    REPO_FORMAT,
    REPO_FORMAT_VERSION,
    REPO_MANIFEST,
    check_models,
    check_repository,
    check_servable,
    record_code,
    shipped_model_code,
    verify_repository,
)

log = logging.getLogger(__name__)

__all__ = [
    "ARTIFACTS",
    "CONFIG_NAME",
    "DEVICES",
    "FLAVORS",
    "KIND",
    "MAX_BATCH_LIMIT",
    "MODELS",
    "NATIVE_ENCODER",
    "NATIVE_GENERATOR_ENCODER",
    "NATIVE_TOKENIZER",
    "PYTHON_MODELS",
    "REPO_MANIFEST",
    "RepoOptions",
    "RepoSummary",
    "build_repository",
    "check_repository",
    "check_servable",
    "config_to_text",
    "describe",
    "generator_encoder_config",
    "model_configs",
    "native_encoder_configs",
    "parse_config",
    "question_encoder_config",
    "rag_config",
    "rag_stream_config",
    "read_config",
    "repository_models",
    "retrieve_config",
    "verify_repository",
    "write_config",
]


@dataclass
class RepoSummary:
    """What :func:`build_repository` wrote."""

    repo: Path
    models: list[str]
    files: dict[str, dict[str, Any]]
    options: dict[str, Any]

    @property
    def total_bytes(self) -> int:
        return sum(int(r["bytes"]) for r in self.files.values())


@dataclass
class _Sources:
    """The checked inputs of a build: the artifact manifest and the index manifests."""

    art: Path
    manifest: Any  # ArtifactManifest
    indexes: list[tuple[Path, Any]]  # (INDEX_DIR, IndexManifest)


def build_repository(
    model_dir: str | os.PathLike,
    index_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options: RepoOptions | None = None,
) -> RepoSummary:
    """Write a ready Triton model repository to ``out`` (see the module docstring).

    Checks before writing anything: the options, the artifact manifest (and that it has the
    precision), the index manifests, that the index was built for this question encoder, and
    that ``out`` is new (or, with ``overwrite``, a repository ``build-repo`` wrote). The
    repository is written next to ``out`` and renamed into place when complete.
    """
    opts = (options or RepoOptions()).validate()
    dirs = [index_dirs] if isinstance(index_dirs, (str, os.PathLike)) else list(index_dirs)
    if any(m in opts.models for m in ("rag", "rag_stream", "retrieve")) and not dirs:
        raise InputError("pass --index INDEX_DIR (rag, rag_stream and retrieve search it)")
    target = Path(out)
    check_output(target, KIND, overwrite=opts.overwrite)
    src = _load_sources(Path(model_dir), dirs, opts.precision)
    q = src.manifest.question_encoder
    configs = model_configs(
        opts,
        dim=q.dim,
        input_names=q.input_names,
        d_model=src.manifest.generator.d_model,
        n_shards=max(1, len(dirs)),
    )
    with staging_dir(target, KIND, overwrite=opts.overwrite) as tmp:
        placer = _Placer(tmp, opts.link)
        _place_artifacts(placer, src, opts, owner=opts.models[0], configs=configs)
        _write_models(tmp, configs)
        summary = RepoSummary(target, list(configs), placer.files, asdict(opts))
        _write_record(tmp, summary, src, owner=opts.models[0])
        check_models(tmp)
    return summary


def _load_sources(art: Path, dirs: list[Any], precision: str) -> _Sources:
    from ragrt.retrieval.index_manifest import IndexManifest, check_model_identity
    from ragrt.runtime import manifest as manifest_mod

    m = manifest_mod.load(art, verify=False, precision=precision)
    q = m.question_encoder
    q_shas = {m.files[p]["sha256"] for p in q.onnx.values() if p in m.files}
    indexes = []
    for d in dirs:
        im = IndexManifest.load(d)
        check_model_identity(im, name=q.name, dim=q.dim, sha256s=q_shas, where=d)
        indexes.append((Path(d), im))
    return _Sources(art, m, indexes)


class _Placer:
    """Copies (or hard-links) files into the repository being built, checking each copy
    against the sha256 and size its manifest records, and records what it placed."""

    def __init__(self, root: Path, link: bool):
        self.root, self.link = root, link
        self.files: dict[str, dict[str, Any]] = {}

    def place(self, src_root: Path, rel: str, dst_rel: str, rec: dict[str, Any] | None) -> None:
        """``src_root/rel`` -> ``REPO/dst_rel``; both names must stay inside their folders."""
        fix = "re-create it with the ragrt command that wrote it"
        src = safe_path(src_root, rel, where=src_root / MANIFEST_NAME, fix=fix)
        dst = safe_path(self.root, dst_rel, where="the repository layout", fix=fix)
        rec = rec or {}
        got = _copy_checked(src, dst, rec.get("sha256"), rec.get("bytes"), self.link)
        self.files[dst_rel] = {"sha256": got, "bytes": dst.stat().st_size}


def _copy_checked(src: Path, dst: Path, sha256: str | None, size: int | None, link: bool) -> str:
    """Copy (or hard-link) ``src`` to ``dst``; check the result's sha256; return it."""
    if not src.is_file():
        raise ArtifactError(
            f"{src} is missing: the directory is incomplete (re-export or rebuild it)"
        )
    if size is not None and src.stat().st_size != size:
        raise ArtifactError(
            f"{src} has {src.stat().st_size} bytes, its manifest says {size}: truncated or "
            "corrupt copy; re-copy or rebuild it"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    done = False
    if link:
        try:
            os.link(src, dst)
            done = True
        except OSError as e:
            log.info("cannot hard-link %s (%s): copying", src, e)
    if not done:
        shutil.copyfile(src, dst)
    got = sha256_file(dst)
    if sha256 is not None and got != sha256:
        raise ArtifactError(
            f"{src} does not match the sha256 in its manifest ({got[:12]} != {sha256[:12]}): "
            "corrupt file; re-copy or rebuild it"
        )
    return got


def _place_artifacts(
    placer: _Placer, src: _Sources, opts: RepoOptions, *, owner: str, configs: dict[str, Any]
) -> None:
    m = src.manifest
    base = f"{owner}/{ARTIFACTS}"
    # the model: manifest + every file the runtime opens at this precision
    placer.place(src.art, MANIFEST_NAME, f"{base}/model/{MANIFEST_NAME}", None)
    for rel in m.component_files(opts.precision):
        placer.place(src.art, rel, f"{base}/model/{rel}", m.files.get(rel))
    # the index (or its shards)
    for i, (d, im) in enumerate(src.indexes):
        name = "index" if len(src.indexes) == 1 else f"index-{i}"
        placer.place(d, MANIFEST_NAME, f"{base}/{name}/{MANIFEST_NAME}", None)
        for rel, rec in im.files.items():
            placer.place(d, rel, f"{base}/{name}/{rel}", rec)
    # native ONNX models: the graph (+ external data) in the version folder
    if NATIVE_ENCODER in configs:
        _place_onnx(placer, src, m.question_encoder.onnx[opts.precision], NATIVE_ENCODER)
    if NATIVE_GENERATOR_ENCODER in configs:
        rel = m.generator.onnx[opts.precision]["encoder"]
        _place_onnx(placer, src, rel, NATIVE_GENERATOR_ENCODER)


def _place_onnx(placer: _Placer, src: _Sources, rel: str, model_name: str) -> None:
    """``<model>/1/model.onnx`` plus the graph's external-data files under their own names
    (an ONNX graph refers to its external data relative to itself)."""
    files = src.manifest.files
    placer.place(src.art, rel, f"{model_name}/1/model.onnx", files.get(rel))
    graph = Path(rel)
    for other, r in files.items():
        o = Path(other)
        if other == rel or o.parent != graph.parent or o.suffix == ".onnx":
            continue
        if o.name.startswith(graph.name) or o.name.endswith("_data"):
            placer.place(src.art, other, f"{model_name}/1/{o.name}", r)


def _write_models(root: Path, configs: dict[str, Any]) -> None:
    """Every model's ``config.pbtxt`` and, for Python-backend models, ``1/model.py``."""
    for name, c in configs.items():
        mdir = root / name
        mdir.mkdir(parents=True, exist_ok=True)
        write_config(mdir, c)
        if name in PYTHON_MODELS:
            code = shipped_model_code(name)
            if not code.is_file():
                raise ArtifactError(
                    f"ragrt is missing its Triton model code {name}/1/model.py: reinstall ragrt"
                )
            (mdir / "1").mkdir(parents=True, exist_ok=True)
            (mdir / "1" / "model.py").write_bytes(code.read_bytes())


def _write_record(root: Path, summary: RepoSummary, src: _Sources, *, owner: str) -> None:
    """``<owner>/artifacts/ragrt_repo.json``: sources, options, and the sha256 of every file."""
    adir = root / owner / ARTIFACTS
    adir.mkdir(parents=True, exist_ok=True)
    record = {
        "format": REPO_FORMAT,
        "format_version": REPO_FORMAT_VERSION,
        "ragrt_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "model": str(src.art.resolve()),
            "index": [str(d.resolve()) for d, _ in src.indexes],
        },
        "models": summary.models,
        "options": summary.options,
        "files": summary.files,
        "code": record_code(root),
    }
    (adir / REPO_MANIFEST).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def repository_models(repo: str | os.PathLike) -> list[str]:
    """Names of the models in ``repo`` (folders with a config.pbtxt)."""
    return sorted(p.parent.name for p in Path(repo).glob(f"*/{CONFIG_NAME}"))
