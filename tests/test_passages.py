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
    # psgs_w100.tsv quotes text: embedded quotes doubled; quoted fields may hold tabs/newlines
    p = _tsv(
        tmp_path / "psgs.tsv",
        [
            '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron',
            '2\t"a tab\there and a newline\nthere"\t"Title, with comma"',
            "3\tplain text\t",
        ],
    )
    got = list(iter_passages(p))
    assert [line for line, _ in got] == [2, 3, 5]  # the quoted newline spans lines 3-4
    assert [x for _, x in got] == [
        Passage("1", "Aaron", 'Aaron Aaron ( or ; "Ahärôn") is a prophet'),
        Passage("2", "Title, with comma", "a tab\there and a newline\nthere"),
        Passage("3", "", "plain text"),
    ]


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
