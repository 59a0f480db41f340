"""The PyTorch reference models (RecBole-style DuoRec and FTragrec) used by the parity tests and the PyTorch
side of the benchmarks; kept apart from the checkpoint converters, which never import them."""
