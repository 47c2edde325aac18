"""The wire format between ragrt's Triton models and :mod:`ragrt.serving.client`: tensor names, how
requests and results become arrays, and how errors travel.

Pure numpy (no ``triton_python_backend_utils``, no ``tritonclient``), so both sides import it
and the translation is unit-testable without a server.

Shapes: a batching model (``max_batch_size > 0``) takes ``[b, 1]`` per input and answers
``[b, ...]``; a non-batching one (``rag_stream``) takes ``[1]``. Generation parameters are
optional inputs; one request carries one value per parameter (every row the same).
Variable-length integer outputs (``TOKEN_IDS``) are right-padded with ``-1``.

Errors: a model answers a failed request with a Triton error whose text starts with a
machine-readable code, ``[invalid_input] N_DOCS=0 is out of range ...``; the client turns the
code back into the ragrt error class (:func:`ragrt.errors.error_from_code`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragrt.errors import InputError, RagrtError, ServerError, error_from_code
from ragrt.results import Doc, GenerationResult, Hypothesis

QUESTION = "QUESTION"
MODE = "MODE"
#: optional integer inputs of ``rag`` / ``rag_stream``: tensor name -> engine keyword
INT_PARAMS = {
    "N_DOCS": "n_docs",
    "NUM_BEAMS": "num_beams",
    "MAX_NEW_TOKENS": "max_new_tokens",
    "MIN_NEW_TOKENS": "min_new_tokens",
    "NUM_RETURN_SEQUENCES": "num_return_sequences",
    "NO_REPEAT_NGRAM_SIZE": "no_repeat_ngram_size",
}
PARAM_TENSORS = {v: k for k, v in INT_PARAMS.items()}
GEN_INPUTS = (QUESTION, MODE, *INT_PARAMS)
RAG_OUTPUTS = (
    "ANSWER",
    "TOKEN_IDS",
    "SCORE",
    "DOC_IDS",
    "DOC_SCORES",
    "DOC_TITLES",
    "DOC_TEXTS",
    "SEQ_TEXTS",
    "SEQ_SCORES",
    "SEQ_TOKEN_IDS",
)
DOC_OUTPUTS = ("DOC_IDS", "DOC_SCORES", "DOC_TITLES", "DOC_TEXTS")
STREAM_OUTPUTS = ("TEXT", "FINAL")
PAD_ID = -1
MODES = ("token", "sequence")

_CODES = (
    "invalid_input",
    "bad_artifact",
    "unsupported_model",
    "device_unavailable",
    "server_error",
    "cancelled",
    "ragrt_error",
)
_CODE_RE = re.compile(r"\[(" + "|".join(_CODES) + r")\]\s*")


# -- errors ----------------------------------------------------------------------------------
def error_text(e: BaseException) -> str:
    """The text a model puts in a TritonError: ``[code] message``."""
    if isinstance(e, RagrtError):
        return f"[{e.code}] {e}"
    return (
        f"[{ServerError.code}] internal error in the model ({type(e).__name__}: {e}); "
        "the server log has the traceback"
    )


def error_from_text(text: str, default: type[RagrtError] = ServerError) -> RagrtError:
    """Rebuild the ragrt error from a server's error text (the code may follow Triton's own
    ``[request id: ...]`` prefix); without a code, a ``default`` error carrying the text."""
    m = _CODE_RE.search(text or "")
    if m is None:
        return default(text or "the server answered with an error and no message")
    return error_from_code(m.group(1), text[m.end() :].strip())


# -- strings ---------------------------------------------------------------------------------
def utf8(text: str, what: str) -> bytes:
    """``text`` as UTF-8; text that has no UTF-8 form (a lone surrogate such as ``"\\ud800"``)
    is an :class:`InputError` naming ``what``."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} is not valid Unicode text (a lone surrogate at character {e.start}); "
            "send text that can be encoded as UTF-8"
        ) from None


def encode_strings(values: Sequence[str], what: str = "question") -> np.ndarray:
    """UTF-8 bytes of ``values`` as a BYTES array (see :func:`utf8`)."""
    return np.array([utf8(v, f"{what} {i}") for i, v in enumerate(values)], dtype=np.object_)


def decode_string(v: Any, what: str) -> str:
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{what} is not valid UTF-8 text") from None
    if isinstance(v, str):
        return v
    raise InputError(f"{what} must be a string (BYTES), got {type(v).__name__}")


def decode_strings(arr: np.ndarray, what: str) -> list[str]:
    return [decode_string(v, f"{what}[{i}]") for i, v in enumerate(np.asarray(arr).reshape(-1))]


# -- requests --------------------------------------------------------------------------------
def request_arrays(
    questions: Sequence[str], params: dict[str, Any] | None = None, *, batched: bool = True
) -> dict[str, np.ndarray]:
    """Client side: input arrays for ``questions`` with generation ``params`` (engine keyword
    names; None values are left out, so the server's defaults apply)."""
    qs = list(questions)
    if not batched and len(qs) != 1:
        raise InputError("this model takes one question per request")
    shape = (len(qs), 1) if batched else (1,)
    out = {QUESTION: encode_strings(qs).reshape(shape)}
    for key, value in (params or {}).items():
        if value is None:
            continue
        if key == "mode":
            out[MODE] = np.full(shape, str(value).encode("utf-8"), dtype=np.object_)
        elif key in PARAM_TENSORS:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"{key} must be an integer, got {value!r}")
            if not -(2**31) <= int(value) < 2**31:
                raise InputError(f"{key}={value} does not fit the server's INT32 input")
            out[PARAM_TENSORS[key]] = np.full(shape, int(value), dtype=np.int32)
        else:
            raise InputError(
                f"unknown generation parameter {key!r} for a ragrt server: choose from "
                + ", ".join(["mode", *PARAM_TENSORS])
            )
    return out


@dataclass
class Limits:
    """Request limits a model enforces (from its config parameters)."""

    max_n_docs: int = 50
    max_num_beams: int = 16
    max_decoder_rows: int = 4096


def _rows(arr: np.ndarray, name: str, batched: bool) -> int:
    a = np.asarray(arr)
    want = "[batch, 1]" if batched else "[1]"
    ok = (a.ndim == 2 and a.shape[1] == 1) if batched else (a.shape == (1,))
    if not ok:
        raise InputError(f"{name} must have shape {want}, got {list(a.shape)}")
    return int(a.shape[0])


def _one_value(arr: np.ndarray, name: str, rows: int, batched: bool) -> Any:
    n = _rows(arr, name, batched)
    if n != rows:
        raise InputError(f"{name} has {n} rows but QUESTION has {rows}")
    flat = np.asarray(arr).reshape(-1)
    if any(v != flat[0] for v in flat[1:]):
        raise InputError(f"{name} must be the same for every row of one request")
    return flat[0]


def parse_questions(get: Callable[[str], np.ndarray | None], batched: bool) -> list[str]:
    arr = get(QUESTION)
    if arr is None:
        raise InputError("the request has no QUESTION input")
    _rows(arr, QUESTION, batched)
    if np.asarray(arr).dtype != np.object_:
        raise InputError(f"QUESTION must be BYTES (UTF-8 text), got {np.asarray(arr).dtype}")
    qs = decode_strings(arr, QUESTION)
    if not qs:
        raise InputError("QUESTION has no rows: send at least one question")
    for i, q in enumerate(qs):
        if not q.strip():
            raise InputError(f"QUESTION row {i} is empty; ask something")
    return qs


def _int_param(get, name: str, rows: int, batched: bool) -> int | None:
    arr = get(name)
    if arr is None:
        return None
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must be an integer tensor (INT32), got {a.dtype}")
    return int(_one_value(a, name, rows, batched))


def parse_gen_request(
    get: Callable[[str], np.ndarray | None], limits: Limits, *, batched: bool
) -> tuple[list[str], dict[str, Any]]:
    """Server side: questions and engine keywords of one request, range-checked."""
    qs = parse_questions(get, batched)
    kw: dict[str, Any] = {}
    for name, key in INT_PARAMS.items():
        v = _int_param(get, name, len(qs), batched)
        if v is not None:
            kw[key] = v
    mode = get(MODE)
    if mode is not None:
        m = decode_string(_one_value(mode, MODE, len(qs), batched), MODE)
        if m not in MODES:
            raise InputError(
                f"MODE={m!r} is unknown: choose 'token' (RAG-Token) or 'sequence' (RAG-Sequence)"
            )
        kw["mode"] = m
    _check_ranges(kw, limits)
    return qs, kw


def _check_ranges(kw: dict[str, Any], limits: Limits) -> None:
    n_docs = kw.get("n_docs")
    if n_docs is not None and not 1 <= n_docs <= limits.max_n_docs:
        raise InputError(
            f"N_DOCS={n_docs} is out of range: this server retrieves 1..{limits.max_n_docs} "
            "passages per question"
        )
    beams = kw.get("num_beams")
    if beams is not None and not 1 <= beams <= limits.max_num_beams:
        raise InputError(
            f"NUM_BEAMS={beams} is out of range: this server allows 1..{limits.max_num_beams} beams"
        )
    for name, lo in (
        ("MAX_NEW_TOKENS", 1),
        ("NUM_RETURN_SEQUENCES", 1),
        ("MIN_NEW_TOKENS", 0),
        ("NO_REPEAT_NGRAM_SIZE", 0),
    ):
        v = kw.get(INT_PARAMS[name])
        if v is not None and v < lo:
            least = "at least 1" if lo else "0 or more"
            raise InputError(f"{name}={v} is out of range: it must be {least}")


def parse_retrieve_request(
    get: Callable[[str], np.ndarray | None], limits: Limits, *, batched: bool
) -> tuple[list[str], int | None]:
    qs = parse_questions(get, batched)
    k = _int_param(get, "N_DOCS", len(qs), batched)
    if k is not None and not 1 <= k <= limits.max_n_docs:
        raise InputError(
            f"N_DOCS={k} is out of range: this server retrieves 1..{limits.max_n_docs} "
            "passages per question"
        )
    return qs, k


# -- results ---------------------------------------------------------------------------------
def _pad_ids(rows: Sequence[Sequence[int]]) -> np.ndarray:
    width = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def pack_docs(docs: Sequence[Sequence[Doc]]) -> dict[str, np.ndarray]:
    """``[b, k]`` doc arrays (every row has the same k)."""
    b = len(docs)
    k = len(docs[0]) if docs else 0
    if any(len(d) != k for d in docs):
        raise ServerError("rows of one request retrieved different numbers of passages")

    def strings(f):
        return np.array(
            [[f(d).encode("utf-8") for d in row] for row in docs], dtype=np.object_
        ).reshape(b, k)

    return {
        "DOC_IDS": strings(lambda d: str(d.id)),
        "DOC_SCORES": np.array([[d.score for d in row] for row in docs], dtype=np.float32).reshape(
            b, k
        ),
        "DOC_TITLES": strings(lambda d: d.title or ""),
        "DOC_TEXTS": strings(lambda d: d.text or ""),
    }


def unpack_docs(out: Callable[[str], np.ndarray | None], b: int) -> list[list[Doc]]:
    ids, scores, titles, texts = (out(n) for n in DOC_OUTPUTS)
    if ids is None:
        return [[] for _ in range(b)]
    ids = np.asarray(ids).reshape(b, -1)
    k = ids.shape[1]

    def strs(a):
        return np.asarray(a).reshape(b, k) if a is not None else np.full((b, k), b"", dtype=object)

    scores = (
        np.asarray(scores, dtype=np.float32).reshape(b, k)
        if scores is not None
        else np.zeros((b, k), np.float32)
    )
    titles, texts = strs(titles), strs(texts)
    return [
        [
            Doc(
                decode_string(ids[i, j], "DOC_IDS"),
                decode_string(titles[i, j], "DOC_TITLES"),
                decode_string(texts[i, j], "DOC_TEXTS"),
                float(scores[i, j]),
            )
            for j in range(k)
        ]
        for i in range(b)
    ]


def pack_results(results: Sequence[GenerationResult]) -> dict[str, np.ndarray]:
    """``rag`` outputs ``[b, ...]`` for one request's results."""
    b = len(results)
    seqs = [r.sequences or [Hypothesis(r.text, list(r.token_ids), r.score)] for r in results]
    n_seq = max(len(s) for s in seqs)
    seq_ids = np.full(
        (b, n_seq, max([len(h.token_ids) for s in seqs for h in s] + [1])), PAD_ID, np.int64
    )
    seq_texts = np.full((b, n_seq), b"", dtype=np.object_)
    seq_scores = np.full((b, n_seq), np.nan, dtype=np.float32)
    for i, s in enumerate(seqs):
        for j, h in enumerate(s):
            seq_ids[i, j, : len(h.token_ids)] = h.token_ids
            seq_texts[i, j] = h.text.encode("utf-8")
            seq_scores[i, j] = h.score
    out = {
        "ANSWER": np.array([r.text.encode("utf-8") for r in results], dtype=np.object_).reshape(
            b, 1
        ),
        "TOKEN_IDS": _pad_ids([r.token_ids for r in results]),
        "SCORE": np.array([r.score for r in results], dtype=np.float32).reshape(b, 1),
        "SEQ_TEXTS": seq_texts,
        "SEQ_SCORES": seq_scores,
        "SEQ_TOKEN_IDS": seq_ids,
    }
    out.update(pack_docs([r.docs for r in results]))
    return out


def _unpad(row: np.ndarray) -> list[int]:
    return [int(x) for x in row if x != PAD_ID]


def unpack_results(
    out: Callable[[str], np.ndarray | None], questions: Sequence[str]
) -> list[GenerationResult]:
    """Client side: ``rag`` outputs back into :class:`GenerationResult` objects."""
    b = len(questions)
    answers = decode_strings(np.asarray(out("ANSWER")).reshape(b), "ANSWER")
    ids = np.asarray(out("TOKEN_IDS")).reshape(b, -1)
    scores = np.asarray(out("SCORE"), dtype=np.float32).reshape(b)
    docs = unpack_docs(out, b)
    seq_texts, seq_scores, seq_ids = out("SEQ_TEXTS"), out("SEQ_SCORES"), out("SEQ_TOKEN_IDS")
    results = []
    for i, q in enumerate(questions):
        seqs: list[Hypothesis] = []
        if seq_texts is not None and seq_scores is not None and seq_ids is not None:
            st = np.asarray(seq_texts).reshape(b, -1)
            ss = np.asarray(seq_scores, dtype=np.float32).reshape(b, -1)
            si = np.asarray(seq_ids).reshape(b, st.shape[1], -1)
            for j in range(st.shape[1]):
                if np.isnan(ss[i, j]):
                    continue
                seqs.append(
                    Hypothesis(
                        decode_string(st[i, j], "SEQ_TEXTS"), _unpad(si[i, j]), float(ss[i, j])
                    )
                )
        results.append(
            GenerationResult(q, answers[i], _unpad(ids[i]), float(scores[i]), docs[i], seqs)
        )
    return results


def stream_body(question: str, params: dict[str, Any]) -> dict[str, Any]:
    """Client side: the JSON body of an HTTP ``generate_stream`` request (tensor names as
    keys; None values left out)."""
    body: dict[str, Any] = {QUESTION: question}
    for key, value in params.items():
        if value is not None:
            body[MODE if key == "mode" else PARAM_TENSORS[key]] = value
    return body


def stream_event(out: Callable[[str], np.ndarray | None]) -> tuple[str, bool]:
    """Client side: ``(text, final)`` of one ``rag_stream`` response (gRPC)."""
    text_arr = out("TEXT")
    if text_arr is None:
        raise ServerError("rag_stream response without TEXT; is the server a ragrt repository?")
    text = decode_strings(text_arr, "TEXT")[0]
    return text, bool(np.asarray(out("FINAL")).reshape(-1)[0])


def stream_event_json(event: dict[str, Any]) -> tuple[str, bool]:
    """Client side: ``(text, final)`` of one server-sent event of ``generate_stream`` (HTTP);
    an ``error`` event raises the ragrt error it names."""
    if not isinstance(event, dict):
        raise ServerError(f"malformed stream event from the server: {event!r}")
    if "error" in event:
        raise error_from_text(str(event["error"]))
    text = event.get("TEXT", "")
    if isinstance(text, list):
        text = text[0] if text else ""
    final = event.get("FINAL", False)
    return str(text), (final[0] if isinstance(final, list) else final) is True


def stream_arrays(text: str, final: bool) -> dict[str, np.ndarray]:
    return {
        "TEXT": np.array([text.encode("utf-8")], dtype=np.object_),
        "FINAL": np.array([final], dtype=bool),
    }
