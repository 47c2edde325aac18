"""Triton model repository: model code and the repository builder."""
