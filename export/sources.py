"""Resolve what to export: a RAG checkpoint, or separate encoder/generator folders.

Everything model-specific that the runtime will need later (pooling, dimensions, special
token ids, generation defaults) is read here, from the Hugging Face configs, once.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragrt.errors import InputError, UnsupportedModelError
from ragrt.runtime.manifest import GenerationDefaults

GENERATOR_FAMILIES = {"bart": "bart", "mbart": "bart", "t5": "t5", "mt5": "t5"}
POOLINGS = ("pooler", "cls", "mean")
#: files of a Hugging Face model repository that export never reads (other frameworks/formats)
HUB_IGNORE = [
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.tflite",
    "*.onnx",
    "*.onnx_data",
    "onnx/*",
    "openvino/*",
    "coreml/*",
]
#: what a fast tokenizer is built from: tokenizer.json, or one of the slow vocabularies
TOKENIZER_FILES = (
    ("tokenizer.json",),  # any fast tokenizer
    ("vocab.txt",),  # WordPiece: BERT, DPR, MiniLM
    ("vocab.json", "merges.txt"),  # byte-level BPE: BART, RoBERTa
    ("spiece.model",),  # sentencepiece unigram: T5, mT5, ALBERT
    ("sentencepiece.bpe.model",),  # sentencepiece BPE: mBART, XLM-R
    ("tokenizer.model",),
)


@dataclass
class EncoderSource:
    """A loaded HF encoder plus how to pool it."""

    model: Any  # torch.nn.Module
    tokenizer: Any  # PreTrainedTokenizerFast
    name: str
    family: str
    pooling: str
    normalize: bool
    dim: int
    max_length: int
    input_names: list[str]


@dataclass
class GeneratorSource:
    model: Any  # *ForConditionalGeneration
    tokenizer: Any
    name: str
    family: str  # bart | t5
    model_type: str


@dataclass
class Sources:
    question_encoder: EncoderSource
    generator: GeneratorSource
    generation: GenerationDefaults
    context_encoder: EncoderSource | None = None
    description: dict[str, Any] = field(default_factory=dict)


def _read_config(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise InputError(f"{what} folder {path} does not exist; pass a Hugging Face model folder")
    if not path.is_dir():
        raise InputError(f"{what} {path} is not a folder; pass a Hugging Face model folder")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise UnsupportedModelError(
            f"{path} has no config.json: it is not a Hugging Face model folder "
            "(download it with `huggingface-cli download` or save it with save_pretrained)"
        )
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise UnsupportedModelError(f"{cfg} is not valid JSON: {e}") from None


def _is_hub_id(text: str) -> bool:
    """``name`` or ``org/name`` as the Hugging Face hub spells repository ids."""
    if text.startswith((".", "/", "~")) or text.endswith("/") or "\\" in text:
        return False
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # huggingface_hub comes with transformers (the export extra)
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_model(ref: str | os.PathLike, what: str) -> Path:
    """A local folder, else a Hugging Face hub id (``org/name``) resolved to a local snapshot.

    As ``optimum-cli`` and ``from_pretrained`` do, a local path wins. A hub id is looked up in
    the local Hugging Face cache first (``HF_HOME``; no network), then downloaded with
    ``huggingface_hub.snapshot_download`` (the whole repository except other frameworks'
    weights: sentence-transformers folders need their ``1_Pooling/`` etc.). Offline, or when
    the hub cannot be reached, the error says how to fetch it elsewhere.
    """
    path = Path(ref)
    text = str(ref)
    if path.exists() or not _is_hub_id(text):
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import (  # (.errors only since 0.24)
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(text, local_files_only=True, ignore_patterns=HUB_IGNORE))
    except LocalEntryNotFoundError:
        pass
    fetch = (
        f"download it where the hub is reachable with `huggingface-cli download {text} "
        f"--local-dir DIR` and pass DIR instead"
    )
    if constants.HF_HUB_OFFLINE:
        raise InputError(
            f"{what} {text!r} is neither a local folder nor in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set: {fetch}"
        ) from None
    try:
        return Path(snapshot_download(text, ignore_patterns=HUB_IGNORE))
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
        raise InputError(
            f"{what} {text!r} is neither a local folder nor a model on the Hugging Face hub "
            f"that this machine may read ({type(e).__name__}; private or gated models need "
            "`huggingface-cli login`)"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise InputError(
            f"{what} {text!r} is not a local folder, and the Hugging Face hub cannot be "
            f"reached ({type(e).__name__}): {fetch}"
        ) from None


def _tokenizer_problem(path: Path) -> str | None:
    """Why ``path`` cannot give a fast tokenizer (the files it lacks), or None."""
    have = {p.name for p in path.iterdir()} if path.is_dir() else set()
    if any(all(f in have for f in files) for files in TOKENIZER_FILES):
        return None
    for files in TOKENIZER_FILES:  # half a vocabulary: name the other half
        if any(f in have for f in files):
            lacking = " and ".join(f for f in files if f not in have)
            return f"{path} has {' + '.join(f for f in files if f in have)} but no {lacking}"
    return (
        f"{path} has no tokenizer files: a fast tokenizer needs tokenizer.json, or the "
        "vocabulary it is built from (vocab.txt for BERT/DPR, vocab.json + merges.txt for "
        "BART/RoBERTa, spiece.model for T5/ALBERT, sentencepiece.bpe.model for mBART/XLM-R)"
    )


def _check_tokenizer(path: Path, what: str) -> None:
    problem = _tokenizer_problem(path)
    if problem:
        raise UnsupportedModelError(
            f"cannot load the {what} tokenizer: {problem}; copy them from the model's "
            f"repository, or save them there with tokenizer.save_pretrained('{path}')"
        )


def _fast_tokenizer(path: Path, what: str):
    _check_tokenizer(path, what)  # else transformers fails with "'NoneType' ... 'endswith'"
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as e:
        raise UnsupportedModelError(f"cannot load the {what} tokenizer from {path}: {e}") from None
    if not getattr(tok, "is_fast", False):
        raise UnsupportedModelError(
            f"the {what} tokenizer in {path} has no fast (tokenizer.json) form; "
            "ragrt's runtime needs one (install sentencepiece/protobuf and re-run)"
        )
    return tok


def display_name(path: str | os.PathLike) -> str:
    """A readable model name for a folder: ``org/name`` inside a Hugging Face cache, the
    parent's name for a generic ``model`` folder, else the folder name."""
    p = Path(path).resolve()
    for part in p.parts:
        if part.startswith("models--"):
            return part[len("models--") :].replace("--", "/")
    if p.name in ("model", "models", "weights") and p.parent.name:
        return p.parent.name
    return p.name


def _encoder_input_names(model) -> list[str]:
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params:
        names.append("token_type_ids")
    return names


def _sentence_transformers_pooling(path: Path) -> tuple[str, bool, int | None] | None:
    """(pooling, normalize, max_seq_length) from a sentence-transformers folder, else None."""
    modules = path / "modules.json"
    if not modules.is_file():
        return None
    mods = json.loads(modules.read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in mods)
    pooling = "mean"
    for m in mods:
        if m.get("type", "").endswith("Pooling"):
            pcfg = path / m.get("path", "1_Pooling") / "config.json"
            if pcfg.is_file():
                p = json.loads(pcfg.read_text())
                if p.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif p.get("pooling_mode_mean_tokens"):
                    pooling = "mean"
                else:
                    raise UnsupportedModelError(
                        f"{pcfg}: only mean and CLS pooling are supported (got {p})"
                    )
    max_len = None
    sb = path / "sentence_bert_config.json"
    if sb.is_file():
        max_len = json.loads(sb.read_text()).get("max_seq_length")
    return pooling, normalize, max_len


def _max_length(tokenizer, config, override: int | None) -> int:
    if override:
        return int(override)
    n = int(getattr(tokenizer, "model_max_length", 0) or 0)
    pos = int(getattr(config, "max_position_embeddings", 512) or 512)
    return n if 0 < n <= pos else pos


def load_encoder(
    path: str | os.PathLike,
    role: str,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> EncoderSource:
    """A question/context encoder folder: DPR (pooler output) or any HF encoder (CLS/mean)."""
    p = Path(path)
    what = role.replace("_", " ")
    cfg = _read_config(p, what)  # before importing transformers: bad paths fail fast
    from transformers import AutoModel, DPRContextEncoder, DPRQuestionEncoder

    model_type = cfg.get("model_type", "")
    if pooling is not None and pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    st = _sentence_transformers_pooling(p)
    try:
        if model_type == "dpr":
            archs = cfg.get("architectures") or []
            cls = DPRContextEncoder if any("Context" in a for a in archs) else DPRQuestionEncoder
            if not archs:
                cls = DPRContextEncoder if role == "context_encoder" else DPRQuestionEncoder
            model = cls.from_pretrained(str(p))
            default_pool, default_norm, st_len = "pooler", False, None
        else:
            model = AutoModel.from_pretrained(str(p))
            if getattr(model.config, "is_encoder_decoder", False):
                raise UnsupportedModelError(
                    f"{p} is an encoder-decoder ({model_type}); a {what} must be an encoder "
                    "(DPR, BERT, ALBERT, MiniLM, ...)"
                )
            default_pool, default_norm, st_len = st if st else ("cls", False, None)
    except (OSError, ValueError, KeyError) as e:
        raise UnsupportedModelError(
            f"cannot load the {what} from {p}: {str(e).splitlines()[0]}"
        ) from None
    model.eval()
    tok = _fast_tokenizer(p, what)
    dim = int(getattr(model.config, "projection_dim", 0) or getattr(model.config, "hidden_size", 0))
    return EncoderSource(
        model=model,
        tokenizer=tok,
        name=display_name(p),
        family=model_type,
        pooling=pooling or default_pool,
        normalize=default_norm if normalize is None else normalize,
        dim=dim,
        max_length=_max_length(tok, model.config, st_len),
        input_names=_encoder_input_names(model),
    )


def _generator_family(model_type: str, where: Path) -> str:
    fam = GENERATOR_FAMILIES.get(model_type)
    if fam is None:
        raise UnsupportedModelError(
            f"generator in {where} is a {model_type!r} model; ragrt supports the BART and T5 "
            f"families ({', '.join(sorted(GENERATOR_FAMILIES))})"
        )
    return fam


def _generation_defaults(gen_cfg, model_cfg, rag_cfg=None) -> GenerationDefaults:
    """Generation settings with the reference's precedence: generation_config, then config."""

    def pick(name, default=None):
        for src in (gen_cfg, rag_cfg, model_cfg):
            v = getattr(src, name, None) if src is not None else None
            if v is not None:
                return v
        return default

    eos = pick("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0]
    prefix = getattr(model_cfg, "prefix", None) or ""
    return GenerationDefaults(
        decoder_start_token_id=int(pick("decoder_start_token_id", pick("bos_token_id", 0))),
        eos_token_id=int(eos),
        pad_token_id=int(pick("pad_token_id", 0)),
        bos_token_id=pick("bos_token_id"),
        forced_bos_token_id=pick("forced_bos_token_id"),
        forced_eos_token_id=pick("forced_eos_token_id"),
        max_length=int(pick("max_length", 20)),
        min_length=int(pick("min_length", 0)),
        no_repeat_ngram_size=int(pick("no_repeat_ngram_size", 0)),
        num_beams=int(pick("num_beams", 1)),
        num_return_sequences=int(pick("num_return_sequences", 1)),
        length_penalty=float(pick("length_penalty", 1.0)),
        early_stopping=pick("early_stopping", False),
        n_docs=int(getattr(rag_cfg, "n_docs", 5) if rag_cfg else 5),
        title_sep=getattr(rag_cfg, "title_sep", " / ") if rag_cfg else " / ",
        doc_sep=getattr(rag_cfg, "doc_sep", " // ") if rag_cfg else " // ",
        prefix=prefix,
        max_combined_length=int(getattr(rag_cfg, "max_combined_length", 300) if rag_cfg else 300),
        do_deduplication=bool(getattr(rag_cfg, "do_deduplication", True) if rag_cfg else True),
        exclude_bos_score=bool(getattr(rag_cfg, "exclude_bos_score", False) if rag_cfg else False),
        rag_type="token",
    )


def load_generator(path: str | os.PathLike) -> tuple[GeneratorSource, GenerationDefaults]:
    p = Path(path)
    cfg = _read_config(p, "generator")
    fam = _generator_family(cfg.get("model_type", ""), p)
    from transformers import AutoModelForSeq2SeqLM

    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(p)).eval()
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(
            f"cannot load the generator from {p}: {str(e).splitlines()[0]}"
        ) from None
    tok = _fast_tokenizer(p, "generator")
    src = GeneratorSource(model, tok, display_name(p), fam, cfg["model_type"])
    return src, _generation_defaults(model.generation_config, model.config)


def load_rag_checkpoint(
    path: str | os.PathLike,
) -> tuple[EncoderSource, GeneratorSource, GenerationDefaults]:
    """A HF RAG checkpoint (config.json model_type "rag"), e.g. facebook/rag-token-nq."""
    p = Path(path)
    cfg = _read_config(p, "RAG checkpoint")
    if cfg.get("model_type") != "rag":
        raise UnsupportedModelError(
            f"{p} is a {cfg.get('model_type')!r} checkpoint, not a RAG checkpoint "
            "(config.json model_type 'rag'); for separate models use "
            "--question-encoder DIR --generator DIR"
        )
    archs = cfg.get("architectures") or ["RagTokenForGeneration"]
    rag_type = "sequence" if any("Sequence" in a for a in archs) else "token"
    gen_type = (cfg.get("generator") or {}).get("model_type", "")
    fam = _generator_family(gen_type, p)
    from transformers import RagSequenceForGeneration, RagTokenForGeneration, RagTokenizer

    cls = RagSequenceForGeneration if rag_type == "sequence" else RagTokenForGeneration
    try:
        rag = cls.from_pretrained(str(p)).eval()
        toks = RagTokenizer.from_pretrained(str(p))
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(
            f"cannot load the RAG checkpoint {p}: {str(e).splitlines()[0]}"
        ) from None
    qmodel = rag.question_encoder
    qtok = toks.question_encoder
    q = EncoderSource(
        model=qmodel,
        tokenizer=qtok,
        name=f"{display_name(p)}/question_encoder",
        family=qmodel.config.model_type,
        pooling="pooler" if qmodel.config.model_type == "dpr" else "cls",
        normalize=False,
        dim=int(getattr(qmodel.config, "projection_dim", 0) or qmodel.config.hidden_size),
        max_length=_max_length(qtok, qmodel.config, None),
        input_names=_encoder_input_names(qmodel),
    )
    gmodel = rag.generator
    g = GeneratorSource(gmodel, toks.generator, f"{display_name(p)}/generator", fam, gen_type)
    gen = _generation_defaults(rag.generation_config, gmodel.config, rag.config)
    gen.rag_type = rag_type
    return q, g, gen


def _check_folder(path: Path, what: str) -> None:
    """A model folder has a readable config of a supported kind and its tokenizer files."""
    cfg = _read_config(path, what)
    if what == "generator":
        _generator_family(cfg.get("model_type", ""), path)
    if what != "RAG checkpoint":
        _check_tokenizer(path, what)
    elif cfg.get("model_type") == "rag":  # else load_rag_checkpoint says what it is instead
        _check_tokenizer(path / "question_encoder_tokenizer", "question encoder")
        _check_tokenizer(path / "generator_tokenizer", "generator")


def load_sources(
    rag_dir: str | os.PathLike | None = None,
    question_encoder: str | os.PathLike | None = None,
    generator: str | os.PathLike | None = None,
    context_encoder: str | os.PathLike | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> Sources:
    if rag_dir is not None and (question_encoder or generator):
        raise InputError(
            "pass either a RAG checkpoint MODEL_DIR or --question-encoder/--generator, not both"
        )
    if rag_dir is None and (not question_encoder or not generator):
        raise InputError(
            "nothing to export: pass a RAG checkpoint MODEL_DIR, or both "
            "--question-encoder DIR and --generator DIR"
        )
    # local folders or hub ids -> local folders
    rag_dir, question_encoder, generator, context_encoder = (
        resolve_model(path, what) if path is not None else None
        for path, what in (
            (rag_dir, "RAG checkpoint"),
            (question_encoder, "question encoder"),
            (generator, "generator"),
            (context_encoder, "context encoder"),
        )
    )
    # check every folder before loading any model: a typo fails in milliseconds
    for path, what in (
        (rag_dir, "RAG checkpoint"),
        (question_encoder, "question encoder"),
        (generator, "generator"),
        (context_encoder, "context encoder"),
    ):
        if path is not None:
            _check_folder(Path(path), what)
    if rag_dir is not None:
        q, g, gen = load_rag_checkpoint(rag_dir)
        desc = {"kind": "rag", "rag_dir": str(Path(rag_dir).resolve())}
    else:
        if not question_encoder or not generator:
            raise InputError(
                "nothing to export: pass a RAG checkpoint MODEL_DIR, or both "
                "--question-encoder DIR and --generator DIR"
            )
        q = load_encoder(question_encoder, "question_encoder", pooling, normalize)
        g, gen = load_generator(generator)
        desc = {
            "kind": "folders",
            "question_encoder": str(Path(question_encoder).resolve()),
            "generator": str(Path(generator).resolve()),
        }
    ctx = None
    if context_encoder is not None:
        ctx = load_encoder(context_encoder, "context_encoder", pooling, normalize)
        desc["context_encoder"] = str(Path(context_encoder).resolve())
        if ctx.dim != q.dim:
            raise UnsupportedModelError(
                f"context encoder dim {ctx.dim} != question encoder dim {q.dim}: "
                "retrieval needs both in one embedding space"
            )
    return Sources(q, g, gen, ctx, desc)
