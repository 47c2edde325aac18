"""The index manifest: ``INDEX_DIR/manifest.json``, what an index is and what it was built with.

It records the format, dimension, metric, FAISS factory, passage count, the embedding model
(name + sha256 of its ONNX files, checked against the question encoder at query time), whether
doc scores are exact, the calibrated default nprobe, and every file's sha256 and size. Reading
goes through :mod:`ragrt.artifacts`: types checked field by field, file names kept inside the
directory.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragrt.artifacts import (
    MANIFEST_NAME,
    ArtifactKind,
    check_file_records,
    from_json,
    read_manifest,
    safe_path,
    verify_files,
)
from ragrt.errors import ArtifactError

log = logging.getLogger(__name__)

INDEX_FORMAT = "ragrt-index"
INDEX_FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
EMB_FILES = {"float16": "embeddings.f16", "float32": "embeddings.f32"}
METRIC = "inner_product"
SCORES = ("exact", "pq_approximate")
#: what an index directory is (its manifest, the command that writes it)
KIND = ArtifactKind(
    format=INDEX_FORMAT, noun="ragrt index", dir_label="index directory", make="ragrt index build"
)
FIX = "rebuild the index (`ragrt index build`)"


@dataclass
class IndexManifest:
    """Parsed ``INDEX_DIR/manifest.json``."""

    dimension: int
    metric: str
    factory: str
    passages: int
    embedding_model: dict[str, Any]
    scores: str  # "exact" | "pq_approximate"
    files: dict[str, dict[str, Any]]
    nprobe: int | None = None
    exact_embeddings: dict[str, Any] | None = None  # {"file", "dtype"}
    calibration: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    ragrt_version: str = ""
    created: str = ""
    format: str = INDEX_FORMAT
    format_version: int = INDEX_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, root: str | os.PathLike) -> Path:
        p = Path(root) / MANIFEST_NAME
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @property
    def exact_scores(self) -> bool:
        return self.scores == "exact"

    @classmethod
    def load(cls, root: str | os.PathLike) -> IndexManifest:
        """Read and check ``root/manifest.json`` (types, values, safe file names)."""
        base = Path(root)
        data = read_manifest(base, KIND, version=INDEX_FORMAT_VERSION)
        where = base / MANIFEST_NAME
        m = from_json(cls, data, where=where, fix=FIX)
        m.check(base)
        return m

    def check(self, root: Path) -> None:
        """What types cannot say: sizes and nprobe in range, known score kind, the exact
        embeddings' file and dtype, file records with names inside ``root``."""
        where = root / MANIFEST_NAME

        def bad(msg: str) -> ArtifactError:
            return ArtifactError(f"{where}: {msg}; {FIX}")

        if self.dimension <= 0 or self.passages < 0:
            raise bad("dimension must be positive and passages >= 0")
        if self.nprobe is not None and self.nprobe < 1:
            raise bad(f"nprobe must be >= 1, got {self.nprobe}")
        if self.scores not in SCORES:
            raise bad(f"scores must be one of {', '.join(SCORES)}, got {self.scores!r}")
        check_file_records(root, self.files, where=where, fix=FIX)
        qe = self.embedding_model.get("question_encoder")
        if qe is not None and not (isinstance(qe, dict) and isinstance(qe.get("sha256", {}), dict)):
            raise bad("embedding_model.question_encoder must be an object with name, dim, sha256")
        if self.exact_embeddings is not None:
            rel, dtype = self.exact_embeddings.get("file"), self.exact_embeddings.get("dtype")
            if dtype not in EMB_FILES:
                raise bad(f"exact_embeddings.dtype must be float16 or float32, got {dtype!r}")
            safe_path(root, rel, where=where, fix=FIX)

    def exact_embeddings_path(self, root: Path) -> Path:
        rel = (self.exact_embeddings or {})["file"]
        return safe_path(root, rel, where=root / MANIFEST_NAME, fix=FIX)

    def verify(self, root: Path, mode: str = "auto") -> None:
        """Files present with recorded sizes; sha256 too (``full``, or small files in ``auto``)."""
        verify_files(
            root,
            self.files,
            mode=mode,
            label="index file",
            where=Path(root) / MANIFEST_NAME,
            fix="re-copy or rebuild the index (`ragrt index build`)",
        )


def check_model_identity(
    m: IndexManifest, *, name: str, dim: int, sha256s: set[str], where: Any = "index"
) -> None:
    """The dimension must match; when the index recorded its encoder, name and sha256 too."""
    em = m.embedding_model or {}
    built = em.get("question_encoder") or {}
    built_name = built.get("name") or em.get("name") or "precomputed embeddings"
    if int(dim) != m.dimension:
        raise ArtifactError(
            f"index {where} holds {m.dimension}-d embeddings ({built_name}) but the question "
            f"encoder {name!r} outputs {dim}-d: use the model the index was built with, or "
            "rebuild the index with `ragrt index build --model ART_DIR`"
        )
    if not built:
        log.warning(
            "index %s was built from precomputed embeddings with no recorded model; "
            "only the dimension (%d) was checked",
            where,
            m.dimension,
        )
        return
    recorded = set((built.get("sha256") or {}).values())
    if built.get("name") != name or (sha256s and recorded and not (sha256s & recorded)):
        raise ArtifactError(
            f"index {where} was built for question encoder {built.get('name')!r} "
            f"(onnx sha256 {', '.join(sorted(x[:12] for x in recorded)) or '?'}) but the model "
            f"has {name!r} (sha256 {', '.join(sorted(x[:12] for x in sha256s)) or '?'}): another "
            "encoder; use the ART_DIR the index was built with or rebuild the index"
        )
