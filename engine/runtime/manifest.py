"""The artifact manifest: the only contract between ``ragrt export`` and the runtime.

``ART_DIR/manifest.json`` records everything the engine needs to run a model without torch or
transformers: model families and dimensions, pooling, tokenizer files, special token ids,
generation defaults, and every ONNX file with its sha256. Loading verifies the files so that a
truncated copy or a half-finished export fails here, with a message, instead of deep inside
ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ragrt.errors import ArtifactError, InputError

FORMAT = "ragrt-artifacts"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (ONNX files can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_record(root: Path, rel: str) -> dict[str, Any]:
    p = root / rel
    return {"sha256": sha256_file(p), "bytes": p.stat().st_size}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class EncoderSpec:
    """A text encoder (question or context): tokenizer + ONNX graph that outputs embeddings.

    Pooling is baked into the graph (the ONNX output ``embeddings`` is already pooled and, if
    ``normalize``, L2-normalised), so the runtime only tokenizes and runs one session.
    """

    name: str
    family: str  # dpr | bert | albert | ... (HF model_type)
    pooling: str  # pooler | cls | mean
    normalize: bool
    dim: int
    max_length: int
    tokenizer: str  # relative path of a `tokenizers` tokenizer.json
    input_names: list[str]
    pad_token_id: int = 0
    clean_up_tokenization_spaces: bool = True
    onnx: dict[str, str] = field(default_factory=dict)  # precision -> relative path


@dataclass
class GeneratorSpec:
    """A seq2seq generator (BART or T5 family) split into encoder / decoder / decoder-with-past."""

    name: str
    family: str  # bart | t5
    model_type: str  # bart | t5 | mt5 | ...
    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    num_heads: int
    head_dim: int
    max_positions: int
    tokenizer: str
    clean_up_tokenization_spaces: bool = True
    # precision -> {"encoder": path, "decoder": path, "decoder_with_past": path}
    onnx: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class GenerationDefaults:
    """Generation settings of the source checkpoint, with the reference's meaning.

    ``max_length``/``min_length`` count the decoder start token, as in transformers'
    ``RagTokenForGeneration.generate``; the runtime's ``max_new_tokens = max_length - 1``.
    """

    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    bos_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    max_length: int = 20
    min_length: int = 0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    n_docs: int = 5
    title_sep: str = " / "
    doc_sep: str = " // "
    prefix: str = ""
    max_combined_length: int = 300
    do_deduplication: bool = True
    exclude_bos_score: bool = True
    rag_type: str = "token"  # token | sequence (the class of the source checkpoint)


@dataclass
class ArtifactManifest:
    """Parsed ``manifest.json`` of an artifact directory (see :func:`load`)."""

    ragrt_version: str
    created: str
    source: dict[str, Any]
    question_encoder: EncoderSpec
    generator: GeneratorSpec
    generation: GenerationDefaults
    precisions: list[str]
    files: dict[str, dict[str, Any]]
    context_encoder: EncoderSpec | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    root: Path = field(default=Path("."), repr=False, compare=False)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        return d

    def write(self, root: str | os.PathLike) -> Path:
        path = Path(root) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path) -> ArtifactManifest:
        try:
            if data.get("format") != FORMAT:
                raise ArtifactError(
                    f"{root / MANIFEST_NAME} is not a ragrt artifact manifest "
                    f"(format={data.get('format')!r}); re-run `ragrt export`"
                )
            if int(data.get("format_version", -1)) > FORMAT_VERSION:
                raise ArtifactError(
                    f"{root} was written by a newer ragrt (format {data['format_version']}); "
                    "upgrade ragrt or re-export with this version"
                )
            ctx = data.get("context_encoder")
            return cls(
                ragrt_version=data["ragrt_version"],
                created=data["created"],
                source=data.get("source", {}),
                question_encoder=_from_dict(EncoderSpec, data["question_encoder"]),
                context_encoder=_from_dict(EncoderSpec, ctx) if ctx else None,
                generator=_from_dict(GeneratorSpec, data["generator"]),
                generation=_from_dict(GenerationDefaults, data["generation"]),
                precisions=list(data["precisions"]),
                files=dict(data["files"]),
                format=data["format"],
                format_version=int(data["format_version"]),
                root=root,
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ArtifactError):
                raise
            raise ArtifactError(
                f"{root / MANIFEST_NAME} is malformed ({type(e).__name__}: {e}); "
                "re-run `ragrt export`"
            ) from None

    # -- access --------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def encoder(self, component: str) -> EncoderSpec:
        if component == "question_encoder":
            return self.question_encoder
        if component == "context_encoder":
            if self.context_encoder is None:
                raise ArtifactError(
                    f"{self.root} has no context encoder: export it with "
                    "`ragrt export ... --context-encoder DIR` to embed passages, "
                    "or build the index from precomputed embeddings (--embeddings)"
                )
            return self.context_encoder
        raise InputError(f"unknown encoder component {component!r}")

    def require_precision(self, precision: str) -> None:
        check_precision(precision)
        if precision not in self.precisions:
            raise ArtifactError(
                f"{self.root} has no {precision} variant (it has {', '.join(self.precisions)}); "
                f"re-export with `ragrt export ... --precision {precision}`"
            )

    def verify(self, rels: list[str] | None = None, *, hash_files: bool = True) -> None:
        """Check that files exist with the recorded size (and sha256 unless ``hash_files``)."""
        for rel in rels if rels is not None else list(self.files):
            rec = self.files.get(rel)
            if rec is None:
                raise ArtifactError(f"{rel} is not listed in {self.root / MANIFEST_NAME}")
            p = self.root / rel
            if not p.is_file():
                raise ArtifactError(
                    f"missing artifact file {p}; the directory is incomplete - re-run `ragrt export`"
                )
            size = p.stat().st_size
            if size != rec["bytes"]:
                raise ArtifactError(
                    f"corrupt artifact file {p}: {size} bytes, manifest says {rec['bytes']} "
                    "(truncated copy?); re-copy or re-export it"
                )
            if hash_files and sha256_file(p) != rec["sha256"]:
                raise ArtifactError(
                    f"corrupt artifact file {p}: sha256 does not match the manifest; "
                    "re-copy or re-export it"
                )

    def component_files(self, precision: str) -> list[str]:
        """Relative paths a runtime at ``precision`` will open (plus external-data files)."""
        rels = [self.question_encoder.tokenizer, self.generator.tokenizer]
        rels.append(self.question_encoder.onnx[precision])
        if self.context_encoder is not None and precision in self.context_encoder.onnx:
            rels += [self.context_encoder.tokenizer, self.context_encoder.onnx[precision]]
        rels += list(self.generator.onnx[precision].values())
        extra = [
            r for r in self.files if any(r.startswith(x + ".") or r == x + "_data" for x in rels)
        ]
        return list(dict.fromkeys(rels + extra))


def load(
    art_dir: str | os.PathLike, *, verify: bool = True, precision: str | None = None
) -> ArtifactManifest:
    """Read and check ``ART_DIR/manifest.json``.

    With ``verify``, every file the runtime will open (all files, or only those of
    ``precision``) is checked for presence, size and sha256.
    """
    root = Path(art_dir)
    if not root.exists():
        raise ArtifactError(
            f"artifact directory {root} does not exist; create it with `ragrt export`"
        )
    if not root.is_dir():
        raise ArtifactError(
            f"{root} is not a directory; pass the ART_DIR written by `ragrt export`"
        )
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise ArtifactError(
            f"{root} has no {MANIFEST_NAME}: it is not a (complete) ragrt artifact directory; "
            "create it with `ragrt export`"
        )
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is not valid JSON ({e}); re-run `ragrt export`") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{mpath} is not a JSON object; re-run `ragrt export`")
    m = ArtifactManifest.from_dict(data, root)
    if precision is not None:
        m.require_precision(precision)
    if verify:
        m.verify(m.component_files(precision) if precision else None)
    return m
