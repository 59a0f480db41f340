"""The benchmarks of `python -m experiments.bench`, one module per kind; context.py holds what they share
(arguments, devices, datasets, batch pools, the donating step runner)."""
