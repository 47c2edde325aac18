"""benchmarks/device_check.sh: its argument handling on a machine without a GPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_dry_run_prints_the_plan(tmp_path):
    r = _run(str(tmp_path / "out"), "--dry-run", "--skip-tensorrt", "--budget", "300")
    assert r.returncode == 0, r.stderr
    assert "budget 300s" in r.stdout
    for step in ("install:", "parity:", "bench-cuda:", "summary:"):
        assert step in r.stdout
    assert "bench-tensorrt" not in r.stdout and "tensorrt-cu12" not in r.stdout
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"
    r = _run(str(tmp_path / "out"), "--dry-run", "--wheels", "/nowhere")
    assert r.returncode == 0 and "--no-index --find-links /nowhere" in r.stdout


def test_bad_arguments_are_one_line_errors(tmp_path):
    for args, needle in [
        ((), "give an output folder"),
        ((str(tmp_path), "--budget", "soon"), "--budget must be whole seconds"),
        ((str(tmp_path), "--frobnicate"), "unknown option --frobnicate"),
        ((str(tmp_path), str(tmp_path / "b")), "one OUT_DIR only"),
    ]:
        r = _run(*args, "--dry-run")
        assert r.returncode == 2, (args, r.stdout)
        assert r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
