"""ragrt.export: Hugging Face checkpoints -> ONNX artifacts (needs the ``export`` extra).

This is the only part of ragrt that imports torch, transformers and optimum.
"""

from ragrt.export.pipeline import ExportOptions, ExportResult, export_artifacts

__all__ = ["ExportOptions", "ExportResult", "export_artifacts"]
