"""Print the interpreter and the versions of the packages a CI leg tested (one line each)."""

import platform
import sys
from importlib import metadata

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "faiss-cpu", "torch", "pyyaml", "tqdm",
            "matplotlib", "pytest", "hypothesis")

print(f"versions ({sys.argv[1] if len(sys.argv) > 1 else 'this environment'}): Python {platform.python_version()}")
for name in PACKAGES:
    try:
        print(f"  {name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"  {name} (not installed)")
