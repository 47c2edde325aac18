"""The built wheel: everything under ragrt/, every source file shipped, nothing bare."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "engine": "ragrt",
    "export": "ragrt/export",
    "triton_models": "ragrt/triton_models",
    "benchmarks": "ragrt/benchmarks",
}


def test_wheel_ships_every_module_under_ragrt(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (whl,) = tmp_path.glob("ragrt-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    top = {n.split("/")[0] for n in names if not n.startswith("ragrt-")}
    assert top == {"ragrt"}, top
    expected = set()
    for folder, pkg in FOLDERS.items():
        for f in (ROOT / folder).rglob("*.py"):
            rel = f.relative_to(ROOT / folder)
            if folder == "engine" and rel.parts[0] in FOLDERS:
                continue
            expected.add(f"{pkg}/{rel.as_posix()}")
    assert expected - names == set(), sorted(expected - names)
    assert "ragrt/demo/python_stdlib_docs.jsonl" in names
