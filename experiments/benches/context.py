"""What every benchmark shares: parsed arguments, devices, datasets (real or synthetic stand-ins, loaded once),
batch pools and the donating step runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import experiments.benchlib as benchlib

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
BEAUTY = dict(users=22363, items=12102)  # sizes for the synthetic stand-ins
ML1M = dict(users=6040, items=3417)
POOL = 4  # distinct batches cycled through by the step benches (not always the same cached batch)
# every backend cached and uncached, plus IVF (the fast approximate choice on CPU)
FTRAGREC_VARIANTS = {
    "exact-cached": ("exact", True),
    "exact-uncached": ("exact", False),
    "faiss-cached": ("faiss", True),
    "faiss-uncached": ("faiss", False),
    "ivf-cached": ("ivf", True),
}


class SyntheticDataset:
    """Random users shaped like the real datasets, RecBole's samples: leave-one-out, every training prefix a
    sample, the last max_len items kept. lengths="beauty": histories of 5 + a geometric tail (mean 8.9 items
    like Amazon Beauty, a few longer than max_len); "uniform": every history max_len + 3 long, so training
    prefix lengths are uniform over 1..max_len (no short-sequence advantage for length bucketing)."""

    def __init__(self, name: str, n_users: int, n_items: int, max_len: int, seed: int, lengths: str = "beauty"):
        from ftragrec_jax.data.samples import SequenceSamples

        rng = np.random.default_rng(seed)
        if lengths == "uniform":
            hist_len = np.full(n_users, max_len + 3)
        else:
            hist_len = 4 + rng.geometric(1 / 4.9, size=n_users)
        splits = {"train": [], "valid": [], "test": []}
        for u, n in enumerate(hist_len, start=1):
            hist = rng.integers(1, n_items, size=n)
            for t in range(1, n):
                split = "test" if t == n - 1 else "valid" if t == n - 2 else "train"
                splits[split].append((u, hist[max(0, t - max_len) : t], hist[t], t))

        def pack(rows):
            seq = np.zeros((len(rows), max_len), np.int32)
            for i, (_, prefix, _, _) in enumerate(rows):
                seq[i, : len(prefix)] = prefix
            return SequenceSamples.from_matrix(
                seq,
                np.array([len(r[1]) for r in rows], np.int32),
                np.array([r[2] for r in rows], np.int32),
                np.array([r[0] for r in rows], np.int32),
                np.array([r[3] for r in rows], np.int32),
            )

        self.name = name
        self.train, self.valid, self.test = (pack(splits[s]) for s in ("train", "valid", "test"))
        self.n_items, self.n_users = n_items, n_users


class Context:
    """Parsed arguments plus what every bench shares: devices, datasets (loaded once)."""

    def __init__(self, args):
        self.args = args
        self._datasets = {}
        self.jax_device = benchlib.jax_device()
        self.torch = None
        self.torch_dev = None
        self.torch_device = "torch not installed"
        try:
            from converters.reference import torch_bench
        except ImportError as e:
            self.torch_missing = f"not available: torch missing ({e})"
        else:
            self.torch = torch_bench
            self.torch_dev = torch_bench.setup(args.device, args.threads)
            self.torch_device = torch_bench.describe_device(self.torch_dev.type)
            self.torch_missing = None

    def dataset(self, which: str):
        """ "beauty" or "ml-1m": real (shared folder, embedded Beauty) or synthetic of the same size."""
        if which in self._datasets:
            return self._datasets[which]
        a = self.args
        if a.data == "synthetic":
            ds = SyntheticDataset(f"synthetic-{which}", a.users, a.items, a.max_len, a.seed)
        else:
            from ftragrec_jax.data.dataset import default_dataset_path, load_dataset

            path = SHARED_DATA / ("amazon/Beauty.txt" if which == "beauty" else "ml-1m/ml-1m.txt")
            if not path.exists() and which == "beauty":
                path = default_dataset_path()
            if path.exists():
                ds = load_dataset(path, max_seq_length=a.max_len)
            else:
                size = BEAUTY if which == "beauty" else ML1M
                ds = SyntheticDataset(f"synthetic-{which}-size", size["users"], size["items"], a.max_len, a.seed)
        self._datasets[which] = ds
        return ds

    def torch_side(self, name: str, make, **kw) -> benchlib.Side:
        """A PyTorch side, or a skipped row saying why torch cannot run here."""
        if self.torch is None:
            return benchlib.Side(name, "-", lambda: None, skip=self.torch_missing, reference=True, **kw)
        try:
            fn = make()
        except Exception as e:  # e.g. a reference model that cannot run on this device
            return benchlib.Side(name, self.torch_device, lambda: None, skip=benchlib._reason(e), reference=True, **kw)
        return benchlib.Side(name, self.torch_device, fn, reference=True, **kw)


def device_batch(batch: dict, fields) -> dict:
    import jax.numpy as jnp

    from ftragrec_jax import parallel

    return {k: jnp.asarray(parallel.int32_host(batch[k])) for k in fields}


def batch_pool(samples, batch_size: int, seed: int, n: int = POOL) -> list[dict]:
    from ftragrec_jax.data.batches import iterate_batches

    out = []
    for b in iterate_batches(samples, batch_size, seed=seed):
        out.append(b)
        if len(out) == n:
            break
    return out


def copy_tree(tree):
    import jax

    return jax.tree.map(lambda x: x.copy(), tree)


def donating_step(step, params, opt_state, pool: list[dict], extra=lambda i: ()):
    """Zero-argument callable running one `step(params, opt_state, batch, *extra(i))` per call: threads the
    donated state through calls, cycles over the batch pool, blocks until the device is done."""
    import jax

    state = {"p": params, "o": opt_state, "i": 0}

    def run():
        i = state["i"]
        p, o, metrics = step(state["p"], state["o"], pool[i % len(pool)], *extra(i))
        state.update(p=p, o=o, i=i + 1)
        jax.block_until_ready((p, o, metrics))
        return metrics

    return run


def ivf_factory(n: int) -> str:
    """IVF1024,Flat, with fewer lists when the base is too small to train 1024 (FAISS wants >= 39 per list)."""
    return f"IVF{max(1, min(1024, n // 39))},Flat"
