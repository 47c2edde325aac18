"""``ragrt export``: checkpoint folders -> ART_DIR (ONNX per component and precision,
tokenizers, manifest.json, parity.json).

Everything is written into a staging directory next to the output and renamed into place at the
end (:func:`ragrt.artifacts.staging_dir`), so an interrupted or failed export never leaves an
ART_DIR that looks valid; ``--overwrite`` replaces only an existing ART_DIR.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragrt import __version__
from ragrt.artifacts import STAGING_MARKER, check_output, staging_dir
from ragrt.errors import InputError, RagrtError
from ragrt.export import onnx_export, parity, precision
from ragrt.export.sources import EncoderSource, Sources, load_sources
from ragrt.runtime.manifest import (
    KIND,
    PRECISIONS,
    ArtifactManifest,
    EncoderSpec,
    GeneratorSpec,
    check_precision,
    file_record,
)

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    out: Path
    rag_dir: Path | None = None
    question_encoder: Path | None = None
    generator: Path | None = None
    context_encoder: Path | None = None
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    pooling: str | None = None
    normalize: bool | None = None
    parity: bool = True
    progress: bool = True
    overwrite: bool = False


@dataclass
class ExportResult:
    art_dir: Path
    manifest: ArtifactManifest
    parity: parity.ParityReport | None


def _save_tokenizer(tok, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(dst))


def _encoder_spec(src: EncoderSource, comp: str) -> EncoderSpec:
    return EncoderSpec(
        name=src.name,
        family=src.family,
        pooling=src.pooling,
        normalize=src.normalize,
        dim=src.dim,
        max_length=src.max_length,
        tokenizer=f"{comp}/tokenizer.json",
        input_names=list(src.input_names),
        pad_token_id=int(src.tokenizer.pad_token_id or 0),
        clean_up_tokenization_spaces=bool(
            getattr(src.tokenizer, "clean_up_tokenization_spaces", False)
        ),
    )


def _generator_spec(src: Sources) -> GeneratorSpec:
    g = src.generator
    cfg = g.model.config
    if g.family == "bart":
        layers = (cfg.encoder_layers, cfg.decoder_layers)
        heads, d = cfg.decoder_attention_heads, cfg.d_model
        head_dim, max_pos = d // heads, cfg.max_position_embeddings
    else:
        layers = (cfg.num_layers, cfg.num_decoder_layers)
        heads, d, head_dim, max_pos = cfg.num_heads, cfg.d_model, cfg.d_kv, 0
    return GeneratorSpec(
        name=g.name,
        family=g.family,
        model_type=g.model_type,
        vocab_size=int(cfg.vocab_size),
        d_model=int(d),
        encoder_layers=int(layers[0]),
        decoder_layers=int(layers[1]),
        num_heads=int(heads),
        head_dim=int(head_dim),
        max_positions=int(max_pos),
        tokenizer="generator/tokenizer.json",
        clean_up_tokenization_spaces=bool(
            getattr(g.tokenizer, "clean_up_tokenization_spaces", False)
        ),
    )


def export_artifacts(opts: ExportOptions) -> ExportResult:
    """Export a RAG model (checkpoint or separate folders) into ``opts.out``."""
    precisions = list(dict.fromkeys(check_precision(p) for p in opts.precisions))
    if not precisions:
        raise InputError(
            f"no precision selected: pass --precision with one of {', '.join(PRECISIONS)}"
        )
    out = Path(opts.out)
    check_output(out, KIND, overwrite=opts.overwrite)
    src = load_sources(
        opts.rag_dir,
        opts.question_encoder,
        opts.generator,
        opts.context_encoder,
        opts.pooling,
        opts.normalize,
    )
    with staging_dir(out, KIND, overwrite=opts.overwrite) as tmp:
        result = _export_into(tmp, src, precisions, opts)
    result.manifest.root = out
    result.art_dir = out
    return result


def _export_into(
    root: Path, src: Sources, precisions: list[str], opts: ExportOptions
) -> ExportResult:
    """Every graph, tokenizer and the parity report into ``root`` (a staging directory), the
    manifest last: a directory without one is not an artifact."""
    from tqdm.auto import tqdm

    encoders = {"question_encoder": src.question_encoder}
    if src.context_encoder is not None:
        encoders["context_encoder"] = src.context_encoder
    n_steps = (len(encoders) + 1) * len(precisions) + (1 if opts.parity else 0)
    bar = tqdm(total=n_steps, desc="export", unit="step", disable=not opts.progress)
    try:
        specs = {
            comp: _export_encoder(root, comp, esrc, precisions, bar)
            for comp, esrc in encoders.items()
        }
        gspec, gfp32 = _export_generator(root, src, precisions, bar)
        report = None
        if opts.parity:
            bar.set_postfix_str("parity vs PyTorch")
            report = _parity(root, src, encoders, specs, gspec, gfp32, precisions)
            bar.update(1)
        if "fp32" not in precisions:  # fp32 was the source of the other variants only
            for comp in [*encoders, "generator"]:
                shutil.rmtree(root / comp / "fp32")
    finally:
        bar.close()

    if report is not None:
        report.write(root / "parity.json")
        fp32_fail = report.failures("fp32")
        if fp32_fail:
            raise RagrtError(parity.fp32_failure_message(fp32_fail))
    manifest = ArtifactManifest(
        ragrt_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        source=src.description,
        question_encoder=specs["question_encoder"],
        context_encoder=specs.get("context_encoder"),
        generator=gspec,
        generation=src.generation,
        precisions=precisions,
        files=_file_records(root),
        root=root,
    )
    manifest.write(root)
    return ExportResult(root, manifest, report)


def _export_encoder(
    root: Path, comp: str, esrc: Any, precisions: list[str], bar: Any
) -> EncoderSpec:
    """One encoder: its tokenizer, the fp32 graph, and each other precision converted from it
    (fp32 is always exported: it is the source of the others and of the parity check)."""
    spec = _encoder_spec(esrc, comp)
    _save_tokenizer(esrc.tokenizer, root / spec.tokenizer)
    bar.set_postfix_str(f"{comp} fp32")
    fp32 = onnx_export.export_encoder(esrc, root / comp / "fp32" / "model.onnx")
    for p in precisions:
        if p != "fp32":
            bar.set_postfix_str(f"{comp} {p}")
            precision.CONVERTERS[p](fp32, root / comp / p / "model.onnx")
        spec.onnx[p] = f"{comp}/{p}/model.onnx"
        bar.update(1)
    return spec


def _export_generator(
    root: Path, src: Sources, precisions: list[str], bar: Any
) -> tuple[GeneratorSpec, dict[str, Path]]:
    """The generator's graphs (encoder, decoder, decoder with past) in every precision; returns
    its spec and the fp32 graph paths by role."""
    gspec = _generator_spec(src)
    _save_tokenizer(src.generator.tokenizer, root / gspec.tokenizer)
    bar.set_postfix_str("generator fp32")
    gfp32 = onnx_export.export_generator(src.generator, root / "generator" / "fp32")
    for p in precisions:
        if p != "fp32":
            for role, path in gfp32.items():
                bar.set_postfix_str(f"generator {role} {p}")
                precision.CONVERTERS[p](path, root / "generator" / p / path.name)
        gspec.onnx[p] = {role: f"generator/{p}/{path.name}" for role, path in gfp32.items()}
        bar.update(1)
    return gspec, gfp32


def _parity(
    root: Path,
    src: Sources,
    encoders: dict[str, Any],
    specs: dict[str, EncoderSpec],
    gspec: GeneratorSpec,
    gfp32: dict[str, Path],
    precisions: list[str],
) -> parity.ParityReport:
    """Every exported graph against PyTorch on the same inputs (``parity.json``)."""
    report = parity.ParityReport()
    for comp, esrc in encoders.items():
        paths = {"fp32": root / comp / "fp32" / "model.onnx"}  # exported even when not kept
        paths.update({p: root / specs[comp].onnx[p] for p in precisions if p != "fp32"})
        report.rows += parity.encoder_parity(esrc, comp, paths)
    gpaths: dict[str, Any] = {"fp32": gfp32}
    gpaths.update(
        {p: {r: root / rel for r, rel in gspec.onnx[p].items()} for p in precisions if p != "fp32"}
    )
    g = src.generation
    report.rows += parity.generator_parity(
        src.generator, g.decoder_start_token_id, g.eos_token_id, g.pad_token_id, gpaths
    )
    return report


def _file_records(root: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in ("parity.json", STAGING_MARKER):
            rel = p.relative_to(root).as_posix()
            files[rel] = file_record(root, rel)
    return files


def quiet_build_logs() -> None:
    """Silence what an export prints that is not the user's business: ONNX Runtime's
    quantization loggers (its root-logger advice is silenced where ragrt quantizes,
    :func:`ragrt.export.precision.to_int8`) and deprecation chatter from the export libraries.
    ragrt's own warnings stay visible."""
    for name in ("onnxruntime", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|optimum)")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - the export extra is checked by the caller
        pass
