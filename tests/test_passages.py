"""Passage readers (DPR TSV, JSONL) and the memory-mapped passage store."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from ragrt.errors import ArtifactError, InputError
from ragrt.retrieval.passages import (
    DATA_FILE,
    IDS_FILE,
    OFFSETS_FILE,
    BadRowError,
    Passage,
    PassageStore,
    ReadStats,
    _build_table,
    build_store,
    count_lines,
    count_rows,
    iter_passages,
)


def _tsv(path, rows, header="id\ttext\ttitle"):
    path.write_bytes(
        ("\n".join([header, *rows]) + "\n").encode() if header else "\n".join(rows).encode()
    )
    return path


def _jsonl(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


def _read(path, **kw):
    return [p for _, p in iter_passages(path, **kw)]


# -- readers ---------------------------------------------------------------------------------
def test_dpr_tsv_with_quoted_fields(tmp_path):
    # psgs_w100.tsv quotes text and titles: embedded quotes doubled; tabs allowed inside quotes;
    # one passage per line (a quoted field never spans lines)
    p = _tsv(
        tmp_path / "psgs.tsv",
        [
            '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron',
            '2\t"a tab\there"\t"Title, with comma"',
            "3\tplain text\t",
            '4\tan 8" record\tinch "marks" kept',  # quotes inside unquoted fields are text
        ],
    )
    got = list(iter_passages(p))
    assert [line for line, _ in got] == [2, 3, 4, 5]
    assert [x for _, x in got] == [
        Passage("1", "Aaron", 'Aaron Aaron ( or ; "Ahärôn") is a prophet'),
        Passage("2", "Title, with comma", "a tab\there"),
        Passage("3", "", "plain text"),
        Passage("4", 'inch "marks" kept', 'an 8" record'),
    ]


@pytest.mark.parametrize("gz", [False, True])
def test_tsv_unmatched_quote_is_a_bad_row_not_merged_rows(tmp_path, gz):
    # an unmatched quote used to run on through the next rows: five rows in, three out, one
    # with the wrong title, no warning
    rows = ["1\tfirst\tT1", '2\t"second\tT2', "3\tthird\tT3", "4\tfourth\tT4", '5\tfifth"\tT5']
    p = _tsv(tmp_path / "q.tsv", rows)
    if gz:
        g = tmp_path / "q.tsv.gz"
        g.write_bytes(gzip.compress(p.read_bytes()))
        p = g
    with pytest.raises(BadRowError, match=r"q.tsv(.gz)?:3: malformed TSV row") as e:
        _read(p)
    assert e.value.line == 3
    stats = ReadStats(str(p), "tsv")
    got = list(iter_passages(p, skip_bad_rows=True, stats=stats))
    assert [(line, x.id, x.title) for line, x in got] == [
        (2, "1", "T1"),
        (4, "3", "T3"),
        (5, "4", "T4"),
        (6, "5", "T5"),
    ]
    assert stats.skipped == 1 and stats.skipped_rows[0][0] == 3


def test_tsv_column_order_from_header_and_gzip(tmp_path):
    p = tmp_path / "x.tsv.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("title\tid\ttext\nT\t7\thello\n")
    assert _read(p) == [Passage("7", "T", "hello")]
    assert count_lines(p) == 2


def test_jsonl_reader(tmp_path):
    p = _jsonl(
        tmp_path / "p.jsonl",
        [{"id": 5, "title": "T", "text": "tab\tand\nnewline"}, {"id": "b", "text": "no title"}],
    )
    assert _read(p) == [Passage("5", "T", "tab\tand\nnewline"), Passage("b", "", "no title")]


@pytest.mark.parametrize(
    "line,reason",
    [
        ("4\tthree\tfields\textra", "expected 3 tab-separated fields"),
        ("4\tonly two", "expected 3 tab-separated fields"),
        ("\tno id\tT", "empty id"),
        ("4\t   \tT", "empty text"),
        ('4\t"bad "quote\tT', "malformed TSV row"),
    ],
)
def test_tsv_bad_rows_report_file_and_line(tmp_path, line, reason):
    p = _tsv(tmp_path / "bad.tsv", ["1\tok\tT", line, "9\tok too\tT"])
    with pytest.raises(BadRowError, match=reason) as e:
        _read(p)
    assert e.value.line == 3 and f"{p}:3:" in str(e.value)
    assert "--skip-bad-rows" in str(e.value)
    stats = ReadStats(str(p), "tsv")
    got = _read(p, skip_bad_rows=True, stats=stats)
    assert [x.id for x in got][0] == "1" and got[-1].id == "9"
    assert stats.skipped >= 1 and stats.skipped_rows[0][0] == 3


@pytest.mark.parametrize("skip", [False, True])
def test_jsonl_lone_surrogate_is_a_bad_row(tmp_path, skip):
    # json.loads turns "\ud800" into a str UTF-8 cannot encode; the error path itself used to
    # crash on it (UnicodeEncodeError), with or without --skip-bad-rows
    p = tmp_path / "s.jsonl"
    p.write_text(
        '{"id": "a", "text": "\\ud800 x"}\n{"id": "b", "text": "ok"}\n{"id": "\\udfff", "text": "y"}\n'
    )
    if not skip:
        with pytest.raises(BadRowError, match=r"s.jsonl:1: text is .*lone surrogate U\+D800"):
            _read(p)
        return
    stats = ReadStats(str(p), "jsonl")
    assert _read(p, skip_bad_rows=True, stats=stats) == [Passage("b", "", "ok")]
    assert [line for line, _ in stats.skipped_rows] == [1, 3]
    assert "U+DFFF" in stats.skipped_rows[1][1]


def test_ids_are_kept_as_given_and_padded_ids_refused(tmp_path):
    p = _jsonl(tmp_path / "ids.jsonl", [{"id": " x ", "text": "t"}, {"id": "x y", "text": "u"}])
    with pytest.raises(BadRowError, match=r"ids.jsonl:1: id has leading or trailing whitespace"):
        _read(p)
    assert _read(p, skip_bad_rows=True) == [Passage("x y", "", "u")]
    t = _tsv(tmp_path / "ids.tsv", ["x \tt\tT"])
    with pytest.raises(BadRowError, match="leading or trailing whitespace"):
        _read(t)


def test_non_utf8_bytes(tmp_path):
    p = tmp_path / "latin.tsv"
    p.write_bytes(b"id\ttext\ttitle\n1\tok\tT\n2\tcaf\xe9\tT\n")
    with pytest.raises(BadRowError, match=r"latin.tsv:3: text is not valid UTF-8 \(byte 0xe9"):
        _read(p)
    assert [x.id for x in _read(p, skip_bad_rows=True)] == ["1"]
    j = tmp_path / "latin.jsonl"
    j.write_bytes(b'{"id": 1, "text": "ok"}\n{"id": 2, "text": "caf\xe9"}\n')
    with pytest.raises(BadRowError, match=r"latin.jsonl:2: not valid UTF-8"):
        _read(j)


@pytest.mark.parametrize(
    "line,reason",
    [
        ('{"id": 1, "text": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": 1}', "missing field"),
        ('{"id": null, "text": "x"}', "id must be a string or integer"),
        ('{"id": 1, "text": 3}', "text must be a string"),
        ('{"id": 1, "title": 2, "text": "x"}', "title must be a string"),
        ('{"id": "", "text": "x"}', "empty id"),
    ],
)
def test_jsonl_bad_rows(tmp_path, line, reason):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 0, "text": "ok"}\n\n' + line + "\n")
    with pytest.raises(BadRowError, match=reason) as e:
        _read(p)
    assert e.value.line == 3  # blank line 2 is skipped but counted
    assert _read(p, skip_bad_rows=True) == [Passage("0", "", "ok")]


def test_missing_header_and_unknown_format(tmp_path):
    p = _tsv(tmp_path / "nohdr.tsv", ["1\ttext\ttitle"], header=None)
    with pytest.raises(InputError, match="header"):
        _read(p)
    with pytest.raises(InputError, match="format"):
        _read(tmp_path / "x.csv")
    with pytest.raises(InputError, match="does not exist"):
        _read(tmp_path / "missing.jsonl")


# -- store -----------------------------------------------------------------------------------
def test_store_roundtrip_row_and_id_lookup(tmp_path):
    ps = [Passage(f"id-{i}", f"Título {i}", f"text {i}\twith\ttabs\nand é") for i in range(500)]
    ps.append(Passage("empty-title", "", "x"))
    st = build_store(iter(ps), tmp_path)
    assert st.passages == 501
    s = PassageStore(tmp_path)
    assert len(s) == 501
    assert s[0] == ps[0] and s[500] == ps[500] and s[-0] == ps[0]
    assert s.by_id("id-123") == ps[123] and s.row_of("empty-title") == 500
    assert s.find("nope") is None and "nope" not in s and "id-7" in s
    assert s.get([3, 1]) == [ps[3], ps[1]]
    assert list(s)[:2] == ps[:2]
    with pytest.raises(InputError, match="out of range"):
        s[501]
    with pytest.raises(InputError, match="no passage with id"):
        s.row_of("nope")
    assert isinstance(s._offsets, np.memmap) and isinstance(s._data, np.memmap)


def test_integer_ids_lookup(tmp_path):
    build_store(iter([Passage(str(i), "", f"t{i}") for i in range(1, 50)]), tmp_path)
    s = PassageStore(tmp_path)
    assert s.by_id(17).text == "t17" and s.row_of("17") == 16


def test_hash_table_resolves_collisions():
    h = np.array([5, 5, 5, 21, 6, 1 << 40], dtype=np.int64)  # 5, 21 and 1<<40 collide mod 16
    table = _build_table(h)
    assert len(table) == 16 and sorted(table[table >= 0].tolist()) == list(range(6))
    for row, key in enumerate(h):  # every row is reachable by linear probing from its slot
        slot = int(key) & 15
        while table[slot] != row:
            assert table[slot] >= 0
            slot = (slot + 1) & 15


def test_duplicate_ids_name_both_lines(tmp_path):
    p = _jsonl(
        tmp_path / "dup.jsonl",
        [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}],
    )
    with pytest.raises(InputError, match=r"dup.jsonl:3 repeats id 'a' of .*dup.jsonl:1"):
        build_store(iter_passages(p), tmp_path / "store", source=str(p))


@pytest.mark.parametrize("content", [b"", b"id\ttext\ttitle\n", b"id\ttext\ttitle\n\tbad\tT\n"])
def test_empty_or_all_skipped_is_an_error(tmp_path, content):
    p = tmp_path / "e.tsv"
    p.write_bytes(content)
    with pytest.raises(InputError, match="no passages"):
        build_store(iter_passages(p, skip_bad_rows=True), tmp_path / "s", source=str(p))


def test_same_size_corruption_is_a_clean_error_naming_verify(tmp_path):
    # a corrupt byte inside a passage keeps every size; only a hash (or decoding) sees it
    build_store(iter([Passage(str(i), "T", f"text {i}") for i in range(10)]), tmp_path)
    data = bytearray((tmp_path / DATA_FILE).read_bytes())
    i = data.index(b"text 3")
    data[i : i + 2] = b"\xff\xfe"
    (tmp_path / DATA_FILE).write_bytes(bytes(data))
    store = PassageStore(tmp_path)  # opening checks sizes only
    assert store[2].text == "text 2"
    with pytest.raises(
        ArtifactError, match=r"passage row 3 is not valid UTF-8.*ragrt index info --verify"
    ):
        store[3]
    offsets = np.fromfile(tmp_path / OFFSETS_FILE, dtype="<i8")
    offsets[3 * 5 + 1] = offsets[3 * 5 + 3] + 7  # a field past its successor
    offsets.tofile(tmp_path / OFFSETS_FILE)
    store = PassageStore(tmp_path)
    with pytest.raises(ArtifactError, match="passage row 5 has offsets outside"):
        store[5]


def test_corrupt_gz_while_counting_is_an_input_error(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"id": 1, "text": "x"}\n' * 100)[:40])
    with pytest.raises(InputError, match="cannot read"):
        count_lines(p)
    with pytest.raises(InputError, match="cannot read"):
        _read(p)


def test_count_rows_leaves_out_the_tsv_header(tmp_path):
    t = _tsv(tmp_path / "r.tsv", ["1\ta\tT", "2\tb\tT"])
    j = _jsonl(tmp_path / "r.jsonl", [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}])
    assert count_rows(t) == 2 and count_rows(j) == 2
    t.write_bytes(t.read_bytes().rstrip(b"\n"))  # no newline after the last row
    assert count_rows(t) == 2


def test_corrupt_store_is_detected(tmp_path):
    build_store(iter([Passage(str(i), "", "text") for i in range(10)]), tmp_path)
    data = (tmp_path / DATA_FILE).read_bytes()
    (tmp_path / DATA_FILE).write_bytes(data[:-3])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        PassageStore(tmp_path)
    (tmp_path / IDS_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        PassageStore(tmp_path)
    (tmp_path / OFFSETS_FILE).write_bytes(b"")
    with pytest.raises(ArtifactError):
        PassageStore(tmp_path)
