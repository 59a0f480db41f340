"""Learning-curve pictures from run folders' metrics.jsonl: every train loss term and valid MRR@10/NDCG@10.

A run folder holds one stage; a pipeline folder (RUN/duorec + RUN/ftragrec) holds two, drawn side by side on
the same axes so the backbone and FTragrec curves can be compared. Uses matplotlib's Agg canvas directly (no
pyplot, no display needed) and writes the PNG atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ftragrec_jax.atomic import write_atomic
from ftragrec_jax.errors import DataError

PNG_NAME = "learning_curves.png"
VALID_METRICS = ("mrr@10", "ndcg@10")
PIPELINE_STAGES = ("duorec", "ftragrec")
# per-epoch bookkeeping in metrics.jsonl that is not a training curve
# per-epoch diagnostics, drawn after the loss terms
DIAGNOSTICS = ("fallback_fraction", "neighbours", "grad_norm")
NOT_CURVES = {
    "epoch",
    "step",
    "train_time_s",
    "compile_time_s",
    "valid_time_s",
    "index_refresh_time_s",
    "valid_refresh_time_s",
    "best",
}


def read_metrics(path) -> list[dict]:
    """The per-epoch records of a run folder's metrics.jsonl (a missing file is an empty run)."""
    src = Path(path) / "metrics.jsonl"
    if not src.exists():
        return []
    out = []
    for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{src}:{n}: not a JSON object ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
            raise DataError(f"{src}:{n}: expected an object with an integer 'epoch'")
        out.append(rec)
    return out


def stages(run_dir) -> list[tuple[str, list[dict]]]:
    """[(stage name, records)]: one stage for a run folder, two for a pipeline folder."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").exists():
        return [(run_dir.name, read_metrics(run_dir))]
    found = [(s, read_metrics(run_dir / s)) for s in PIPELINE_STAGES if (run_dir / s / "metrics.jsonl").exists()]
    if not found:
        raise DataError(f"{run_dir}: no metrics.jsonl here nor in {'/ or '.join(PIPELINE_STAGES)}/: not a run folder")
    return found


def _series(records: list[dict]) -> dict[str, tuple[list, list]]:
    """panel name -> (epochs, values): scalar train terms, and valid metrics as 'valid mrr@10'."""
    out: dict[str, tuple[list, list]] = {}
    for rec in records:
        for key, value in rec.items():
            if key in NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out.setdefault(key, ([], []))
            out[key][0].append(rec["epoch"])
            out[key][1].append(value)
        for metric in VALID_METRICS:
            value = (rec.get("valid") or {}).get(metric)
            if isinstance(value, (int, float)):
                out.setdefault(f"valid {metric}", ([], []))
                out[f"valid {metric}"][0].append(rec["epoch"])
                out[f"valid {metric}"][1].append(value)
    return out


def _labels(run_dirs: list[Path]) -> list[str]:
    """Shortest distinct names: the folder name, or more of the path where names repeat."""
    for depth in range(1, 6):
        names = ["/".join(p.absolute().parts[-depth:]) for p in run_dirs]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in run_dirs]


def plot_runs(run_dirs, out, title: str | None = None) -> Path:
    """Overlay the learning curves of one or more run (or pipeline) folders in one PNG at `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dirs = [Path(p) for p in run_dirs]
    lines = []  # (panel, label, epochs, values)
    for label, run_dir in zip(_labels(run_dirs), run_dirs):
        found = stages(run_dir)
        for stage, records in found:
            name = (
                label
                if len(found) == 1 and len(run_dirs) > 1
                else (stage if len(run_dirs) == 1 else f"{label}/{stage}")
            )
            for panel, (xs, ys) in _series(records).items():
                lines.append((panel, name, xs, ys))
    if not lines:
        raise DataError(f"{', '.join(map(str, run_dirs))}: no completed epoch to plot yet")
    valid = [f"valid {m}" for m in VALID_METRICS]
    panels = sorted({p for p, *_ in lines if p not in valid}, key=lambda p: (p != "loss", p in DIAGNOSTICS, p))
    panels += [p for p in valid if any(q == p for q, *_ in lines)]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    names = list(dict.fromkeys(name for _, name, *_ in lines))
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for p, name, xs, ys in lines:
            if p == panel:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name, color=colors[name])
        ax.set_title(panel if panel.startswith("valid") else f"train {panel}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.suptitle(title or ", ".join(str(p) for p in run_dirs), fontsize=10)
    return _save_atomic(fig, Path(out))


def _save_atomic(fig, out: Path) -> Path:
    return write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=110))


def write_run_plots(run_dir, log=None) -> list[Path]:
    """The trainer's end-of-run hook: RUN/learning_curves.png, and the pipeline folder's two-stage picture when
    RUN is one of its stages. A failure here is logged as a warning: the run's results are already written."""
    run_dir = Path(run_dir)
    targets = [run_dir]
    parent = run_dir.parent
    if run_dir.name in PIPELINE_STAGES and all((parent / s / "metrics.jsonl").exists() for s in PIPELINE_STAGES):
        targets.append(parent)
    written = []
    for target in targets:
        try:
            written.append(plot_runs([target], target / PNG_NAME, title=str(target)))
        except Exception as e:  # noqa: BLE001 - a picture must never fail a finished run
            if log is not None:
                log.warning("warning: could not draw %s: %s", target / PNG_NAME, e)
            continue
        if log is not None:
            log.info("learning curves: %s", written[-1])
    return written
