"""Artifact directories: reading their manifests, checking the paths they name, verifying files
against them, and publishing a finished directory atomically.

Three kinds of directory share these rules: the model artifacts (``ragrt export``), the index
(``ragrt index build``) and the Triton model repository (``ragrt triton build-repo``). Each
describes itself with an :class:`ArtifactKind`; everything here is written once for all three.

* A manifest is data from disk, not code: :func:`read_manifest` checks that it is a JSON object
  of the right format, :func:`from_json` builds a dataclass from it checking every field against
  the dataclass's type hints, and :func:`safe_path` refuses any file name that is absolute,
  not normalized, or leads out of the directory (``..``, a symbolic link). Whoever writes a
  manifest also writes its hashes, so a hash check cannot replace the path check.
* :func:`verify_files` checks files against a manifest's ``files`` records (size, sha256).
* :func:`staging_dir` writes an output into a hidden, marked staging directory next to it and
  renames it into place only when complete; an existing output is replaced only when it is an
  output of the same kind (or empty), and is moved aside, never deleted, until the new one is
  in place. Staging directories left by a killed process are removed by the next run.

Imports only the standard library and :mod:`ragrt.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import re
import shutil
import socket
import tempfile
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ragrt.errors import ArtifactError, InputError

MANIFEST_NAME = "manifest.json"
#: verify modes: nothing / sizes / sizes + sha256 of files up to AUTO_HASH_BYTES / everything
VERIFY_MODES = ("none", "size", "auto", "full")
AUTO_HASH_BYTES = 64 << 20
#: the file that marks a staging directory (removed just before it is published)
STAGING_MARKER = ".ragrt-staging"
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.ragrt-(?P<what>staging|old)-(?P<pid>\d+)(?:-.*)?$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

T = TypeVar("T")


@dataclass(frozen=True)
class ArtifactKind:
    """What a kind of output directory is called, how it is recognised and how it is made."""

    format: str  #: the ``format`` value of its manifest, e.g. ``ragrt-index``
    noun: str  #: ``ragrt index`` (as in "not a (complete) ragrt index")
    dir_label: str  #: ``index directory``
    make: str  #: the command that creates it, e.g. ``ragrt index build``
    #: the manifest, relative to the directory (a glob for the Triton repository)
    marker: str = MANIFEST_NAME

    @property
    def fix(self) -> str:
        return f"re-create it with `{self.make}`"


# -- paths -----------------------------------------------------------------------------------
def _path_problem(rel: Any) -> str | None:
    if not isinstance(rel, str):
        return f"a {type(rel).__name__}, not a string"
    if not rel or "\0" in rel:
        return "empty or containing a NUL character"
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return "an absolute path"
    if "\\" in rel:
        return "a Windows path (use '/')"
    parts = rel.split("/")
    if ".." in parts:
        return "a path with '..'"
    if posixpath.normpath(rel) != rel:
        return "not a normalized path"
    return None


def safe_path(root: str | os.PathLike, rel: Any, *, where: Any, fix: str) -> Path:
    """``root / rel`` for a file name ``rel`` read from a manifest, refused unless it is a
    relative, normalized path that stays inside ``root`` after resolving symbolic links.

    The error names the manifest and the offending name, never anything about the file the
    name points to (whether it exists, its size).
    """
    base = Path(root)
    problem = _path_problem(rel)
    if problem is None:
        resolved = (base / rel).resolve()
        if not resolved.is_relative_to(base.resolve()):
            problem = "a path that leads out of the directory through a symbolic link"
    if problem is not None:
        raise ArtifactError(
            f"{where} names the file {rel!r}, {problem}: every file a manifest names must be a "
            f"relative path inside {base}; the manifest was edited or tampered with - refusing "
            f"it ({fix})"
        )
    return base / rel


def check_paths(root: str | os.PathLike, rels: Iterable[Any], *, where: Any, fix: str) -> None:
    """:func:`safe_path` for every name in ``rels``."""
    for rel in rels:
        safe_path(root, rel, where=where, fix=fix)


# -- hashing and file records ---------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (ONNX files and indexes can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(root: str | os.PathLike, rel: str) -> dict[str, Any]:
    """The ``files`` entry of ``root/rel``: ``{"sha256": ..., "bytes": ...}``."""
    p = Path(root) / rel
    return {"sha256": sha256_file(p), "bytes": p.stat().st_size}


def check_file_records(
    root: str | os.PathLike, files: Any, *, where: Any, fix: str, field: str = "files"
) -> dict[str, dict[str, Any]]:
    """A manifest's ``files`` mapping, checked: safe relative names, each with an integer
    ``bytes`` >= 0 and a hex ``sha256``."""
    if not isinstance(files, dict):
        raise ArtifactError(f"{where}: {field} must be an object, got {_show(files)}; {fix}")
    for rel, rec in files.items():
        safe_path(root, rel, where=where, fix=fix)
        name = _sub(field, rel)
        if not isinstance(rec, dict):
            raise ArtifactError(
                f"{where}: {name} must be an object with sha256 and bytes, got {_show(rec)}; {fix}"
            )
        size, sha = rec.get("bytes"), rec.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ArtifactError(
                f"{where}: {name}.bytes must be an integer >= 0, got {_show(size)}; {fix}"
            )
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise ArtifactError(
                f"{where}: {name}.sha256 must be 64 hex digits, got {_show(sha)}; {fix}"
            )
    return files


def verify_files(
    root: str | os.PathLike,
    files: Mapping[str, Mapping[str, Any]],
    *,
    mode: str = "full",
    only: Iterable[str] | None = None,
    label: str = "file",
    where: Any = MANIFEST_NAME,
    fix: str,
) -> None:
    """Check files against their records: present (``size``), recorded size (``size``),
    sha256 (``full``; ``auto`` hashes files up to 64 MiB). ``only`` restricts the check to
    some names (which must be recorded)."""
    if mode not in VERIFY_MODES:
        raise InputError(f"unknown verify mode {mode!r}: choose none, size, auto or full")
    if mode == "none":
        return
    for rel in files if only is None else only:
        rec = files.get(rel)
        if rec is None:
            raise ArtifactError(f"{rel} is not listed in {where}; {fix}")
        p = safe_path(root, rel, where=where, fix=fix)
        if not p.is_file():
            raise ArtifactError(f"{label} {p} is missing: the directory is incomplete; {fix}")
        size = p.stat().st_size
        if size != rec["bytes"]:
            raise ArtifactError(
                f"{label} {p} is corrupt or truncated: {size} bytes, {where} says "
                f"{rec['bytes']}; {fix}"
            )
        if mode == "full" or (mode == "auto" and size <= AUTO_HASH_BYTES):
            if sha256_file(p) != rec["sha256"]:
                raise ArtifactError(
                    f"{label} {p} is corrupt: its sha256 does not match {where}; {fix}"
                )


# -- manifests -------------------------------------------------------------------------------
def read_manifest(root: str | os.PathLike, kind: ArtifactKind, *, version: int) -> dict[str, Any]:
    """``root/manifest.json`` as a dict: the directory exists, the manifest is a JSON object of
    ``kind.format`` and of a format version this ragrt reads (an integer <= ``version``)."""
    base = Path(root)
    if not base.exists():
        raise ArtifactError(f"{kind.dir_label} {base} does not exist; create it with `{kind.make}`")
    if not base.is_dir():
        raise ArtifactError(
            f"{base} is not a directory; pass the {kind.dir_label} written by `{kind.make}`"
        )
    mpath = base / MANIFEST_NAME
    if not mpath.is_file():
        raise ArtifactError(
            f"{base} has no {MANIFEST_NAME}: it is not a (complete) {kind.noun} (a run that did "
            f"not finish leaves none); create it with `{kind.make}`"
        )
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is not valid JSON ({e}); {kind.fix}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{mpath} is not a JSON object; {kind.fix}")
    if data.get("format") != kind.format:
        raise ArtifactError(
            f"{mpath} is not a {kind.noun} manifest (format={data.get('format')!r}, expected "
            f"{kind.format!r}); {kind.fix}"
        )
    v = data.get("format_version")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ArtifactError(
            f"{mpath}: format_version must be an integer, got {_show(v)}; {kind.fix}"
        )
    if v > version:
        raise ArtifactError(
            f"{base} was written by a newer ragrt (format version {v}; this one reads up to "
            f"{version}): upgrade ragrt, or {kind.fix} using this version"
        )
    return data


def from_json(
    cls: type[T], data: Any, *, where: Any, fix: str, field: str = "", skip: Iterable[str] = ()
) -> T:
    """Build dataclass ``cls`` from JSON ``data``, checking every field against the type hints
    (``int``, ``float``, ``str``, ``bool``, ``None``, unions, ``list[X]``, ``dict[str, X]``,
    ``Any``, nested dataclasses). A missing required field or a wrongly typed value raises one
    :class:`ArtifactError` naming the field (``generator.onnx.fp32``) and ``fix``. Unknown
    keys are ignored (manifests of later minor versions may add some)."""
    label = field or "the manifest"
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: {label} must be an object, got {_show(data)}; {fix}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.name in skip:
            continue
        name = f"{field}.{f.name}" if field else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ArtifactError(f"{where}: {name} is missing; {fix}")
            continue
        kwargs[f.name] = _check_value(data[f.name], hints[f.name], name, where, fix)
    return cls(**kwargs)


def _check_value(value: Any, hint: Any, name: str, where: Any, fix: str) -> Any:
    ok, out = _match(value, hint, name, where, fix)
    if not ok:
        raise ArtifactError(f"{where}: {name} must be {_describe(hint)}, got {_show(value)}; {fix}")
    return out


#: JSON scalars: which Python values fit each type hint (a bool is not an integer here)
_SCALARS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}


def _match(value: Any, hint: Any, name: str, where: Any, fix: str) -> tuple[bool, Any]:
    """(whether ``value`` fits ``hint``, the value to keep)."""
    if hint is Any:
        return True, value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for h in typing.get_args(hint):
            ok, out = _match(value, h, name, where, fix)
            if ok:
                return True, out
        return False, None
    if hint in _SCALARS:
        ok = _SCALARS[hint](value)
        return ok, (float(value) if ok and hint is float else value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            return False, None
        return True, from_json(hint, value, where=where, fix=fix, field=name)
    return _match_container(value, hint, name, where, fix)


def _match_container(value: Any, hint: Any, name: str, where: Any, fix: str) -> tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and isinstance(value, list):
        item = args[0] if args else Any
        return True, [
            _check_value(v, item, f"{name}[{i}]", where, fix) for i, v in enumerate(value)
        ]
    if origin is dict and isinstance(value, dict):
        item = args[1] if args else Any
        return True, {k: _check_value(v, item, _sub(name, k), where, fix) for k, v in value.items()}
    if origin in (list, dict):
        return False, None
    return isinstance(value, hint), value


def _sub(name: str, key: Any) -> str:
    """How a field inside ``name`` is named in messages: ``generator.onnx``, ``files['a/b']``."""
    return f"{name}.{key}" if isinstance(key, str) and key.isidentifier() else f"{name}[{key!r}]"


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is list:
        return f"a list of {_plural(typing.get_args(hint)[0])}"
    if origin is dict:
        return f"an object of {_plural(typing.get_args(hint)[1])}"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return "an object"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    if hint is Any:
        return "values"
    d = _describe(hint)
    return {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(d, d)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# -- recognising outputs ---------------------------------------------------------------------
def is_output_of(path: str | os.PathLike, kind: ArtifactKind) -> bool:
    """True when ``path`` is a directory carrying ``kind``'s manifest (format matching)."""
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return False
    for m in sorted(p.glob(kind.marker)):
        try:
            data = json.loads(m.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == kind.format:
            return True
    return False


def staging_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """What a staging directory recorded about itself (``pid``, ``host``, ``out``), or None
    when ``path`` is not one (by its name or its marker file)."""
    p = Path(path)
    marker = p / STAGING_MARKER
    m = _STAGING_RE.match(p.name)
    if not marker.is_file() and not (m and m.group("what") == "staging"):
        return None
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(marker.read_text(encoding="utf-8"))
        info = data if isinstance(data, dict) else {}
    if "pid" not in info and m:
        info["pid"] = int(m.group("pid"))
    return info


def refuse_staging_dir(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`InputError` when ``path`` is an unpublished staging directory: it may be
    incomplete (its process was killed, or is still writing it)."""
    info = staging_info(path)
    if info is None:
        return
    pid = info.get("pid")
    state = "still running" if _alive(pid, info.get("host")) else "no longer running"
    raise InputError(
        f"{path} is an unfinished staging directory (written by process {pid}, {state}), not "
        f"a published {what}: it may be incomplete. Use the finished output next to it, or "
        "re-run the command that writes it"
    )


def _alive(pid: Any, host: Any = None) -> bool:
    """Whether process ``pid`` may still be running (always True for another host's)."""
    if host not in (None, socket.gethostname()):
        return True
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


# -- staging and publishing ------------------------------------------------------------------
def check_output(out: str | os.PathLike, kind: ArtifactKind, *, overwrite: bool) -> None:
    """Fail early (:class:`InputError`) unless ``out`` can be written: its parent is a
    writable directory, and ``out`` is absent, an empty directory, or - with ``overwrite`` -
    an output of ``kind``. ragrt never replaces a directory it did not write."""
    p = Path(out)
    parent = p.parent
    if p.is_symlink():
        raise InputError(
            f"{p} is a symbolic link; ragrt does not replace links: pass the real path or "
            "another output path"
        )
    if p.exists() and not p.is_dir():
        raise InputError(f"{p} exists and is not a directory; choose another output path")
    for anc in [parent, *parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise InputError(f"cannot write {p}: {anc} is not a directory")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise InputError(f"cannot write {p}: directory {anc} is not writable")
            break
    if not p.is_dir() or not any(p.iterdir()):
        return
    if not overwrite:
        raise InputError(
            f"{p} already exists and is not empty; pass --overwrite to replace it (only a "
            f"{kind.noun} is replaced) or choose another output path"
        )
    if not is_output_of(p, kind):
        raise InputError(
            f"{p} exists and is not a {kind.noun} (it has no {kind.marker} of format "
            f"{kind.format!r}); --overwrite only replaces what `{kind.make}` wrote: remove it "
            "yourself or choose another output path"
        )


def clean_stale(out: str | os.PathLike) -> list[Path]:
    """Remove the staging directories next to ``out`` whose process is dead (a killed run), and
    finish an interrupted replacement: a moved-aside old output comes back when ``out`` is
    missing, else it is removed. Returns what was removed or restored."""
    p = Path(out)
    parent = p.parent if p.parent.is_dir() else None
    if parent is None:
        return []
    done: list[Path] = []
    for d in sorted(parent.glob(f".{glob_escape(p.name)}.ragrt-*")):
        m = _STAGING_RE.match(d.name)
        if not m or m.group("name") != p.name or not d.is_dir() or d.is_symlink():
            continue
        info = staging_info(d) or {"pid": int(m.group("pid"))}
        if _alive(info.get("pid"), info.get("host")):
            continue
        if m.group("what") == "old" and not p.exists():
            d.rename(p)  # the new output never arrived: the old one is the output again
        else:
            shutil.rmtree(d, ignore_errors=True)
        done.append(d)
    return done


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def staging_dir(out: str | os.PathLike, kind: ArtifactKind, *, overwrite: bool) -> Iterator[Path]:
    """Write an output of ``kind`` into a fresh staging directory, published as ``out`` when
    the ``with`` body completes; on any exception (or Ctrl-C) it is removed instead::

        with staging_dir(out, INDEX_KIND, overwrite=False) as tmp:
            ...write files into tmp, the manifest last...

    The staging directory is a hidden sibling, ``.OUT.ragrt-staging-PID-XXXX``, holding a
    marker file until publication: unmistakable, refused by ``ragrt serve``, and removed by
    the next run when its process was killed. An existing ``out`` (see :func:`check_output`)
    is moved aside, replaced, and only then removed.
    """
    target = Path(out)
    check_output(target, kind, overwrite=overwrite)
    clean_stale(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(
                prefix=f".{target.name}.ragrt-staging-{os.getpid()}-", dir=target.parent
            )
        )
        # mkdtemp makes 0700; the published output gets a new directory's usual mode
        # (0755 under the common umask 022), the same for every kind of output
        tmp.chmod(0o777 & ~current_umask())
        (tmp / STAGING_MARKER).write_text(
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "out": str(target)}, indent=1
            )
            + "\n"
        )
    except OSError as e:
        raise InputError(f"cannot write {target}: {e.strerror or e}") from None
    try:
        yield tmp
        publish_dir(tmp, target, kind, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` on Linux (reading it there changes
    nothing), else by setting it and restoring it at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_dir(tmp: Path, out: Path, kind: ArtifactKind, *, overwrite: bool) -> None:
    """Rename the finished directory ``tmp`` to ``out``; an existing ``out`` (an output of
    ``kind``, see :func:`check_output`) is moved aside first and removed only after the rename.

    :func:`staging_dir` calls it; a build that keeps its own durable work directory (the Ray
    build, resumable) calls it when that directory is complete."""
    check_output(out, kind, overwrite=overwrite)  # again: something may have appeared meanwhile
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.ragrt-old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    (tmp / STAGING_MARKER).unlink(missing_ok=True)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_output(path: str | os.PathLike, kind: ArtifactKind) -> bool:
    """Delete ``path`` if it is an output of ``kind`` (or an empty directory); refuse with an
    :class:`InputError` when it is anything else. False when there was nothing to delete.

    For commands that rebuild outputs they wrote before (``ragrt demo --rebuild``)."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return False
    check_output(p, kind, overwrite=True)
    shutil.rmtree(p)
    return True


__all__ = [
    "AUTO_HASH_BYTES",
    "MANIFEST_NAME",
    "STAGING_MARKER",
    "VERIFY_MODES",
    "ArtifactKind",
    "check_file_records",
    "check_output",
    "check_paths",
    "clean_stale",
    "current_umask",
    "publish_dir",
    "file_record",
    "from_json",
    "is_output_of",
    "read_manifest",
    "refuse_staging_dir",
    "remove_output",
    "safe_path",
    "sha256_file",
    "staging_dir",
    "staging_info",
    "verify_files",
]
