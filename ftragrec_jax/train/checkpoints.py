"""Training-state checkpoints under RUN/checkpoints/: what a restarted run needs to continue bit-identically.

One Orbax step per completed epoch, named by the number of completed epochs. Each holds the arrays
(params, optimizer state, the task's host state) and a JSON record of the loop: global step, best valid
score and epoch, patience counter, the per-epoch history (so metrics.jsonl can be rebuilt) and the config.
The data position needs no storage: an epoch's order is a pure function of (seed, epoch), and dropout keys
are `fold_in(seed key, global step)`.

Orbax writes each step into a temporary folder and renames it when complete, so a process killed
mid-write leaves a temporary folder that is ignored (and removed on the next start), never a half checkpoint.
The loop record also holds a SHA-256 of the arrays, checked on restore, so a checkpoint damaged after its
commit (a truncated, missing or bit-flipped file) is refused with a one-line error, never half-read. Process 0
then lists the size and SHA-256 of every file of the committed step in FILES_JSON inside it; restore checks
those before Orbax opens anything, so a damaged file is refused by name (Orbax's reader threads, left
half-way, would also print tracebacks at exit). A step without that file (killed between the commit and the
listing) is restored on the checksum alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ftragrec_jax.atomic import (
    check_manifest_format,
    files_manifest,
    manifest_mismatch,
    sha256_arrays,
    write_json_atomic,
)
from ftragrec_jax.errors import CheckpointError, short_reason

DIGEST_KEY = "arrays_sha256"  # in the loop record: checksum of the arrays item of the same checkpoint
FILES_JSON = "files.json"  # in a step folder, beside its items: {path: [size, sha256]} of the items' files
ITEMS = ("arrays", "loop")


def _ocp():
    import orbax.checkpoint as ocp  # slow import; only runs that checkpoint need it

    return ocp


class TrainCheckpoints:
    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # synchronous: the next step donates the params buffers, and a checkpoint is small
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest(self) -> int | None:
        """Completed epochs of the newest complete checkpoint, or None."""
        self._mgr.reload()
        return self._mgr.latest_step()

    def save(self, epochs_done: int, arrays: dict, loop: dict) -> None:
        ocp = _ocp()
        loop = {**loop, DIGEST_KEY: arrays_digest(arrays)}
        self._mgr.save(
            epochs_done,
            args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), loop=ocp.args.JsonSave(loop)),
            force=True,
        )
        self._mgr.wait_until_finished()
        if jax.process_index() == 0:
            step = self._step_dir(epochs_done)
            listing = {}
            for item in ITEMS:
                listing.update({f"{item}/{k}": v for k, v in files_manifest(step / item).items()})
            write_json_atomic(step / FILES_JSON, listing)

    def restore(self, epochs_done: int, like: dict) -> tuple[dict, dict]:
        """(arrays shaped and placed like `like`, loop record) of a checkpoint."""
        ocp = _ocp()
        problem = self._files_problem(epochs_done)
        if problem is not None:
            raise self._refusal(epochs_done, problem)
        try:
            out = self._mgr.restore(
                epochs_done, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(like), loop=ocp.args.JsonRestore())
            )
        except Exception as e:  # Orbax raises many types for a damaged or mismatched checkpoint
            raise self._refusal(epochs_done, f"{type(e).__name__}: {short_reason(e)}") from None
        loop = dict(out["loop"])
        stored = loop.pop(DIGEST_KEY, None)  # absent in checkpoints written before it existed
        if stored is not None and stored != arrays_digest(out["arrays"]):
            raise self._refusal(
                epochs_done,
                "the arrays read back differ from the ones saved: checksum mismatch, the files were damaged after "
                "the save",
            )
        return out["arrays"], loop

    def _step_dir(self, epochs_done: int) -> Path:
        return self.directory / str(epochs_done)  # Orbax names a step's folder by the step number

    def _refusal(self, epochs_done: int, reason: str) -> CheckpointError:
        return CheckpointError(
            f"{self._step_dir(epochs_done)}: cannot restore the training state ({reason}); "
            f"delete that folder to fall back to an older checkpoint"
        )

    def _files_problem(self, epochs_done: int) -> str | None:
        """What is wrong with the files of a step against its FILES_JSON, or None (also when it has none)."""
        step = self._step_dir(epochs_done)
        listing_path = step / FILES_JSON
        if not listing_path.is_file():
            return None
        try:
            listing = json.loads(listing_path.read_text(encoding="utf-8"))
            check_manifest_format(listing, str(listing_path))
        except (OSError, ValueError) as e:  # ValueError: bad JSON, bad UTF-8 or a bad listing
            return f"{listing_path}: unreadable file listing ({type(e).__name__}: {short_reason(e)})"
        return manifest_mismatch(step, listing)

    def close(self) -> None:
        self._mgr.close()


def arrays_digest(tree) -> str | None:
    """sha256_arrays over every leaf in tree order, unlabelled (PRNG keys as their key data). None when a leaf
    is not fully addressable from this process (multi-host sharding)."""

    leaves = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if not getattr(leaf, "is_fully_addressable", True):
            return None
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        leaves.append(("", np.asarray(jax.device_get(leaf))))
    return sha256_arrays(leaves)


def arrays_like(params, opt_state, host_state: dict | None) -> dict[str, Any]:
    tree = {"params": params, "opt_state": opt_state}
    if host_state is not None:
        tree["host"] = host_state
    return tree
