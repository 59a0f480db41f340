"""Everything that touches PyTorch lives here: checkpoint reading, reference models, weight mapping."""
