"""Triton Python-backend model ``retrieve``: see :class:`ragrt.triton_models.backend.RetrieveModel`."""

from ragrt.triton_models.backend import RetrieveModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
