"""Triton Python-backend model ``rag_stream``: see :class:`ragrt.triton_models.backend.RagStreamModel`."""

from ragrt.triton_models.backend import RagStreamModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
