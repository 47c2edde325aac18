"""The engine's composition API: Retriever, GenerationRequest, stage hooks (Tracer/StageTimer),
the streamer and cancellation inside the decode loops."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ragrt.errors import Cancelled, InputError, error_from_code
from ragrt.runtime.generation.request import GenerationRequest
from ragrt.runtime.generation.streaming import Cancellation, TextIteratorStreamer
from ragrt.tracing import STAGES, StageTimer, Tracer

Q = "How do I serialize an object to JSON?"


# -- Retriever --------------------------------------------------------------------------------
def test_retriever_is_the_engines_retrieval_path(rag_engine, rag_bart_art, rag_bart_index):
    from ragrt.retrieval.retriever import Retriever

    r = Retriever.load(rag_bart_art, rag_bart_index)
    qs = [Q, "what is a heap queue"]
    assert [[d.id for d in row] for row in r.retrieve(qs, 3)] == [
        [d.id for d in row] for row in rag_engine.retrieve(qs, k=3)
    ]
    np.testing.assert_array_equal(r.embed(qs), rag_engine.embed(qs))
    # the question the generator reads: question-encoder ids decoded back (uncased vocabulary)
    assert r.encode(qs).texts == [q.lower() for q in qs]
    with pytest.raises(InputError, match="without an index"):
        Retriever.load(rag_bart_art).retrieve(qs)


def test_long_question_is_tokenized_once(rag_engine, caplog, monkeypatch):
    tok = rag_engine.question_encoder.tokenizer
    calls = []
    real = tok.tokenize
    monkeypatch.setattr(tok, "tokenize", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level("WARNING"):
        emb = rag_engine.embed(["short", "why " * 1000])
    assert len(calls) == 1 and emb.shape[0] == 2
    assert "question 1 is longer" in caplog.text and "question 0" not in caplog.text


# -- GenerationRequest ------------------------------------------------------------------------
def test_request_resolves_defaults_once_and_is_hashable(rag_engine):
    d = rag_engine.manifest.generation
    req = rag_engine.request(num_beams=3, n_docs=np.int64(2))
    assert (req.mode, req.n_docs, req.num_beams) == (d.rag_type, 2, 3)
    assert req.params.max_new_tokens == d.max_length - 1 and req.decoder_rows == 6
    assert req == rag_engine.request(n_docs=2, num_beams=3) and len({req, req}) == 1
    a = rag_engine.generate([Q], request=rag_engine.request(n_docs=2, max_new_tokens=5))
    b = rag_engine.generate([Q], n_docs=2, max_new_tokens=5)
    assert a[0].token_ids == b[0].token_ids
    with pytest.raises(InputError, match="not both"):
        rag_engine.generate([Q], n_docs=2, request=req)
    with pytest.raises(InputError, match="unknown mode"):
        GenerationRequest.resolve(d, max_positions=10, mode="beam")
    with pytest.raises(InputError, match="max_new_tokens"):
        GenerationRequest.resolve(d, max_positions=10, max_new_tokens=10)


def test_stream_and_generate_each_take_a_request(rag_engine):
    req = rag_engine.request(n_docs=2, max_new_tokens=8)
    full = rag_engine.generate([Q], request=req)[0].text
    assert "".join(rag_engine.stream(Q, request=req)) == full
    out = rag_engine.generate_each([Q, " "], request=req)
    assert out[0].text == full and isinstance(out[1], InputError)


# -- stage hooks ------------------------------------------------------------------------------
def test_stage_timer_sees_every_stage_in_order(rag_engine):
    class Order(StageTimer):
        def __init__(self):
            super().__init__()
            self.order = []

        def start(self, stage):
            super().start(stage)
            self.order.append(stage)

    t = Order()
    rag_engine.generate(
        [Q, "what is a heap queue"], n_docs=2, max_new_tokens=7, min_new_tokens=7, tracer=t
    )
    assert t.order == [
        "question_tokenize",
        "question_encode",
        "search",
        "contexts",
        "generator_encode",
        "decode",
        "detokenize",
    ]
    assert set(t.ms) <= set(STAGES) and all(ms >= 0 for ms in t.ms.values())
    assert t.steps == 7  # greedy: one hook call per decode step
    rows, tokens = t.info["contexts"]["context_shape"]
    assert rows == 4 and 0 < t.info["contexts"]["context_tokens"] <= rows * tokens
    d = t.to_dict()
    assert list(d["stages_ms"]) == t.order and d["decode_steps"] == 7
    assert "decode" in t.summary()

    s = Order()
    rag_engine.generate([Q], mode="sequence", n_docs=2, num_beams=2, max_new_tokens=4, tracer=s)
    assert s.order[-2:] == ["rescore", "detokenize"] and 1 <= s.steps <= 4


def test_tracer_base_class_ignores_everything(rag_engine):
    r = rag_engine.generate([Q], n_docs=1, max_new_tokens=3, tracer=Tracer())
    assert r[0].token_ids


# -- streaming and cancellation ---------------------------------------------------------------
def _first_piece_step(tok, token_ids):
    for i in range(1, len(token_ids) + 1):
        text = tok.decode(token_ids[:i])
        if text and not text.endswith("\ufffd"):
            return i
    raise AssertionError("the answer has no text")


def test_closing_a_stream_stops_the_decode_within_one_step(rag_engine, monkeypatch):
    """Close after the first piece: the decode stops at most one step after the close."""
    import ragrt.engine as engine_mod

    n = 60
    kw = dict(n_docs=2, max_new_tokens=n, min_new_tokens=n)
    full = rag_engine.generate([Q], **kw)[0]
    assert len(full.token_ids) == n
    first = _first_piece_step(rag_engine.generator_tokenizer, full.token_ids)
    assert first < n - 5

    closing = threading.Event()

    class Gate(StageTimer):  # holds the decode one step after the first piece until the close
        def step(self, rows):
            super().step(rows)
            if self.steps == first + 1:
                assert closing.wait(60)

    timer = Gate()
    at_cancel: list[int] = []

    class Recorded(Cancellation):
        def cancel(self):
            at_cancel.append(timer.steps)
            super().cancel()
            closing.set()

    monkeypatch.setattr(engine_mod, "Cancellation", Recorded)
    gen = rag_engine.stream(Q, tracer=timer, **kw)
    piece = next(gen)
    assert piece and full.text.startswith(piece)
    gen.close()  # cancels, then joins the worker
    # the gate keeps the decode from passing step first + 1 before the cancel; after the cancel
    # it finishes at most the step it was in
    assert at_cancel[0] <= timer.steps <= at_cancel[0] + 1, (at_cancel, timer.steps)
    assert timer.steps <= first + 1 < n
    assert "detokenize" not in timer.ms
    assert not any(t.name == "ragrt-stream" and t.is_alive() for t in threading.enumerate())
    # the engine is fine afterwards
    assert "".join(rag_engine.stream(Q, n_docs=2, max_new_tokens=6)) == (
        rag_engine.generate([Q], n_docs=2, max_new_tokens=6)[0].text
    )


class _CancelAt(StageTimer):
    def __init__(self, stopping, at_step=None, at_stage=None):
        super().__init__()
        self.stopping, self.at_step, self.at_stage = stopping, at_step, at_stage

    def start(self, stage):
        super().start(stage)
        if stage == self.at_stage:
            self.stopping.cancel()

    def step(self, rows):
        super().step(rows)
        if self.steps == self.at_step:
            self.stopping.cancel()


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_beams=3),  # beam search
        dict(mode="sequence", num_beams=1),  # RAG-Sequence candidates, greedy
        dict(mode="sequence", num_beams=2),  # RAG-Sequence candidates, beam search
    ],
    ids=["beam", "sequence-greedy", "sequence-beam"],
)
def test_cancellation_is_checked_every_decode_step(rag_engine, kw):
    stop = Cancellation()
    t = _CancelAt(stop, at_step=3)
    with pytest.raises(Cancelled):
        rag_engine.generate(
            [Q], n_docs=2, max_new_tokens=20, min_new_tokens=20, tracer=t, stopping=stop, **kw
        )
    assert t.steps == 3 and "detokenize" not in t.ms
    # also through stream(), whose non-greedy answers are one piece
    stop = Cancellation()
    t = _CancelAt(stop, at_step=2)
    with pytest.raises(Cancelled):
        list(
            rag_engine.stream(
                Q, n_docs=2, max_new_tokens=20, min_new_tokens=20, tracer=t, stopping=stop, **kw
            )
        )
    assert t.steps == 2


def test_cancellation_is_checked_before_rescoring(rag_engine):
    stop = Cancellation()
    t = _CancelAt(stop, at_stage="rescore")
    with pytest.raises(Cancelled):
        rag_engine.generate(
            [Q, "what is a heap queue"],
            mode="sequence",
            n_docs=2,
            max_new_tokens=4,
            tracer=t,
            stopping=stop,
        )
    assert "rescore" in t.ms and "detokenize" not in t.ms


def test_a_polled_cancellation_stops_a_greedy_decode(rag_engine):
    polls: list[int] = []
    stop = Cancellation(poll=lambda: len(polls) >= 4 or bool(polls.append(1)))
    t = StageTimer()
    with pytest.raises(Cancelled):
        rag_engine.generate(
            [Q], n_docs=2, max_new_tokens=30, min_new_tokens=30, stopping=stop, tracer=t
        )
    assert stop.cancelled() and t.steps == 4


def test_cancelled_error_travels_by_code():
    e = error_from_code(Cancelled.code, "gone")
    assert isinstance(e, Cancelled) and e.code == "cancelled"
    from ragrt.serving import protocol

    back = protocol.error_from_text(protocol.error_text(Cancelled("client went away")))
    assert isinstance(back, Cancelled)


class _Bytes:
    """Decodes ids as UTF-8 bytes (one byte per id), like a byte-level BPE."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_streamer_holds_back_incomplete_utf8():
    s = TextIteratorStreamer(_Bytes())
    for b in "a€b".encode():  # € is 3 bytes
        s.put(np.array([b]))
    s.end()
    assert list(s) == ["a", "€", "b"]


def test_text_streamer_reraises_the_decode_error():
    s = TextIteratorStreamer(_Bytes())
    s.put(np.array([ord("x")]))
    s.fail(InputError("bad"))
    it = iter(s)
    assert next(it) == "x"
    with pytest.raises(InputError, match="bad"):
        next(it)


def test_cli_ask_timings(rag_bart_art, rag_bart_index, capsys):
    from ragrt.cli import main

    base = ["ask", "--model", str(rag_bart_art), "--index", str(rag_bart_index), "--n-docs", "2"]
    assert main([*base, "--max-new-tokens", "4", "--min-new-tokens", "4", "--timings", Q]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"Q: {Q}")
    line = next(x for x in err.splitlines() if x.startswith("timings: "))
    for stage in ("question_encode", "search", "contexts", "generator_encode", "decode"):
        assert f"{stage} " in line and " ms" in line
    assert "4 decode steps" in line
    assert main(["ask", "--url", "localhost:1", "--timings", Q]) == 2
    assert "--timings needs the local engine" in capsys.readouterr().err


# -- input validation of the Python API -------------------------------------------------------
@pytest.mark.parametrize(
    "questions,needle",
    [
        (5, "got int"),
        (None, "got NoneType"),
        ({"q": 1}, "got a dict"),
        ({"a", "b"}, "got a set"),
        ("one string", r"wrap a single question in \[...\]"),
        (["\ud800 x"], r"question 0 is not valid Unicode text \(a lone surrogate U\+D800"),
        (["ok", "caf\udce9"], r"question 1 is not valid UTF-8 \(byte 0xe9 at character 3\)"),
    ],
)
def test_bad_question_lists_are_input_errors(rag_engine, questions, needle):
    for call in (
        lambda: rag_engine.generate(questions, max_new_tokens=2),
        lambda: rag_engine.retrieve(questions),
        lambda: rag_engine.embed(questions),
        lambda: rag_engine.retriever.retrieve(questions),
    ):
        with pytest.raises(InputError, match=needle):
            call()


def test_bad_questions_in_stream_and_generate_each(rag_engine):
    with pytest.raises(InputError, match="lone surrogate"):
        list(rag_engine.stream("\ud800", max_new_tokens=2))
    out = rag_engine.generate_each([Q, "\ud800", 7, "x\udcff"], n_docs=2, max_new_tokens=2)
    assert out[0].text == rag_engine.generate([Q], n_docs=2, max_new_tokens=2)[0].text
    assert [type(x) for x in out[1:]] == [InputError] * 3
    assert "question 1 is not valid Unicode" in str(out[1]) and "question 2 is int" in str(out[2])
    assert "question 3 is not valid UTF-8" in str(out[3])
    with pytest.raises(InputError, match="got a dict"):
        rag_engine.generate_each({"a": 1})


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"forced_bos_token_id": 10**9}, "forced_bos_token_id=1000000000 is not a token"),
        ({"eos_token_id": 10**6}, "eos_token_id=1000000 is not a token"),
        ({"length_penalty": "2.0"}, "length_penalty must be a finite number"),
        ({"length_penalty": float("nan")}, "length_penalty must be a finite number"),
        ({"length_penalty": float("inf")}, "length_penalty must be a finite number"),
        ({"length_penalty": True}, "length_penalty must be a finite number"),
        ({"do_deduplication": "yes"}, "do_deduplication must be true or false"),
        ({"num_beams": 10**6}, "num_beams=1000000 is more than the generator's vocabulary"),
        ({"num_beams": 900, "n_docs": 5}, "4500 decoder rows per question; at most 4096"),
    ],
)
def test_generation_overrides_checked_against_vocabulary_and_type(rag_engine, overrides, needle):
    with pytest.raises(InputError, match=needle):
        rag_engine.generate([Q], max_new_tokens=2, **overrides)
    with pytest.raises(InputError, match=needle):
        rag_engine.request(**overrides)


def test_length_penalty_accepts_numbers(rag_engine):
    assert rag_engine.request(length_penalty=2).params.length_penalty == 2
    assert rag_engine.request(length_penalty=np.float32(0.5)).params.length_penalty == 0.5


def test_load_refuses_bad_nprobe_and_threads(rag_bart_art, rag_bart_index):
    from ragrt.engine import RagEngine
    from ragrt.retrieval.retriever import Retriever

    for nprobe in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="nprobe must be a positive integer"):
            RagEngine.load(rag_bart_art, rag_bart_index, nprobe=nprobe)
    with pytest.raises(InputError, match="intra_op_threads must be an integer >= 0"):
        RagEngine.load(rag_bart_art, rag_bart_index, intra_op_threads=-1)
    with pytest.raises(InputError, match="intra_op_threads"):
        Retriever.load(rag_bart_art, intra_op_threads=-2)
