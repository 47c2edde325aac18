"""Triton Python-backend model ``rag``: see :class:`ragrt.triton_models.backend.RagModel`."""

from ragrt.triton_models.backend import RagModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
