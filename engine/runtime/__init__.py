"""The model runtime: ONNX Runtime sessions, tokenizers, encoders, the seq2seq generator and the
decoding algorithms (RAG-Token, RAG-Sequence), all on numpy.

Nothing here knows about FAISS, passage files, Triton or the CLI: the packages above
(:mod:`ragrt.retrieval`, :mod:`ragrt.engine`, :mod:`ragrt.serving`, :mod:`ragrt.cli`) import
this one, never the reverse.
"""
