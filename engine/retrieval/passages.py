"""Passage files in, an on-disk passage store out.

Readers stream DPR's TSV and JSONL (one object per line with ``id``, ``text`` and optional
``title``), plain or gzip-compressed, without ever holding the whole file. Every bad row is
reported as ``FILE:LINE: reason``; with ``skip_bad_rows`` it is logged and skipped instead.

The TSV dialect is DPR's ``psgs_w100.tsv``: a header line naming the columns (``id``, ``text``,
optional ``title``, any order), then **one passage per line**, fields separated by tabs. A field
may be quoted as Python's ``csv`` writes it (``"..."``, a quote inside doubled as ``""``, tabs
allowed inside the quotes; DPR quotes titles and texts this way); a quote inside an unquoted
field is an ordinary character. A quoted field must close on its own line: an unmatched or
misplaced quote is a bad row (``FILE:LINE: malformed TSV row``), never a field that runs on
into the following rows. Texts with line breaks belong in JSONL.

Passage ids are kept exactly as written; an id with leading or trailing whitespace is a bad row
(it would otherwise be one that nobody can look up by typing it).

The store (:class:`PassageStore`) is three flat files, all memory-mapped on open:

``passages.data``
    UTF-8 bytes of every passage's id, title and text, back to back.
``passages.offsets``
    little-endian int64 ``[3 * N + 1]``: field ``f`` (0 id, 1 title, 2 text) of row ``r`` is
    ``data[offsets[3r + f] : offsets[3r + f + 1]]``.
``passages.ids``
    an open-addressing hash table (int64 rows, -1 empty, 2^k slots at load factor <= 0.5) keyed
    by the 64-bit blake2b hash of the id; collisions probe linearly and are confirmed by
    comparing the stored id bytes.
``passages.idhash``
    the same 64-bit id hashes, sorted (int64 ``[N]``): what :func:`shared_ids` intersects to
    find ids that two shards share.

Opening touches no data (21M passages open in milliseconds and use only the pages a lookup
reads); row and id lookups are O(1).
"""

from __future__ import annotations

import array
import csv
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ragrt.errors import ArtifactError, InputError
from ragrt.inputs import text_problem

log = logging.getLogger(__name__)

DATA_FILE = "passages.data"
OFFSETS_FILE = "passages.offsets"
IDS_FILE = "passages.ids"
STORE_FILES = (DATA_FILE, OFFSETS_FILE, IDS_FILE)
#: sorted id hashes (optional: indexes built before it have none): shards of one corpus are
#: checked for shared ids by intersecting these, without reading any passage
ID_HASHES_FILE = "passages.idhash"
FORMATS = ("tsv", "jsonl")
_MAX_LOGGED_SKIPS = 20

csv.field_size_limit(1 << 28)


@dataclass(frozen=True)
class Passage:
    """One passage as read from a file or the store."""

    id: str
    title: str
    text: str


class BadRowError(InputError):
    """A malformed row; ``location`` is ``FILE:LINE``."""

    def __init__(self, path: str | os.PathLike, line: int, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(
            f"{path}:{line}: {reason} (fix the row, or pass --skip-bad-rows to skip bad rows)"
        )


@dataclass
class ReadStats:
    """What a reader saw: data rows (good and bad), kept passages, skipped rows."""

    path: str
    format: str
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    skipped_rows: list[tuple[int, str]] = field(default_factory=list)  # first few (line, reason)
    #: data-row index (0-based, bad rows counted) of every kept passage, for aligning a
    #: precomputed embeddings file with a passage file from which bad rows were skipped
    kept_rows: list[int] | None = None


# -- readers ---------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike) -> str:
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise InputError(
        f"cannot tell the format of {path} from its name: use a .tsv (DPR: id<TAB>text<TAB>title "
        "with header) or .jsonl (id, title, text) file, optionally .gz"
    )


def _open_binary(path: Path) -> io.BufferedIOBase:
    if not path.exists():
        raise InputError(f"passage file {path} does not exist")
    if not path.is_file():
        raise InputError(f"passage file {path} is not a file")
    if str(path).lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _validate(pid: object, title: object, text: object) -> tuple[Passage | None, str | None]:
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        return None, f"id must be a string or integer, got {type(pid).__name__}"
    pid = str(pid)
    if not pid.strip():
        return None, "empty id"
    if pid != pid.strip():
        return None, (
            "id has leading or trailing whitespace (ids are kept exactly as written; "
            "remove the spaces)"
        )
    if title is None:
        title = ""
    if not isinstance(title, str):
        return None, f"title must be a string, got {type(title).__name__}"
    if not isinstance(text, str):
        return None, f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return None, "empty text"
    for name, value in (("id", pid), ("title", title), ("text", text)):
        err = text_problem(value)
        if err:
            return None, f"{name} is {err}"
    return Passage(pid, title, text), None


def _split_tsv_line(line: str) -> list[str]:
    """The fields of one TSV line (see the module docstring for the dialect); raises
    ``csv.Error`` on a quoting error."""
    if '"' not in line:  # the common case, and by far the fastest
        return line.rstrip("\r\n").split("\t")
    return next(csv.reader([line], delimiter="\t", quotechar='"', strict=True))


def _iter_tsv(
    path: Path, raw: io.BufferedIOBase
) -> Iterator[tuple[int, Passage | None, str | None]]:
    lineno = 0
    header: list[str] | None = None
    for b in raw:
        lineno += 1
        line = b.decode("utf-8", errors="surrogateescape")  # bad bytes reported per field
        if header is None:
            try:
                header = _split_tsv_line(line)
            except csv.Error as e:
                raise BadRowError(path, lineno, f"unreadable header ({e})") from None
            cols = [h.strip().lstrip("\ufeff").lower() for h in header]
            if "id" not in cols or "text" not in cols:
                raise InputError(
                    f"{path}:1: expected a header line naming the columns, e.g. "
                    f"'id<TAB>text<TAB>title' (DPR psgs_w100.tsv layout), got {header[:5]!r}"
                )
            i_id, i_text = cols.index("id"), cols.index("text")
            i_title = cols.index("title") if "title" in cols else None
            ncols = len(cols)
            continue
        if not line.strip():
            continue  # blank line
        try:
            row = _split_tsv_line(line)
        except csv.Error as e:
            yield (
                lineno,
                None,
                f"malformed TSV row ({e}; a quoted field must end with a quote on the same "
                'line, and a quote inside it is written "")',
            )
            continue
        if len(row) != ncols:
            yield (
                lineno,
                None,
                (
                    f"expected {ncols} tab-separated fields ({', '.join(cols)}), got {len(row)}"
                    " (a tab inside an unquoted text? quote the field)"
                ),
            )
            continue
        p, err = _validate(row[i_id], row[i_title] if i_title is not None else "", row[i_text])
        yield lineno, p, err


def _iter_jsonl(
    path: Path, raw: io.BufferedIOBase
) -> Iterator[tuple[int, Passage | None, str | None]]:
    for lineno, b in enumerate(raw, start=1):
        if not b.strip():
            continue
        try:
            line = b.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, None, f"not valid UTF-8 (byte 0x{b[e.start]:02x} at byte {e.start})"
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(obj, dict):
            yield lineno, None, f"expected a JSON object, got {type(obj).__name__}"
            continue
        missing = [k for k in ("id", "text") if k not in obj]
        if missing:
            yield lineno, None, f"missing field(s) {', '.join(missing)}"
            continue
        p, err = _validate(obj["id"], obj.get("title", ""), obj["text"])
        yield lineno, p, err


def iter_passages(
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    skip_bad_rows: bool = False,
    stats: ReadStats | None = None,
    track_rows: bool = False,
) -> Iterator[tuple[int, Passage]]:
    """Stream ``(line, passage)`` from a TSV or JSONL passage file (plain or .gz).

    Bad rows raise :class:`BadRowError` (``FILE:LINE: reason``) unless ``skip_bad_rows``, in
    which case they are counted in ``stats`` and logged (the first few). Nothing is buffered
    beyond one row. Duplicate ids are not detected here (see :func:`build_store`).
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown passage format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if stats is None:
        stats = ReadStats(str(path), fmt)
    if track_rows and stats.kept_rows is None:
        stats.kept_rows = []
    with _open_binary(path) as raw:
        rows = _iter_tsv(path, raw) if fmt == "tsv" else _iter_jsonl(path, raw)
        try:
            for lineno, p, err in rows:
                stats.rows += 1
                if err is not None:
                    if not skip_bad_rows:
                        raise BadRowError(path, lineno, err)
                    stats.skipped += 1
                    if len(stats.skipped_rows) < _MAX_LOGGED_SKIPS:
                        stats.skipped_rows.append((lineno, err))
                        log.warning("skipping %s:%d: %s", path, lineno, err)
                    continue
                assert p is not None  # a row without an error has its passage
                stats.kept += 1
                if stats.kept_rows is not None:
                    stats.kept_rows.append(stats.rows - 1)
                yield lineno, p
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise InputError(f"cannot read {path}: {e}") from None


def count_lines(path: str | os.PathLike, chunk: int = 1 << 24) -> int:
    """Lines in a (possibly gzipped) file, a last line without a newline included.
    :class:`InputError` when the file cannot be read (a corrupt ``.gz``)."""
    n = 0
    last = b"\n"
    try:
        with _open_binary(Path(path)) as f:
            while True:
                b = f.read(chunk)
                if not b:
                    return n + (last != b"\n")
                n += b.count(b"\n")
                last = b[-1:]
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def count_rows(path: str | os.PathLike, fmt: str | None = None) -> int:
    """An upper bound on the data rows of a passage file (its lines, less a TSV's header;
    blank lines count): the total of a progress bar, read in one fast pass."""
    fmt = fmt or detect_format(path)
    n = count_lines(path)
    return max(0, n - 1) if fmt == "tsv" else n


# -- the store -------------------------------------------------------------------------------
def id_hash(pid: str) -> int:
    """Signed 64-bit blake2b hash of an id (the key of the on-disk id table)."""
    return int.from_bytes(
        hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest(), "little", signed=True
    )


def _table_size(n: int) -> int:
    size = 16
    while size < 2 * n:
        size *= 2
    return size


@dataclass
class StoreStats:
    passages: int
    data_bytes: int
    read: ReadStats | None = None


class _OffsetsWriter:
    def __init__(self, f: io.BufferedWriter, flush_every: int = 1 << 16):
        self.f = f
        self.buf: list[int] = [0]
        self.pos = 0
        self.flush_every = flush_every

    def add(self, n: int) -> None:
        self.pos += n
        self.buf.append(self.pos)
        if len(self.buf) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.f.write(np.asarray(self.buf, dtype="<i8").tobytes())
            self.buf = []


def build_store(
    passages: Iterable[Passage | tuple[int, Passage]],
    out_dir: str | os.PathLike,
    *,
    source: str = "passages",
    on_passage: Callable[[Passage], None] | None = None,
) -> StoreStats:
    """Write the store files into ``out_dir`` (which the caller publishes atomically).

    ``passages`` yields :class:`Passage` or ``(line, Passage)`` (as :func:`iter_passages`
    does; lines make duplicate-id errors point at both rows). ``on_passage(passage)`` is called
    for every stored passage (the index builder embeds them on the way). Raises
    :class:`InputError` on duplicate ids or when there is no passage at all.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hashes = array.array("q")  # compact: 8 bytes per passage, not a Python int each
    lines = array.array("q")
    n = 0
    with open(out / DATA_FILE, "wb") as data, open(out / OFFSETS_FILE, "wb") as offf:
        offs = _OffsetsWriter(offf)
        for item in passages:
            line, p = item if isinstance(item, tuple) else (-1, item)
            for value in (p.id, p.title, p.text):
                b = value.encode("utf-8")
                data.write(b)
                offs.add(len(b))
            hashes.append(id_hash(p.id))
            lines.append(line)
            n += 1
            if on_passage is not None:
                on_passage(p)
        offs.flush()
        data_bytes = offs.pos
    if n == 0:
        raise InputError(f"{source} contains no passages (empty file, or every row was skipped)")
    h = np.frombuffer(hashes, dtype=np.int64)
    offsets = np.memmap(out / OFFSETS_FILE, dtype="<i8", mode="r")
    data_mm = np.memmap(out / DATA_FILE, dtype=np.uint8, mode="r") if data_bytes else None

    def id_bytes(row: int) -> bytes:
        a, b = int(offsets[3 * row]), int(offsets[3 * row + 1])
        return data_mm[a:b].tobytes() if data_mm is not None else b""

    _check_duplicates(h, id_bytes, lines, source)
    table = _build_table(h)
    table.astype("<i8").tofile(out / IDS_FILE)
    np.sort(h).astype("<i8").tofile(out / ID_HASHES_FILE)
    return StoreStats(passages=n, data_bytes=data_bytes)


def _check_duplicates(
    h: np.ndarray, id_bytes: Callable[[int], bytes], lines: Sequence[int], source: str
) -> None:
    order = np.argsort(h, kind="stable")
    sh = h[order]
    same = np.flatnonzero(sh[1:] == sh[:-1])
    for i in same:  # equal hashes: confirm with the bytes (a 64-bit collision is not a dup)
        a, b = int(order[i]), int(order[i + 1])
        if id_bytes(a) == id_bytes(b):
            pid = id_bytes(a).decode("utf-8")
            where = (
                f"{source}:{lines[b]} repeats id {pid!r} of {source}:{lines[a]}"
                if lines[a] >= 0
                else f"rows {a} and {b} of {source} share id {pid!r}"
            )
            raise InputError(f"duplicate passage id: {where}; passage ids must be unique")


def _build_table(h: np.ndarray) -> np.ndarray:
    """Vectorised linear-probing insert of rows keyed by hash (rounds of conflict-free puts)."""
    size = _table_size(len(h))
    mask = size - 1
    table = np.full(size, -1, dtype=np.int64)
    rows = np.arange(len(h), dtype=np.int64)
    slots = h & mask
    while len(rows):
        free = table[slots] == -1
        # among rows aiming at the same free slot, the first one wins this round
        cand_slots = slots[free]
        uniq, first = np.unique(cand_slots, return_index=True)
        winners = np.flatnonzero(free)[first]
        table[uniq] = rows[winners]
        placed = np.zeros(len(rows), dtype=bool)
        placed[winners] = True
        rows, slots = rows[~placed], (slots[~placed] + 1) & mask
    return table


class PassageStore:
    """Read-only, memory-mapped passage store (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for name in STORE_FILES:
            if not (self.root / name).is_file():
                raise ArtifactError(
                    f"passage store file {self.root / name} is missing; rebuild the index with "
                    "`ragrt index build`"
                )
        try:
            self._offsets = np.memmap(self.root / OFFSETS_FILE, dtype="<i8", mode="r")
            self._table = np.memmap(self.root / IDS_FILE, dtype="<i8", mode="r")
            size = (self.root / DATA_FILE).stat().st_size
            self._data = (
                np.memmap(self.root / DATA_FILE, dtype=np.uint8, mode="r") if size else None
            )
        except (ValueError, OSError) as e:
            raise ArtifactError(f"cannot map passage store {self.root}: {e}") from None
        n3 = len(self._offsets) - 1
        if n3 < 3 or n3 % 3 or int(self._offsets[0]) != 0 or int(self._offsets[-1]) != size:
            raise ArtifactError(
                f"passage store {self.root} is corrupt or truncated ({OFFSETS_FILE} does not "
                f"match {DATA_FILE}); rebuild the index"
            )
        self._n = n3 // 3
        t = len(self._table)
        if t < 2 * self._n or t & (t - 1):
            raise ArtifactError(
                f"passage store {self.root}: {IDS_FILE} is corrupt; rebuild the index"
            )
        self._mask = t - 1

    def __len__(self) -> int:
        return self._n

    def _corrupt(self, row: int, what: str) -> ArtifactError:
        return ArtifactError(
            f"passage store {self.root} is corrupt: passage row {row} {what}. Check the index "
            f"with `ragrt index info --verify {self.root}` and rebuild it with "
            "`ragrt index build`"
        )

    def _bounds(self, row: int, first: int, last: int) -> list[int]:
        """Offsets ``first..last`` of ``row``'s fields, checked (a corrupt offsets file must
        not read outside the data or backwards)."""
        offs = [int(x) for x in self._offsets[3 * row + first : 3 * row + last + 1]]
        size = len(self._data) if self._data is not None else 0
        if any(b < a for a, b in zip(offs, offs[1:])) or offs[0] < 0 or offs[-1] > size:
            raise self._corrupt(row, "has offsets outside its data file")
        return offs

    def _decode(self, row: int, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._corrupt(row, "is not valid UTF-8") from None

    def _field(self, row: int, f: int) -> str:
        a, b = self._bounds(row, f, f + 1)
        if self._data is None or a == b:
            return ""
        return self._decode(row, self._data[a:b].tobytes())

    def _row(self, row: int) -> int:
        r = int(row)
        if not 0 <= r < self._n:
            raise InputError(f"passage row {row} out of range (store has {self._n} passages)")
        return r

    def __getitem__(self, row: int) -> Passage:
        r = self._row(row)
        a, b, c, d = self._bounds(r, 0, 3)
        raw = self._data[a:d].tobytes() if self._data is not None else b""
        return Passage(
            self._decode(r, raw[: b - a]),
            self._decode(r, raw[b - a : c - a]),
            self._decode(r, raw[c - a :]),
        )

    def get(self, rows: Iterable[int]) -> list[Passage]:
        return [self[r] for r in rows]

    def id_of(self, row: int) -> str:
        return self._field(self._row(row), 0)

    def row_of(self, pid: str | int) -> int:
        """Row of passage ``pid``; :class:`InputError` if there is none."""
        r = self.find(pid)
        if r is None:
            raise InputError(f"no passage with id {str(pid)!r} in {self.root}")
        return r

    def find(self, pid: str | int) -> int | None:
        key = str(pid)
        if text_problem(key) is not None:
            return None  # not text: no stored id can equal it
        kb = key.encode("utf-8")
        slot = id_hash(key) & self._mask
        for _ in range(len(self._table)):
            r = int(self._table[slot])
            if r < 0:
                return None
            if 0 <= r < self._n:
                a, b = int(self._offsets[3 * r]), int(self._offsets[3 * r + 1])
                if self._data is not None and self._data[a:b].tobytes() == kb:
                    return r
            slot = (slot + 1) & self._mask
        return None

    def rows_with_hash(self, h: int) -> list[int]:
        """Rows whose id hashes to ``h`` (usually one; a 64-bit collision gives more)."""
        rows = []
        slot = h & self._mask
        for _ in range(len(self._table)):
            r = int(self._table[slot])
            if r < 0:
                break
            if 0 <= r < self._n and id_hash(self.id_of(r)) == h:
                rows.append(r)
            slot = (slot + 1) & self._mask
        return rows

    def id_hashes(self) -> np.ndarray | None:
        """The sorted id hashes (memory-mapped), or None for a store written without them."""
        p = self.root / ID_HASHES_FILE
        if not p.is_file() or p.stat().st_size != 8 * self._n:
            return None
        return np.memmap(p, dtype="<i8", mode="r")

    def by_id(self, pid: str | int) -> Passage:
        return self[self.row_of(pid)]

    def __contains__(self, pid: object) -> bool:
        return isinstance(pid, (str, int)) and self.find(pid) is not None

    def __iter__(self) -> Iterator[Passage]:
        for r in range(self._n):
            yield self[r]

    def close(self) -> None:
        for name in ("_offsets", "_table", "_data"):
            mm = getattr(self, name, None)
            if mm is not None and getattr(mm, "_mmap", None) is not None:
                mm._mmap.close()
        self._data = None


def shared_ids(
    a: PassageStore, b: PassageStore, *, limit: int = 3, chunk: int = 1 << 22
) -> list[tuple[str, int, int]] | None:
    """Up to ``limit`` ids stored in both ``a`` and ``b``, as ``(id, row in a, row in b)``;
    None when a store has no sorted id hashes to compare (built by an older ragrt).

    Reads only the two sorted hash files (8 bytes per passage), in chunks; equal hashes are
    confirmed by comparing the ids themselves.
    """
    ha, hb = a.id_hashes(), b.id_hashes()
    if ha is None or hb is None:
        return None
    found: list[tuple[str, int, int]] = []
    for s in range(0, len(hb), chunk):
        part = np.asarray(hb[s : s + chunk])
        pos = np.minimum(np.searchsorted(ha, part), len(ha) - 1)
        for h in part[np.asarray(ha[pos]) == part]:
            for ra in a.rows_with_hash(int(h)):
                for rb in b.rows_with_hash(int(h)):
                    if a.id_of(ra) == b.id_of(rb):
                        found.append((a.id_of(ra), ra, rb))
                        if len(found) >= limit:
                            return found
    return found
