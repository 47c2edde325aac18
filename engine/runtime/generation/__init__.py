"""Torch-free decoding: logits processors, greedy/beam search, RAG-Token and RAG-Sequence.

Everything here works on numpy arrays and a :class:`ragrt.runtime.generator.Seq2SeqGenerator`; the
semantics follow transformers 4.57 (``generate``, ``_sample``, the vectorized
``_beam_search``) so that outputs are token-for-token identical.
"""

from ragrt.runtime.generation.params import GenerationParams
from ragrt.runtime.generation.search import Hypothesis

__all__ = ["GenerationParams", "Hypothesis"]
