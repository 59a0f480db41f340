"""Does the retrieval tie/rerank change (after 24c8bff) move a trained FTragrec model's test metrics? Evaluate one
model directory twice, with the current exact search and with the exact search of 24c8bff patched in.

    mkdir -p /tmp/oldret && git show 24c8bff:ftragrec_jax/models/retrieval.py > /tmp/oldret/old_retrieval.py
    python experiments/results/2026-12-05_ties_on_trained_models.py MODEL_DIR [--data FILE] > OUT.json
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "/tmp/oldret")
import old_retrieval  # noqa: E402

from experiments import evaluate  # noqa: E402
from ftragrec_jax.models import search  # noqa: E402


def run(args):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "m.json"
        assert evaluate.main([*args, "--json", str(out), "--no-progress"]) == 0
        return json.loads(out.read_text())


model, rest = sys.argv[1], sys.argv[2:]
args = ["--checkpoint", model, *rest]
new = run(args)
current = search.exact_search
search.exact_search = lambda *a, **k: old_retrieval.exact_search(*a, top_k=k["top_k"], chunk_size=k.get("chunk_size", 65536))
old = run(args)
search.exact_search = current
print(json.dumps({"model": model, "new": new, "old_24c8bff": old}, indent=1))
