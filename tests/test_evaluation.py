"""ragrt.evaluation and ``ragrt eval``: SQuAD metrics, question files, the eval loop, the CLI."""

from __future__ import annotations

import json

import pytest

from ragrt.errors import InputError
from ragrt.evaluation import (
    EvalQuestion,
    evaluate,
    exact_match,
    latency_percentiles,
    normalize_answer,
    read_questions,
    recall_at,
    score,
    token_f1,
)


# -- metrics (cases from SQuAD's official evaluation script semantics) ---------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("The Cat sat.", "cat sat"),
        ("  an  apple,  a pear & THE plum!", "apple pear plum"),
        ("theatre another", "theatre another"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_is_max_over_answers():
    assert exact_match("the heap queue.", ["priority queue", "Heap queue"]) == 1.0
    assert exact_match("heap", ["heap queue"]) == 0.0


def test_token_f1():
    # 2 common tokens of 3 predicted and 4 gold: P=2/3, R=1/2 -> F1 = 4/7
    assert token_f1("return the sine value", ["return sine of x"]) == pytest.approx(
        2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)
    )
    assert token_f1("x y", ["a b", "y x"]) == 1.0  # bag of words, best answer
    assert token_f1("", ["b"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to empty: SQuAD counts agreement
    assert token_f1("a a b", ["a b b"]) == pytest.approx(2 / 3)  # counts, not sets


def test_recall_at():
    assert recall_at(["x", "g", "y"], ["g"], 2) == 1.0
    assert recall_at(["x", "g", "y"], ["g"], 1) == 0.0
    assert recall_at([1, 2], ["2"], 2) == 1.0  # ids compare as strings


def test_score_and_latency():
    qs = [
        EvalQuestion("q1", ["alpha"], ["a"]),
        EvalQuestion("q2", ["beta gamma"], ["b"]),
        EvalQuestion("q3", ["delta"]),
    ]
    rep = score(qs, ["Alpha!", "beta", "nope"], [["a", "x"], ["x", "b"], ["z"]], recall_k=(1, 2))
    assert rep.exact_match == pytest.approx(100 / 3, abs=0.01)
    assert rep.f1 == pytest.approx(100 * (1 + 2 / 3) / 3, abs=0.01)
    assert rep.recall == {1: 50.0, 2: 100.0} and rep.with_gold_ids == 2
    lat = latency_percentiles([0.001 * i for i in range(1, 101)])
    assert lat["p50"] == pytest.approx(50.5) and lat["p99"] == pytest.approx(99.01)


# -- question files -----------------------------------------------------------------------------
def _write(tmp_path, lines):
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_read_questions(tmp_path):
    p = _write(
        tmp_path,
        [
            json.dumps({"question": "what?", "answers": ["that"], "gold_ids": ["d#0", 7]}),
            "",
            json.dumps({"question": "who?", "answers": ["me", "I"], "id": "ignored"}),
        ],
    )
    qs = read_questions(p)
    assert [(q.question, q.answers, q.gold_ids, q.line) for q in qs] == [
        ("what?", ["that"], ["d#0", "7"], 1),
        ("who?", ["me", "I"], None, 3),
    ]


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"question": "q", "answers": ["a"]', "not valid JSON"),
        ('["q", ["a"]]', "expected a JSON object"),
        ('{"answers": ["a"]}', '"question" must be a non-empty string'),
        ('{"question": "  ", "answers": ["a"]}', '"question" must be a non-empty string'),
        ('{"question": "q"}', 'missing "answers"'),
        ('{"question": "q", "answers": "a"}', '"answers" must be a non-empty list'),
        ('{"question": "q", "answers": []}', '"answers" must be a non-empty list'),
        ('{"question": "q", "answers": [""]}', "empty answer"),
        ('{"question": "q", "answers": ["a"], "gold_ids": "d1"}', '"gold_ids" must be'),
    ],
)
def test_bad_question_files_name_file_and_line(tmp_path, line, needle):
    good = json.dumps({"question": "fine", "answers": ["ok"]})
    p = _write(tmp_path, [good, line])
    with pytest.raises(InputError, match=needle) as e:
        read_questions(p)
    assert str(e.value).startswith(f"{p}:2: ")


def test_missing_or_empty_question_file(tmp_path):
    with pytest.raises(InputError, match="no such question file"):
        read_questions(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="no questions"):
        read_questions(tmp_path / "empty.jsonl")


# -- the loop and the CLI on the session's engine (tiny DPR + BART fixture, real corpus) ------
@pytest.fixture(scope="module")
def eval_file(tmp_path_factory, rag_engine):
    """Questions whose gold answers are what the engine says for two of them (EM 1) and
    something else for the third (EM 0); gold ids from its own retrieval."""
    qs = ["what is a heap queue", "how do I parse arguments", "serialize to JSON"]
    res = rag_engine.generate(qs, n_docs=2, max_new_tokens=6)
    rows = [
        {"question": qs[0], "answers": [res[0].text], "gold_ids": [res[0].docs[1].id]},
        {"question": qs[1], "answers": ["nothing like it", res[1].text]},
        {"question": qs[2], "answers": ["no such answer"], "gold_ids": ["not-an-id"]},
    ]
    p = tmp_path_factory.mktemp("eval") / "questions.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_evaluate_scores_what_the_engine_answers(rag_engine, eval_file):
    qs = read_questions(eval_file)
    rep = evaluate(rag_engine, qs, n_docs=2, max_new_tokens=6, progress=False)
    assert rep.exact_match == pytest.approx(200 / 3, abs=0.01)
    assert rep.recall == {1: 0.0, 5: 50.0} and rep.with_gold_ids == 2
    assert set(rep.latency_ms) == {"p50", "p90", "p99"} and rep.latency_ms["p50"] > 0
    batched = evaluate(rag_engine, qs, n_docs=2, max_new_tokens=6, progress=False, batch_size=3)
    assert [p.answer for p in batched.predictions] == [p.answer for p in rep.predictions]
    with pytest.raises(InputError, match="batch_size"):
        evaluate(rag_engine, qs, batch_size=0, progress=False)


def test_cli_eval_json(rag_bart_art, rag_bart_index, eval_file, tmp_path, capsys):
    from ragrt.cli import main

    preds = tmp_path / "preds.jsonl"
    argv = ["eval", "--model", str(rag_bart_art), "--index", str(rag_bart_index)]
    argv += ["--questions", str(eval_file), "--n-docs", "2", "--max-new-tokens", "6"]
    argv += ["--json", "--quiet", "--predictions", str(preds)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["questions"] == 3 and out["exact_match"] == pytest.approx(200 / 3, abs=0.01)
    assert out["recall"] == {"@1": 0.0, "@5": 50.0}
    assert out["settings"]["n_docs"] == 2 and out["settings"]["precision"] == "fp32"
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["em"] for r in rows] == [1.0, 1.0, 0.0] and len(rows[0]["retrieved_ids"]) == 5


def test_cli_eval_sequence_fast_text(rag_bart_art, rag_bart_index, eval_file, capsys):
    from ragrt.cli import main

    argv = ["eval", "--model", str(rag_bart_art), "--index", str(rag_bart_index), "--quiet"]
    argv += ["--questions", str(eval_file), "--n-docs", "2", "--max-new-tokens", "4"]
    argv += ["--mode", "sequence", "--sequence-decoding", "fast", "--num-beams", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "exact match" in out and "sequence_decoding fast" in out and "recall@5" in out


def test_cli_eval_bad_file_is_one_line(rag_bart_art, rag_bart_index, tmp_path, capsys):
    from ragrt.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answers": ["a"]}\n{"question": 3}\n')
    argv = ["eval", "--model", str(rag_bart_art), "--index", str(rag_bart_index)]
    assert main([*argv, "--questions", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'error: {bad}:2: "question" must be a non-empty string, got 3'
