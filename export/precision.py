"""fp16 and int8 variants derived from the fp32 graphs.

- fp16 (for GPUs): weights and most ops in half precision, graph inputs/outputs kept fp32 so
  the runtime feeds the same arrays; ops that overflow or lose too much in fp16 (LayerNorm,
  softmax, T5's RMS-norm pieces, reductions, exp/log) are kept in fp32.
- int8 (for CPUs): ONNX Runtime dynamic quantization of MatMul/Gemm weights (``MatMulInteger``
  has no CUDA kernel, so int8 is a CPU variant).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

# ops kept in fp32 in the fp16 variant (on top of onnxconverter-common's default block list)
FP16_KEEP_FP32 = [
    # LayerNormalization stays fp16: ORT kernels accumulate in fp32 internally
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Erf",
    "Range",
    "CumSum",
]
LARGE_MODEL_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin


def _save(model, path: Path) -> None:
    import onnx

    external = model.ByteSize() > LARGE_MODEL_BYTES
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=path.name + "_data" if external else None,
    )


def to_fp16(src: Path, dst: Path) -> Path:
    import onnx
    from onnxruntime.transformers import float16

    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = list(float16.DEFAULT_OP_BLOCK_LIST) + FP16_KEEP_FP32
        fp16 = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=block, disable_shape_infer=True
        )
    _save(fp16, dst)
    return dst


@contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs advice on the root logger at WARNING level ("consider
    pre-processing before quantization", once per graph): not the user's business here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def to_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_root_logger():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            extra_options={"MatMulConstBOnly": True},
            use_external_data_format=src.stat().st_size > LARGE_MODEL_BYTES,
        )
    return dst


CONVERTERS = {"fp16": to_fp16, "int8": to_int8}


def to_int8_nbits(src: Path, dst: Path, block_size: int = 32) -> Path:
    """int8 weights in blocks of ``block_size`` along K (``MatMulNBits``, 8 bits, symmetric),
    computed with int8 activations quantized per block of each row (``accuracy_level=4``)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    dst.parent.mkdir(parents=True, exist_ok=True)
    q = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=8,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        op_types_to_quantize=("MatMul",),
    )
    q.process()
    _save(q.model.model, dst)
    return dst
