"""ragrt.export: Hugging Face checkpoints -> ONNX artifacts (needs the ``export`` extra).

This is the only part of ragrt that imports torch, transformers and optimum.
"""

from ragrt.runtime.stack import require

# fail at import, naming the extra, rather than with a bare ModuleNotFoundError mid-export
require("ragrt.export", "export")

from ragrt.export.pipeline import (  # noqa: E402
    ExportOptions,
    ExportResult,
    export_artifacts,
    quiet_build_logs,
)

__all__ = ["ExportOptions", "ExportResult", "export_artifacts", "quiet_build_logs"]
