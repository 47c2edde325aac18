"""ragrt: a torch-free runtime for retrieval-augmented generation on ONNX Runtime and FAISS.

Heavy imports are lazy so that ``import ragrt`` and ``ragrt --help`` stay instant.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ragrt.errors import (
    ArtifactError,
    Cancelled,
    DeviceError,
    InputError,
    RagrtError,
    ServerError,
    UnsupportedModelError,
)

try:  # the installed distribution is the source of truth
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("ragrt")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+local"

_LAZY = {
    "RagEngine": "ragrt.engine",
    "GenerationResult": "ragrt.engine",
    "TextEncoder": "ragrt.runtime.encoders",
    "PassageIndex": "ragrt.retrieval.index",
    "RagClient": "ragrt.serving.client",
    "AsyncRagClient": "ragrt.serving.client",
    "ArtifactManifest": "ragrt.runtime.manifest",
    "Retriever": "ragrt.retrieval.retriever",
    "GenerationRequest": "ragrt.runtime.generation.request",
    "Tracer": "ragrt.tracing",
    "StageTimer": "ragrt.tracing",
    "Cancellation": "ragrt.runtime.generation.streaming",
}

__all__ = [
    "__version__",
    "RagrtError",
    "InputError",
    "ArtifactError",
    "UnsupportedModelError",
    "DeviceError",
    "ServerError",
    "Cancelled",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ragrt' has no attribute {name!r}")
