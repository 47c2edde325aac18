"""Retrieval: passage files and the memory-mapped passage store, the FAISS index (search,
shards, GPU clones) and building an INDEX_DIR.

Imports the runtime (question/context encoders, the artifact manifest); nothing in
:mod:`ragrt.runtime` imports this package.
"""
