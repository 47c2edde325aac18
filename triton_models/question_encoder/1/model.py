"""Triton Python-backend model ``question_encoder``: see :class:`ragrt.triton_models.backend.QuestionEncoderModel`."""

from ragrt.triton_models.backend import QuestionEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
