"""Checking a built Triton repository before it is served or after it was copied.

:func:`check_repository` parses every ``config.pbtxt`` and checks the model folders;
:func:`verify_repository` also checks every file against ``ragrt_repo.json``, which
``build-repo`` writes with the sha256 of every artifact *and* of every ``config.pbtxt`` and
``model.py`` (so an edited config or model code fails the check, not only a corrupt artifact),
and compares each ``model.py`` with the one this ragrt ships. :func:`check_servable` refuses a
staging directory that a killed ``build-repo`` left behind.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ragrt.artifacts import (
    ArtifactKind,
    check_file_records,
    file_record,
    refuse_staging_dir,
    verify_files,
)
from ragrt.errors import ArtifactError, InputError
from ragrt.triton_models.configs import ARTIFACTS, CONFIG_NAME, read_config

REPO_MANIFEST = "ragrt_repo.json"
REPO_FORMAT = "ragrt-triton-repo"
REPO_FORMAT_VERSION = 1
#: what a repository is: ``<owner model>/artifacts/ragrt_repo.json`` marks it
KIND = ArtifactKind(
    format=REPO_FORMAT,
    noun="ragrt Triton model repository",
    dir_label="model repository",
    make="ragrt triton build-repo",
    marker=f"*/{ARTIFACTS}/{REPO_MANIFEST}",
)
FIX = "rebuild the repository (`ragrt triton build-repo`) or re-copy it"


def check_servable(repo: str | os.PathLike) -> None:
    """Refuse (:class:`InputError`) a staging directory of ``build-repo``: it may be
    incomplete, and only a published repository is served or checked."""
    refuse_staging_dir(repo, "Triton model repository")


def code_files(root: Path) -> list[str]:
    """The repository's code and configuration, relative to ``root``: every model's
    ``config.pbtxt`` and the Python files in its version folders."""
    found = [*root.glob(f"*/{CONFIG_NAME}"), *root.glob("*/[0-9]*/*.py")]
    return sorted(p.relative_to(root).as_posix() for p in found if p.is_file())


def shipped_model_code(name: str) -> Any:
    """This ragrt's ``triton_models/<name>/1/model.py`` (a resources Traversable)."""
    return resources.files("ragrt.triton_models") / name / "1" / "model.py"


def check_repository(repo: str | os.PathLike) -> dict[str, Any]:
    """Parse every model's config in ``repo``; names must match their folders and every
    Python-backend model needs ``1/model.py``. Returns the configs by name."""
    root = Path(repo)
    if not root.is_dir():
        raise InputError(
            f"model repository {root} does not exist (build one with `ragrt triton build-repo`)"
        )
    check_servable(root)
    return check_models(root)


def check_models(root: Path) -> dict[str, Any]:
    """The model folders of ``root`` (also a repository being built): configs parse, names
    match folders, Python-backend models have ``1/model.py``, ONNX ones their graph."""
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        c = read_config(d)
        if c.name and c.name != d.name:
            raise ArtifactError(
                f"{d / CONFIG_NAME} names model {c.name!r}, but its folder is {d.name!r}"
            )
        if c.backend == "python" and not (d / "1" / "model.py").is_file():
            raise ArtifactError(f"{d}/1/model.py is missing: rebuild the repository")
        if (
            c.platform == "onnxruntime_onnx"
            and not (d / "1" / (c.default_model_filename or "model.onnx")).is_file()
        ):
            raise ArtifactError(f"{d}/1/model.onnx is missing: rebuild the repository")
        out[d.name] = c
    if not out:
        raise InputError(
            f"{root} holds no models (no */config.pbtxt): build it with `ragrt triton build-repo`"
        )
    return out


def read_record(path: Path, root: Path) -> dict[str, Any]:
    """``ragrt_repo.json``, checked: format, and ``files`` / ``code`` records with safe names."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); {FIX}") from None
    if not isinstance(data, dict) or data.get("format") != REPO_FORMAT:
        raise ArtifactError(f"{path} is not a ragrt repository record; {FIX}")
    if "code" not in data:
        raise ArtifactError(
            f"{path} records no hashes of the model code and configs (written by an older "
            "ragrt): rebuild the repository with `ragrt triton build-repo`"
        )
    for key in ("files", "code"):
        check_file_records(root, data.get(key), where=path, fix=FIX, field=key)
    return data


def verify_repository(repo: str | os.PathLike, *, hash_files: bool = True) -> dict[str, Any]:
    """Parse every config (:func:`check_repository`) and check every artifact file against the
    sha256 and size recorded in ``ragrt_repo.json`` (e.g. after copying the repository to a
    server); every ``config.pbtxt`` and ``model.py`` must be recorded and match (always
    hashed: they are small), and each ``model.py`` must be the one this ragrt ships. Returns
    the configs by name."""
    root = Path(repo)
    configs = check_repository(root)
    records = sorted(root.glob(KIND.marker))
    if not records:
        raise ArtifactError(
            f"{root} has no */{ARTIFACTS}/{REPO_MANIFEST}: not written by `ragrt triton build-repo`"
        )
    recorded_code: set[str] = set()
    for rec in records:
        data = read_record(rec, root)
        common = {"where": rec, "fix": FIX, "label": "repository file"}
        verify_files(root, data["files"], mode="full" if hash_files else "size", **common)
        verify_files(root, data["code"], mode="full", **common)
        recorded_code |= set(data["code"])
    unrecorded = [rel for rel in code_files(root) if rel not in recorded_code]
    if unrecorded:
        raise ArtifactError(
            f"{root} has model code or configs that build-repo did not write: "
            f"{', '.join(unrecorded)}; remove them or {FIX}"
        )
    for name in configs:
        _check_shipped_code(root, name)
    return configs


def _check_shipped_code(root: Path, name: str) -> None:
    p = root / name / "1" / "model.py"
    if not p.is_file():
        return
    shipped = shipped_model_code(name)
    if not shipped.is_file():
        raise ArtifactError(
            f"{p} has no counterpart in this ragrt (no model {name!r}): not a ragrt model; {FIX}"
        )
    if p.read_bytes() != shipped.read_bytes():
        raise ArtifactError(
            f"{p} differs from the model code of this ragrt (built by another version, or "
            f"edited); {FIX}"
        )


def record_code(root: Path) -> dict[str, dict[str, Any]]:
    """The ``code`` records of a repository being built: every config and model file."""
    return {rel: file_record(root, rel) for rel in code_files(root)}
