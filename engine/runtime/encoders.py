"""Question and context encoders on ONNX Runtime: text in, pooled embeddings out.

Pooling (DPR's pooler output, CLS, or sentence-transformers mean pooling with optional L2
normalisation) is part of the exported graph, so this module only tokenizes, batches and runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ragrt.errors import InputError
from ragrt.runtime import manifest as manifest_mod
from ragrt.runtime.manifest import ArtifactManifest, EncoderSpec
from ragrt.runtime.sessions import SessionOptions, open_session
from ragrt.runtime.text import TextTokenizer

if TYPE_CHECKING:  # pragma: no cover
    from onnxruntime import InferenceSession


@dataclass
class TextEncoder:
    """One exported encoder at one precision."""

    spec: EncoderSpec
    tokenizer: TextTokenizer
    session: InferenceSession
    precision: str
    onnx_sha256: str

    @classmethod
    def from_manifest(
        cls,
        m: ArtifactManifest,
        component: str = "question_encoder",
        precision: str = "fp32",
        session_options: SessionOptions | None = None,
    ) -> TextEncoder:
        spec = m.encoder(component)
        if precision not in spec.onnx:
            raise InputError(f"{component} has no {precision} variant in {m.root}")
        rel = spec.onnx[precision]
        tok = TextTokenizer(
            m.path(spec.tokenizer),
            pad_token_id=spec.pad_token_id,
            clean_up=spec.clean_up_tokenization_spaces,
        )
        sess = open_session(m.path(rel), session_options)
        return cls(spec, tok, sess, precision, m.files[rel]["sha256"])

    @classmethod
    def load(
        cls,
        art_dir: str | os.PathLike,
        component: str = "question_encoder",
        precision: str = "fp32",
        device: str = "cpu",
    ) -> TextEncoder:
        m = manifest_mod.load(art_dir, precision=precision)
        return cls.from_manifest(m, component, precision, SessionOptions(device=device))

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def name(self) -> str:
        return self.spec.name

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer.encode_batch(texts, max_length=self.spec.max_length)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Embeddings ``[B, dim]`` float32 for already tokenized input."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.spec.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        (emb,) = self.session.run(["embeddings"], feeds)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        sort_by_length: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Embed ``texts`` in batches; returns ``[len(texts), dim]`` float32 in input order.

        Sorting by length before batching cuts the padding each batch carries (passages vary
        from a few words to 100+); results are put back in input order.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if sort_by_length:
            order = np.argsort([len(t) for t in texts], kind="stable")
        else:
            order = np.arange(len(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch")
        for s in starts:
            idx = order[s : s + batch_size]
            ids, mask = self.tokenize([texts[i] for i in idx])
            out[idx] = self.run(ids, mask)
        return out
