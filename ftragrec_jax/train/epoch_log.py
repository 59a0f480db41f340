"""What a training run tells the person watching it: one line per epoch, and warnings for settings that are
legal but probably not what was meant.

The epoch line is built from the same record that goes to metrics.jsonl, so the console and the file never
disagree:

    epoch  3  loss 9.0712 (ce 8.8694, sem_nce 2.0178)  valid mrr@10 0.0281 ndcg@10 0.0354 hit@10 0.0597 best \
        train 41.2s eval 3.1s
    epoch 1  loss 8.91 (rec_loss ..., enhanced_rec_loss ..., kl_loss ...)  fallback 3.1% (4.8 nb)  short 0.02% \
        index kept  valid ...

(one line each in the log; wrapped here)

Epochs count from 0, as in metrics.jsonl and results.json's best_epoch.
"""

from __future__ import annotations

import numpy as np

# per-step scalars that are diagnostics, not loss terms (shown apart, or only in metrics.jsonl)
NOT_TERMS = ("loss", "grad_norm", "fallback_fraction", "short_fraction", "neighbours", "alpha", "temperature")
# loss terms in the order a reader follows the objective (others after them, as recorded)
TERM_ORDER = ("ce", "sem_nce", "rec_loss", "enhanced_rec_loss", "kl_loss")
# a fallback share from which FTragrec is mostly its backbone: worth a warning, not an error
HIGH_FALLBACK = 0.5


def valid_shown(valid_metric: str) -> tuple[str, ...]:
    """MRR, NDCG and HR at the K of the selection metric, plus the selection metric itself."""
    k = valid_metric.split("@")[1]
    names = [f"mrr@{k}", f"ndcg@{k}", f"hit@{k}"]
    return tuple(names if valid_metric in names else [valid_metric] + names)


def epoch_line(record: dict, *, epochs: int, valid_metric: str, patience: int, stopping_step: int) -> str:
    """One line for one epoch's metrics.jsonl record (after validation, when it ran)."""
    width = len(str(max(epochs - 1, 0)))  # 0-based like metrics.jsonl and results.json's best_epoch
    parts = [f"epoch {record['epoch']:>{width}}"]
    terms = [
        k
        for k in record
        if k not in NOT_TERMS and _is_scalar(record[k]) and k not in ("epoch", "step") and not k.endswith("_s")
    ]
    terms.sort(key=lambda k: TERM_ORDER.index(k) if k in TERM_ORDER else len(TERM_ORDER))
    loss = f"loss {record['loss']:.4f}"
    if terms:
        loss += " (" + ", ".join(f"{k} {record[k]:.4f}" for k in terms) + ")"
    parts.append(loss)
    if "fallback_fraction" in record:  # FTragrec: samples left without neighbours, and the index refresh
        nb = f" ({record['neighbours']:.1f} nb)" if "neighbours" in record else ""
        parts.append(f"fallback {100 * record['fallback_fraction']:.1f}%{nb}")
        if record.get("short_fraction"):  # the search itself found fewer than top_k allowed entries
            parts.append(f"short {100 * record['short_fraction']:.2f}%")
        if "alpha" in record:
            parts.append(f"alpha {record['alpha']:.3f}")
        if "temperature" in record:
            parts.append(f"temperature {record['temperature']:.4f}")
        refresh = record.get("index_refresh_time_s")
        parts.append(f"index refreshed {refresh:.1f}s" if refresh is not None else "index kept")
    if "valid" in record:
        valid = record["valid"]
        shown = " ".join(f"{k} {valid[k]:.4f}" for k in valid_shown(valid_metric) if k in valid)
        mark = "best" if record.get("best") else f"patience {patience}/{stopping_step}"
        parts.append(f"valid {shown} {mark}")
    times = f"train {record['train_time_s']:.1f}s"
    if "valid_time_s" in record:
        times += f" eval {record['valid_time_s']:.1f}s"
    parts.append(times)
    return "  ".join(parts)


def headline(metrics: dict, valid_metric: str) -> dict:
    """The pipeline table's metrics (HR@5/10, NDCG@5/10, MRR@10) plus the selection metric, where present."""
    names = ["hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10", valid_metric]
    return {k: metrics[k] for k in dict.fromkeys(names) if k in metrics}


def baseline_line(valid: dict, valid_metric: str, seconds: float) -> str:
    shown = " ".join(f"{k} {valid[k]:.4f}" for k in valid_shown(valid_metric) if k in valid)
    return f"frozen backbone before fine-tuning: valid {shown}  eval {seconds:.1f}s"


def setting_warnings(cfg) -> list[str]:
    """Model-independent suspicious settings (the task adds its own, e.g. FTragrec's knowledge base)."""
    out = []
    if cfg.mask_history:
        out.append(
            "mask_history is on: each user's earlier items are hidden when ranking; metrics are not "
            "comparable with RecBole/DuoRec numbers (RecBole's protocol keeps them)"
        )
    if cfg.eval_step > cfg.epochs:
        out.append(
            f"eval_step={cfg.eval_step} > epochs={cfg.epochs}: validation never runs, so there is no "
            f"early stopping and the last epoch is the model evaluated"
        )
    return out


def fallback_warning(record: dict, quality_threshold: float) -> str | None:
    share = record.get("fallback_fraction")
    if share is None or share < HIGH_FALLBACK:
        return None
    return (
        f"{100 * share:.0f}% of training samples had no neighbour with cosine >= quality_threshold="
        f"{quality_threshold} in epoch {record['epoch']}: for them FTragrec is its backbone alone "
        f"(lower quality_threshold?)"
    )


def _is_scalar(value) -> bool:
    return isinstance(value, (float, int, np.floating)) and not isinstance(value, bool)
