"""Build the demo corpus bundled with ragrt: Python standard-library documentation.

The docstrings of public stdlib modules, classes and functions (PSF license, redistributable),
cut into passages of at most ~100 words as DPR cuts Wikipedia, titled ``module.object``.
Run ``python -m ragrt.export.demo_corpus OUT.jsonl`` to regenerate the bundled file.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from pathlib import Path

MODULES = (
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "http.client",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
    "math",
    "multiprocessing",
    "operator",
    "os",
    "os.path",
    "pathlib",
    "pickle",
    "queue",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "zipfile",
    "zlib",
)
WORDS_PER_PASSAGE = 100


def _chunks(text: str, n: int = WORDS_PER_PASSAGE) -> list[str]:
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    return [" ".join(words[i : i + n]) for i in range(0, len(words), n) if words[i : i + n] != [""]]


def passages() -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for name in MODULES:
        mod = importlib.import_module(name)
        items = [(name, mod)]
        for member, obj in sorted(inspect.getmembers(mod)):
            if member.startswith("_") or getattr(obj, "__module__", name) not in (name, None):
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                items.append((f"{name}.{member}", obj))
        for title, obj in items:
            doc = inspect.getdoc(obj)
            if not doc or len(doc.split()) < 8 or doc in seen:
                continue
            seen.add(doc)
            for j, chunk in enumerate(_chunks(doc)):
                out.append({"id": f"{title}#{j}", "title": title, "text": chunk})
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0])
    rows = passages()
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} passages to {path} (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
