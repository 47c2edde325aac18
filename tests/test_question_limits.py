"""Issue 11 item 4: the question byte cap. An oversized question is one InputError naming the
limit, raised before any tokenizing (a 16 MB question used to take half a minute and gigabytes
in the tokenizer before being truncated to a few hundred tokens anyway); the other questions of
a batch are still answered. The served models are tested in test_serving.py."""

from __future__ import annotations

import numpy as np
import pytest

from ragrt.errors import InputError
from ragrt.inputs import (
    DEFAULT_MAX_QUESTION_BYTES,
    check_max_question_bytes,
    check_questions,
    question_size_error,
)
from ragrt.serving import protocol

Q = "How do I serialize an object to JSON?"
BIG = "why " * (512 * 1024)  # 2 MiB


def test_size_is_measured_in_utf8_bytes():
    assert DEFAULT_MAX_QUESTION_BYTES == 65536
    assert question_size_error("a" * 10, 10) is None
    assert question_size_error("é" * 5, 10) is None  # 10 bytes
    assert question_size_error("é" * 6, 10) == (
        "is too long: 12 bytes of UTF-8, the limit is 10 (max_question_bytes)"
    )
    assert question_size_error("\ud800" * 3, 10) is None  # measured, not refused here
    assert question_size_error(b"x" * 11, 10) is not None
    assert question_size_error(BIG, None) is None
    # a huge question is not encoded to be measured: its length in characters says enough
    assert "at least 2,097,152 bytes" in question_size_error(BIG, 65536)
    with pytest.raises(InputError, match="question 1 is too long"):
        check_questions(["q", "q" * 65537], max_bytes=65536)
    for bad in (0, -1, 1.5, True, "64k"):
        with pytest.raises(InputError, match="max_question_bytes must be a positive integer"):
            check_max_question_bytes(bad)


def test_engine_refuses_an_oversized_question_before_tokenizing(rag_engine, monkeypatch):
    from ragrt.results import Doc

    assert rag_engine.retriever.max_question_bytes == DEFAULT_MAX_QUESTION_BYTES
    tok = rag_engine.question_encoder.tokenizer

    def no_tokenizing(*a, **k):
        raise AssertionError("an oversized question reached the tokenizer")

    monkeypatch.setattr(tok, "tokenize", no_tokenizing)
    doc = Doc("1", "t", "x", 1.0)
    for call in (
        lambda: rag_engine.generate([Q, BIG], max_new_tokens=2),
        lambda: rag_engine.retrieve([BIG]),
        lambda: rag_engine.embed([BIG]),
        lambda: list(rag_engine.stream(BIG, max_new_tokens=2)),
        lambda: rag_engine.generate_from_docs([BIG], [[doc]], max_new_tokens=2),
        lambda: rag_engine.prepare([BIG]),
    ):
        with pytest.raises(InputError, match="too long: at least 2,097,152 bytes.*65,536"):
            call()
    monkeypatch.undo()
    out = rag_engine.generate_each([BIG, Q], max_new_tokens=2)
    assert isinstance(out[0], InputError) and str(out[0]).startswith("question 0 is too long")
    assert out[1].token_ids == rag_engine.generate([Q], max_new_tokens=2)[0].token_ids


def test_the_limit_is_configurable(rag_engine, rag_bart_art, monkeypatch, caplog):
    from ragrt.engine import RagEngine

    long_q = "what is a heap queue " * 5000  # 105 kB: over the default, truncated when allowed
    monkeypatch.setattr(rag_engine.retriever, "max_question_bytes", None)
    assert len(rag_engine.retrieve([long_q], k=2)[0]) == 2
    assert "longer than the question encoder's limit" in caplog.text  # truncated
    monkeypatch.setattr(rag_engine.retriever, "max_question_bytes", 100)
    with pytest.raises(InputError, match="the limit is 100"):
        rag_engine.retrieve(["x" * 101])
    with pytest.raises(InputError, match="max_question_bytes"):
        RagEngine.load(rag_bart_art, max_question_bytes=0)


def test_served_models_check_the_raw_bytes():
    arr = np.array([[b"q"], [b"x" * 65537]], dtype=object)
    with pytest.raises(InputError, match="QUESTION row 1 is too long: 65,537 bytes"):
        protocol.parse_gen_request(
            {"QUESTION": arr}.get, protocol.Limits(max_question_bytes=65536), batched=True
        )
    # no limit: the question goes through
    qs, _ = protocol.parse_gen_request(
        {"QUESTION": arr}.get, protocol.Limits(max_question_bytes=None), batched=True
    )
    assert len(qs[1]) == 65537
    with pytest.raises(InputError, match="too long"):
        protocol.parse_questions({"QUESTION": arr}.get, True, 100)


def test_repository_option(tmp_path):
    from ragrt.triton_models.options import RepoOptions

    with pytest.raises(InputError, match="--max-question-bytes"):
        RepoOptions(max_question_bytes=0).validate()
    assert RepoOptions().max_question_bytes == DEFAULT_MAX_QUESTION_BYTES
