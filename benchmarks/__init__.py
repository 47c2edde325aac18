"""ragrt benchmarks: harnesses timing ragrt against transformers and optimum."""
