"""The command line as a user meets it: what `ragrt ask` prints, JSON lines, warnings for
options that do nothing, `index info` in a pipe, device flag names, `demo` help and outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ragrt.cli import main

Q = "How do I serialize an object to JSON?"


def _ask(art, index, *extra):
    return ["ask", "--model", str(art), "--index", str(index), "--n-docs", "2", *extra]


def run_cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "ragrt", *args], capture_output=True, timeout=600, **kw
    )


# -- ragrt ask ---------------------------------------------------------------------------------
def test_ask_shows_sources_by_default_and_quiet_hides_them(
    rag_engine, rag_bart_art, rag_bart_index, capsys
):
    ref = rag_engine.generate([Q], n_docs=2, max_new_tokens=3)[0]
    assert main(_ask(rag_bart_art, rag_bart_index, "--max-new-tokens", "3", Q)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"Q: {Q}", f"A: {ref.text}"]
    for rank, (line, d) in enumerate(zip(lines[2:], ref.docs), 1):
        assert line.split() == [f"[{rank}]", f"{d.score:.3f}", d.id, *d.title.split()]
    assert len(lines) == 4
    assert main(_ask(rag_bart_art, rag_bart_index, "--max-new-tokens", "3", "--quiet", Q)) == 0
    assert capsys.readouterr().out.splitlines() == [f"Q: {Q}", f"A: {ref.text}"]
    assert (
        main(_ask(rag_bart_art, rag_bart_index, "--max-new-tokens", "3", "--show-docs", "1", Q))
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[3].strip().startswith(ref.docs[0].text.split()[0])


def test_ask_json_carries_timings_per_stage(rag_bart_art, rag_bart_index, capsys):
    args = _ask(rag_bart_art, rag_bart_index, "--max-new-tokens", "3", "--min-new-tokens", "3")
    assert main([*args, "--json", "--timings", Q, "what is a heap"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 2 and "timings" not in err  # in the JSON, not on stderr
    for x in lines:
        t = x["timings"]
        assert t["decode_steps"] == 3 and t["batch_size"] == 2
        assert {"question_encode", "search", "generator_encode", "decode"} <= set(t["stages_ms"])
        assert all(isinstance(v, float) and v >= 0 for v in t["stages_ms"].values())
    assert main([*args, "--json", Q]) == 0
    assert "timings" not in json.loads(capsys.readouterr().out)


def test_ask_json_stream_emits_json_lines(rag_engine, rag_bart_art, rag_bart_index, capsys):
    ref = rag_engine.generate([Q], n_docs=2, max_new_tokens=4, min_new_tokens=4)[0]
    args = _ask(rag_bart_art, rag_bart_index, "--max-new-tokens", "4", "--min-new-tokens", "4")
    assert main([*args, "--json", "--stream", "--timings", Q]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    pieces, final = lines[:-1], lines[-1]
    assert pieces and all(set(p) == {"type", "text"} and p["type"] == "piece" for p in pieces)
    assert final["type"] == "result" and final["question"] == Q
    assert final["answer"] == "".join(p["text"] for p in pieces) == ref.text
    assert final["timings"]["decode_steps"] == 4


def test_ignored_options_warn(rag_bart_art, rag_bart_index, capsys):
    from test_client import sse_server

    # the fixture index is flat: nprobe has nothing to probe
    assert (
        main(_ask(rag_bart_art, rag_bart_index, "--max-new-tokens", "2", "--nprobe", "4", Q)) == 0
    )
    assert "warning: --nprobe 4 ignored: the index is flat" in capsys.readouterr().err
    with sse_server(["The ", "answer"], "final") as (url, _):
        assert main(["ask", "--url", url, "--stream", "--precision", "int8", "why?"]) == 0
        captured = capsys.readouterr()
        assert captured.out == "The answer\n"
        assert captured.err.startswith("warning: --precision ignored with --url")
        assert main(["ask", "--url", url, "--stream", "why?"]) == 0
        assert capsys.readouterr().err == ""


def test_non_utf8_questions_are_one_line_errors(rag_bart_art, rag_bart_index):
    # undecodable argv bytes reach Python as lone surrogates (surrogateescape)
    for args in (
        _ask(rag_bart_art, rag_bart_index, "--max-new-tokens", "2"),
        ["index", "search", str(rag_bart_index), "--model", str(rag_bart_art)],
    ):
        r = run_cli(*args, b"caf\xe9 au lait")
        assert r.returncode == 2, r.stderr
        err = r.stderr.decode()
        assert (
            err.startswith("error: question 0 is not valid UTF-8 (byte 0xe9")
            and "Traceback" not in err
        )


# -- ragrt index -------------------------------------------------------------------------------
def test_index_info_in_a_closed_pipe_exits_quietly(rag_bart_index):
    # `ragrt index info INDEX | head`: the reader is gone before we write
    p = subprocess.Popen(
        [sys.executable, "-m", "ragrt", "index", "info", str(rag_bart_index)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=600) == 141
    assert err == "", err


def test_index_info_verify_says_so_and_has_a_description(rag_bart_index, capsys):
    assert main(["index", "info", str(rag_bart_index), "--verify"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["format"] == "ragrt-index"  # stdout stays JSON
    assert err.startswith(f"verified {rag_bart_index}: all ") and "sha256" in err
    with pytest.raises(SystemExit):
        main(["index", "info", "--help"])
    assert "Print INDEX_DIR's manifest as JSON" in capsys.readouterr().out


def test_index_device_flags_are_named_apart(rag_bart_art, rag_bart_index, capsys):
    search = ["index", "search", str(rag_bart_index), "--model", str(rag_bart_art), "-k", "1"]
    assert main([*search, "--index-device", "cpu", Q]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith(f"question: {Q}")
    assert main([*search, "--device", "cpu", Q]) == 0  # the old name still works
    assert "--device is deprecated here: use --index-device cpu" in capsys.readouterr().err
    assert main([*search, "--device", "cpu", "--index-device", "cuda", Q]) == 2
    assert "contradicts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["index", "build", "--help"])
    assert "--encoder-device" in capsys.readouterr().out


def test_outputs_get_the_same_mode_from_the_umask(rag_bart_art, rag_bart_index, tmp_path):
    from ragrt.artifacts import current_umask

    want = 0o777 & ~current_umask()
    assert os.stat(rag_bart_art).st_mode & 0o777 == want  # mkdtemp's 0700 before
    assert os.stat(rag_bart_index).st_mode & 0o777 == want
    old = os.umask(0o027)
    try:
        from ragrt.retrieval.build import BuildOptions, build_index
        from tests.index_helpers import write_corpus

        p, e, _ = write_corpus(tmp_path / "c", 50, 8)
        build_index(p, tmp_path / "i", embeddings=e, options=BuildOptions(progress=False))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "i").st_mode & 0o777 == 0o750


# -- ragrt demo --------------------------------------------------------------------------------
def test_demo_help_is_plain_and_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    for flag in ("--workdir", "--n-docs", "--mode", "--max-new-tokens", "--precision", "--rebuild"):
        block = out[out.index(f"  {flag}") :].split("\n  -")[0]
        assert len(block.split()) > 3, block  # the flag, its metavar and a description


def test_demo_workdir_and_rebuild_touch_only_ragrt_outputs(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("keep")
    assert main(["demo", "--workdir", str(f / "sub")]) == 2
    assert "is not a directory" in capsys.readouterr().err and f.read_text() == "keep"
    work = tmp_path / "w"
    (work / "art").mkdir(parents=True)
    (work / "art" / "notes.txt").write_text("mine")
    (work / "index").mkdir()
    (work / "index" / "data.bin").write_text("mine too")
    assert main(["demo", "--workdir", str(work), "--rebuild"]) == 2
    assert "is not a ragrt" in capsys.readouterr().err
    assert (work / "art" / "notes.txt").read_text() == "mine"
    assert (work / "index" / "data.bin").read_text() == "mine too"
