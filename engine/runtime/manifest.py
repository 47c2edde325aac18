"""The artifact manifest: the only contract between ``ragrt export`` and the runtime.

``ART_DIR/manifest.json`` records everything the engine needs to run a model without torch or
transformers: model families and dimensions, pooling, tokenizer files, special token ids,
generation defaults, and every ONNX file with its sha256. Loading verifies the files so that a
truncated copy or a half-finished export fails here, with a message, instead of deep inside
ONNX Runtime.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragrt.artifacts import (
    MANIFEST_NAME,
    ArtifactKind,
    check_file_records,
    check_paths,
    file_record,
    from_json,
    read_manifest,
    safe_path,
    sha256_file,
    verify_files,
)
from ragrt.errors import ArtifactError, InputError

FORMAT = "ragrt-artifacts"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
GENERATOR_GRAPHS = ("encoder", "decoder", "decoder_with_past")
#: what an artifact directory is (its manifest, the command that writes it)
KIND = ArtifactKind(
    format=FORMAT,
    noun="ragrt artifact directory",
    dir_label="artifact directory",
    make="ragrt export",
)
FIX = "re-run `ragrt export`"

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KIND",
    "MANIFEST_NAME",
    "PRECISIONS",
    "ArtifactManifest",
    "EncoderSpec",
    "GenerationDefaults",
    "GeneratorSpec",
    "check_precision",
    "file_record",
    "load",
    "sha256_file",
]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


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
        """Build from parsed JSON, checking every field's type, the precisions, and that every
        file name stays inside ``root`` (one :class:`ArtifactError` naming the field)."""
        where = Path(root) / MANIFEST_NAME
        if data.get("format") != FORMAT:
            raise ArtifactError(
                f"{where} is not a ragrt artifact manifest (format={data.get('format')!r}); {FIX}"
            )
        m = from_json(cls, data, where=where, fix=FIX, skip=("root",))
        m.root = Path(root)
        m._check(where)
        return m

    def _check(self, where: Path) -> None:
        """What types cannot say: known precisions with their ONNX files, positive sizes,
        file records, and safe file names."""

        def bad(msg: str) -> ArtifactError:
            return ArtifactError(f"{where}: {msg}; {FIX}")

        unknown = sorted(set(self.precisions) - set(PRECISIONS))
        if unknown:
            raise bad(f"precisions lists {unknown[0]!r}, not one of {', '.join(PRECISIONS)}")
        encoders = [("question_encoder", self.question_encoder)]
        if self.context_encoder is not None:
            encoders.append(("context_encoder", self.context_encoder))
        for name, spec in encoders:
            if spec.dim <= 0 or spec.max_length <= 0:
                raise bad(f"{name}.dim and {name}.max_length must be positive")
            unknown = sorted(set(spec.onnx) - set(PRECISIONS))
            if unknown:
                raise bad(f"{name}.onnx has unknown precision(s) {', '.join(unknown)}")
        for p in self.precisions:
            missing = self._missing_graphs(p)
            if missing:
                raise bad(missing)
        check_file_records(self.root, self.files, where=where, fix=FIX)
        check_paths(self.root, self.named_paths(), where=where, fix=FIX)

    def _missing_graphs(self, p: str) -> str | None:
        """What precision ``p`` lacks among the ONNX files the runtime opens, or None."""
        if p not in self.question_encoder.onnx:
            return f"question_encoder.onnx has no {p!r} entry, though precisions lists it"
        graphs = self.generator.onnx.get(p)
        if graphs is None:
            return f"generator.onnx has no {p!r} entry, though precisions lists it"
        missing = [g for g in GENERATOR_GRAPHS if g not in graphs]
        return f"generator.onnx.{p} lacks {', '.join(missing)}" if missing else None

    def named_paths(self) -> list[str]:
        """Every file name the manifest's specs name (tokenizers and ONNX graphs)."""
        rels = [self.question_encoder.tokenizer, self.generator.tokenizer]
        rels += list(self.question_encoder.onnx.values())
        if self.context_encoder is not None:
            rels += [self.context_encoder.tokenizer, *self.context_encoder.onnx.values()]
        for graphs in self.generator.onnx.values():
            rels += list(graphs.values())
        return rels

    # -- access --------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        """``root / rel``, refused unless ``rel`` stays inside the artifact directory."""
        return safe_path(self.root, rel, where=self.root / MANIFEST_NAME, fix=FIX)

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
        verify_files(
            self.root,
            self.files,
            mode="full" if hash_files else "size",
            only=rels,
            label="artifact file",
            where=self.root / MANIFEST_NAME,
            fix="re-copy or re-export it (`ragrt export`)",
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
    """Read and check ``ART_DIR/manifest.json`` (types, precisions, safe file names).

    With ``verify``, every file the runtime will open (all files, or only those of
    ``precision``) is checked for presence, size and sha256.
    """
    root = Path(art_dir)
    m = ArtifactManifest.from_dict(read_manifest(root, KIND, version=FORMAT_VERSION), root)
    if precision is not None:
        m.require_precision(precision)
    if verify:
        m.verify(m.component_files(precision) if precision else None)
    return m
