"""One error hierarchy for all of ragrt.

Every error a user can cause (bad input, missing or corrupt artifacts, an unsupported model)
is a :class:`RagrtError` whose message names the problem *and* the fix. The CLI prints
``error: <message>`` and exits 2; the Triton models turn the same errors into error responses;
the client maps server errors back onto these classes.
"""

from __future__ import annotations


class RagrtError(Exception):
    """Base class of every error ragrt raises on purpose."""

    #: machine-readable kind, stable across versions (used over the wire by the Triton models)
    code = "ragrt_error"


class InputError(RagrtError, ValueError):
    """A request is malformed: empty question, n_docs out of range, wrong array shape, ..."""

    code = "invalid_input"


class ArtifactError(RagrtError):
    """An artifact directory (model or index) is missing, incomplete, corrupt or mismatched."""

    code = "bad_artifact"


class UnsupportedModelError(RagrtError):
    """A checkpoint whose model type or family ragrt cannot export or run."""

    code = "unsupported_model"


class DeviceError(RagrtError):
    """The requested device or execution provider is not available on this machine."""

    code = "device_unavailable"


class DependencyError(RagrtError, ImportError):
    """An optional dependency is missing or broken: an extra (``export``, ``serve``, ``dev``), or
    the compute stack (``cpu`` or ``gpu``: ONNX Runtime + FAISS), or both builds of one library.
    Also an ImportError, so code that guards an optional import catches it."""

    code = "missing_dependency"


class ServerError(RagrtError):
    """A Triton server answered with an error, or could not be reached after retries."""

    code = "server_error"


class Cancelled(RagrtError):
    """A generation was stopped before it finished: the consumer of a stream closed it, or the
    client of a served request went away (checked once per decode step)."""

    code = "cancelled"


def error_from_code(code: str, message: str) -> RagrtError:
    """Rebuild the ragrt error class named by ``code`` (used by the client)."""
    for cls in (
        InputError,
        ArtifactError,
        UnsupportedModelError,
        DeviceError,
        DependencyError,
        ServerError,
        Cancelled,
    ):
        if cls.code == code:
            return cls(message)
    return RagrtError(message)
