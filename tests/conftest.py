import os
from pathlib import Path

import jax
import pytest

# Parity needs full float32 matmuls (GPUs default to TF32).
jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} not present")
    return SHARED


try:  # keep torch polite on a 2-core machine
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
