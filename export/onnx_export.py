"""fp32 ONNX graphs: pooled text encoders (torch.onnx) and the seq2seq generator (optimum).

DPR and RAG are not in optimum's export registry, so encoders are exported with a plain
``torch.onnx.export`` of a small wrapper that bakes the pooling into the graph; the generator
goes through optimum's ``text2text-generation-with-past`` exporter (encoder, decoder,
decoder-with-past).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from pathlib import Path

from ragrt.export.sources import EncoderSource, GeneratorSource

OPSET = 17
GENERATOR_FILES = {
    "encoder": "encoder_model.onnx",
    "decoder": "decoder_model.onnx",
    "decoder_with_past": "decoder_with_past_model.onnx",
}


def pooled_encoder_module(src: EncoderSource):
    """Wrap an HF encoder so that its only output is the pooled (normalised) embedding."""
    import torch

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = src.model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.model(**kwargs)
            if src.pooling == "pooler":
                emb = out.pooler_output
            elif src.pooling == "cls":
                emb = out.last_hidden_state[:, 0]
            else:  # mean over non-pad tokens, as sentence-transformers does
                h = out.last_hidden_state
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            if src.normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            return emb

    return PooledEncoder().eval()


def export_encoder(src: EncoderSource, out_path: Path) -> Path:
    import torch

    module = pooled_encoder_module(src)
    sample = src.tokenizer(["what is retrieval augmented generation?"], return_tensors="pt")
    args = tuple(
        sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in src.input_names
    )
    dyn = {n: {0: "batch", 1: "sequence"} for n in src.input_names}
    dyn["embeddings"] = {0: "batch"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(out_path),
            input_names=list(src.input_names),
            output_names=["embeddings"],
            dynamic_axes=dyn,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return out_path


def export_generator(src: GeneratorSource, out_dir: Path) -> dict[str, Path]:
    """encoder / decoder / decoder-with-past ONNX files of a BART or T5 generator."""
    import logging

    from optimum.exporters.onnx import onnx_export_from_model

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("optimum", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)
        onnx_export_from_model(
            # optimum patches the model it exports (e.g. T5's encoder config gets use_cache=True,
            # which breaks a later torch generate()); export a copy and keep the original clean
            copy.deepcopy(src.model),
            tmp,
            task="text2text-generation-with-past",
            opset=OPSET,
            no_post_process=True,  # no merged decoder: an If node blocks CUDA graphs
            do_validation=False,  # ragrt's own parity report replaces optimum's check
        )
        paths = {}
        for role, fname in GENERATOR_FILES.items():
            dst = out_dir / fname
            shutil.move(str(Path(tmp) / fname), dst)
            data = Path(tmp) / (fname + "_data")
            if data.exists():
                shutil.move(str(data), out_dir / data.name)
            paths[role] = dst
    return paths
