"""Triton Python-backend model ``question_tokenizer``: see :class:`ragrt.triton_models.backend.TokenizerModel`."""

from ragrt.triton_models.backend import TokenizerModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
