"""Serving: the wire protocol shared with the Triton models (:mod:`ragrt.triton_models`), the
client library over ``tritonclient``, and process control of ``tritonserver``.

The runtime and the engine never import this package.
"""
