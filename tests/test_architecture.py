"""Import boundaries: the package tree is the architecture, and its arrows point one way.

    ragrt.errors / results / inputs / tracing  <-  ragrt.runtime  <-  ragrt.retrieval  <-  ragrt.engine
        <-  ragrt.serving  <-  ragrt.cli (which alone may reach export/triton_models/benchmarks)

Checked statically over every ``import`` in the source, lazy ones inside functions included,
so a forbidden import fails here even on a code path no other test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> folder, as pyproject's package-dir maps them
FOLDERS = {
    "ragrt": ROOT / "engine",
    "ragrt.export": ROOT / "export",
    "ragrt.triton_models": ROOT / "triton_models",
    "ragrt.benchmarks": ROOT / "benchmarks",
}
HEAVY = ("torch", "transformers", "optimum", "onnx", "onnxconverter_common", "ray")
OUTSIDE_RUNTIME = ("ragrt.export", "ragrt.triton_models", "ragrt.benchmarks", "ragrt.cli")

# module prefix -> what it must never import (prefix match on the imported module)
RULES: dict[str, tuple[str, ...]] = {
    "ragrt.runtime": (
        "ragrt.retrieval",
        "ragrt.engine",
        "ragrt.serving",
        *OUTSIDE_RUNTIME,
        *HEAVY,
    ),
    "ragrt.retrieval": ("ragrt.engine", "ragrt.serving", *OUTSIDE_RUNTIME, *HEAVY),
    "ragrt.engine": ("ragrt.serving", *OUTSIDE_RUNTIME, *HEAVY),
    "ragrt.evaluation": ("ragrt.serving", *OUTSIDE_RUNTIME, *HEAVY),
    "ragrt.serving": ("ragrt.engine", *OUTSIDE_RUNTIME, *HEAVY),
    "ragrt.errors": ("ragrt.",),
    "ragrt.artifacts": tuple(
        f"ragrt.{m}"
        for m in (
            "runtime",
            "retrieval",
            "engine",
            "serving",
            "cli",
            "results",
            "inputs",
            "export",
            "triton_models",
            "benchmarks",
        )
    ),
    "ragrt.tracing": ("ragrt.",),  # stage hooks: every layer calls them, they import no layer
    "ragrt.results": ("ragrt.runtime", "ragrt.retrieval", "ragrt.engine", "ragrt.serving"),
    "ragrt.inputs": ("ragrt.runtime", "ragrt.retrieval", "ragrt.engine", "ragrt.serving"),
    "ragrt.triton_models": ("ragrt.cli", "ragrt.benchmarks", "ragrt.export"),
    "ragrt.benchmarks": ("ragrt.cli",),
    "ragrt.export": ("ragrt.cli", "ragrt.serving", "ragrt.triton_models", "ragrt.benchmarks"),
}
# module -> heavy imports it alone may make, lazily (the Ray build is Ray's only user;
# tests/test_distributed_build.py checks that importing it imports no Ray)
EXEMPT: dict[str, tuple[str, ...]] = {"ragrt.retrieval.distributed": ("ray",)}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "ragrt" and parts and parts[0] in ("export", "triton_models", "benchmarks"):
                continue
            if "1" in parts:  # triton_models/<model>/1/model.py: thin Triton entry points
                parts = [p for p in parts if p != "1"]
            out[".".join([pkg, *parts])] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _matches(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(prefix.rstrip(".") + ".")


MODULES = _modules()


def test_the_layout_is_what_the_rules_describe():
    for pkg in ("ragrt.runtime", "ragrt.retrieval", "ragrt.serving", "ragrt.cli", "ragrt.engine"):
        assert any(_matches(m, pkg) for m in MODULES), f"{pkg} is missing"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module):
    rules = [r for prefix, r in RULES.items() if _matches(module, prefix)]
    bad = sorted(
        name
        for name in _imports(MODULES[module], module)
        for forbidden in (f for r in rules for f in r)
        if _matches(name, forbidden)
        and not _matches(name, module)
        and not any(_matches(name, x) for x in EXEMPT.get(module, ()))
    )
    assert not bad, (
        f"{module} imports {bad}, against the package arrows (tests/test_architecture.py)"
    )


def test_nothing_imports_the_cli():
    users = sorted(
        m
        for m, path in MODULES.items()
        if not _matches(m, "ragrt.cli")
        and m != "ragrt.__main__"
        and any(_matches(n, "ragrt.cli") for n in _imports(path, m))
    )
    assert not users, f"{users} import ragrt.cli; only the `ragrt` entry point may"


def test_the_rules_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ragrt.serving.client import RagClient\n")
    assert "ragrt.serving.client" in _imports(bad, "ragrt.runtime.bad")


def test_docs_name_only_modules_that_exist():
    """docs/architecture.md follows the code: every ``ragrt.x.y[.Name]`` it names exists (the
    longest module prefix is a module; a trailing name is defined in that module)."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    bad = []
    for ref in sorted(set(re.findall(r"ragrt(?:\.[A-Za-z_]+)+", text))):
        parts = ref.split(".")
        k = max(n for n in range(1, len(parts) + 1) if ".".join(parts[:n]) in MODULES)
        rest = parts[k:]
        source = MODULES[".".join(parts[:k])].read_text()
        if len(rest) > 1 or (rest and not re.search(rf"^(class|def) {rest[0]}\b", source, re.M)):
            bad.append(ref)
    assert not bad, f"docs/architecture.md names what does not exist: {bad}"
