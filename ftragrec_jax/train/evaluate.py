"""Full-sort evaluation of one split with a progress bar, and the protocol record stored with results."""

from __future__ import annotations

import math
import sys

from ftragrec_jax.config import Config


def evaluate_split(score_fn, dataset, split: str, cfg: Config, *, show_progress: bool | None = None,
                   mesh=None) -> dict:
    """RecBole-named metrics at every K in cfg.topk for `split` ("valid" or "test"), data-parallel over `mesh`
    (None = the mesh of config key `mesh`); score_fn gets batches sharded along its data axis."""
    from ftragrec_jax.evaluation import full_sort_evaluate

    return dict(_over_split(full_sort_evaluate, score_fn, dataset, split, cfg, show_progress, mesh,
                            ks=tuple(cfg.topk)))


def split_ranks(score_fn, dataset, split: str, cfg: Config, *, show_progress: bool | None = None,
                mesh=None):
    """int64 [N]: every sample's target rank in `split`, batched and masked as evaluate_split ranks them
    (for paired comparisons of two models on the same users)."""
    from ftragrec_jax.evaluation import sample_ranks

    return _over_split(sample_ranks, score_fn, dataset, split, cfg, show_progress, mesh)


def _over_split(run, score_fn, dataset, split: str, cfg: Config, show_progress: bool | None, mesh, **kw):
    """run(score_fn, samples, n_items, ...) over `split` with the configured batch size, history masking and
    mesh, behind an "Evaluate <split>" progress bar that advances one batch per score_fn call."""
    from tqdm.auto import tqdm

    from ftragrec_jax import parallel

    mesh = parallel.make_mesh(cfg.mesh) if mesh is None else mesh
    samples = getattr(dataset, split)
    show = cfg.show_progress if show_progress is None else show_progress
    total = math.ceil(len(samples) / cfg.eval_batch_size)
    with tqdm(total=total, desc=f"Evaluate {split}", disable=not show, leave=False, dynamic_ncols=True,
              file=sys.stderr) as bar:
        def counted(item_seq, item_seq_len, batch):
            out = score_fn(item_seq, item_seq_len, batch)
            bar.update(1)
            return out

        return run(counted, samples, dataset.n_items, batch_size=cfg.eval_batch_size,
                   history=history_for(dataset, split, cfg), mesh=mesh, **kw)


def history_for(dataset, split: str, cfg: Config):
    """The items to hide per evaluated user when mask_history is on (None = RecBole's protocol)."""
    if not cfg.mask_history:
        return None
    from ftragrec_jax.evaluation import split_history

    return split_history(dataset, split)


def format_metrics(metrics: dict) -> str:
    """RecBole's `recall@10 : 0.0512    mrr@10 : 0.0213` layout on one line."""
    return "    ".join(f"{k} : {v:.4f}" for k, v in metrics.items())


def protocol_info(dataset, cfg: Config) -> dict:
    """How the numbers were obtained, stored beside them so they are never compared blindly."""
    from ftragrec_jax.evaluation import TIE_RULE

    return {
        "ranking": "full sort over all items (padding excluded)",
        "ties": TIE_RULE,
        "split": "leave-one-out (last item test, second-to-last valid)",
        "mask_history": cfg.mask_history,
        "topk": list(cfg.topk),
        "dataset": {
            "name": dataset.name, "n_users": int(dataset.n_users), "n_items": int(dataset.n_items),
            "n_interactions": int(dataset.n_interactions), "settings": dict(dataset.settings),
            "train_samples": len(dataset.train), "valid_samples": len(dataset.valid),
            "test_samples": len(dataset.test),
        },
    }


def metrics_table(results: dict) -> str:
    """valid/test side by side, one metric per row, for the terminal."""
    splits = [s for s in ("valid", "test") if s in results]
    names = list(results[splits[0]]) if splits else []
    width = max([len(n) for n in names] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>8}" for s in splits)]
    for name in names:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{results[s][name]:>8.4f}" for s in splits))
    return "\n".join(lines)
