"""Export an ftragrec-jax model directory's encoder as a PyTorch DuoRec state_dict.

    python -m converters.flax_to_duorec DIR OUT.pth

OUT.pth is a plain state_dict (DuoRec's exact keys) that `torch.load(OUT, weights_only=True)`
accepts and RecBole's DuoRec/SASRec `load_state_dict` takes (strict=False for DuoRec's extra
modules, which carry no weights). Written to a temp file and renamed, so OUT is never half-written.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

from ftragrec_jax.atomic import write_atomic
from ftragrec_jax.errors import CheckpointError, FtragrecError


def export(model_dir, out) -> dict:
    import numpy as np
    import torch

    from converters.mapping import encoder_to_torch_state
    from ftragrec_jax.model_dir import encoder_from_model_dir

    encoder, meta, _ = encoder_from_model_dir(model_dir)
    state = OrderedDict(
        (k, torch.from_numpy(np.array(v, copy=True))) for k, v in encoder_to_torch_state(encoder).items()
    )
    out = Path(out)
    if out.is_dir():
        raise CheckpointError(f"{out}: is a directory, expected a .pth file path")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: torch.save(state, f))
    return {"keys": list(state), "n_params": int(sum(t.numel() for t in state.values())), "model": meta["model"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.flax_to_duorec", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="ftragrec-jax model directory (model.json + params/)")
    ap.add_argument("out", help="output .pth file (plain PyTorch state_dict)")
    args = ap.parse_args(argv)
    try:
        r = export(args.model_dir, args.out)
    except FtragrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"exported the {r['model']} encoder of {args.model_dir} -> {args.out}: "
        f"{len(r['keys'])} keys, {r['n_params']:,} parameters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
