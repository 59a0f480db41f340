"""Choose a trained FTragrec model's inference settings on validation users, without retraining.

kNN-LM-style mixing has settings that change how a trained g is used, not g itself (the retrieval
temperature, alpha, top_k, ...; scoring.INFERENCE_KEYS). Choosing them on validation, as kNN-LM chooses its
interpolation weight, is part of a fair comparison of two retrievers: each is then used at its own best,
and test is never looked at to choose.

The grid is the product of the given value lists, in the order given (the last key varies fastest). Each point
is evaluated on the validation users that g was not fitted on: a model fitted on validation queries
(retriever_queries=valid, recorded in its model.json) is evaluated on its held-out share (the same users its
training selected epochs on); any other model on every validation user unless `valid_holdout` asks for a
held-out share (so that a model fitted on validation queries and one that was not are tuned on the same
users). The point with the largest `metric` wins, ties to the earlier point; test is evaluated for the
chosen point only.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

from ftragrec_jax.config import load_config, parse_override
from ftragrec_jax.data.batches import valid_query_split
from ftragrec_jax.errors import ConfigError
from ftragrec_jax.evaluation import evaluate_split
from ftragrec_jax.model_dir import load_knowledge_base, load_model, read_meta, save_model
from ftragrec_jax.scoring import INFERENCE_KEYS, check_inference_overrides, load_model_dir


@dataclasses.dataclass
class TuneResult:
    """Every grid point's validation metrics, the chosen point, and the chosen point's test metrics."""

    checkpoint: str
    metric: str  # the selection metric, a RecBole name such as "ndcg@10"
    users: str  # which validation users chose, in words
    n_users: int
    points: list[dict]  # {"settings": {key: value}, "valid": metrics}, in grid order
    best: int  # index into points
    test: dict | None = None

    @property
    def settings(self) -> dict:
        return self.points[self.best]["settings"]

    def to_json(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "metric": self.metric,
            "valid_users": self.users,
            "n_valid_users": self.n_users,
            "points": self.points,
            "best": self.settings,
            "best_valid": self.points[self.best]["valid"],
            **({"test": self.test} if self.test is not None else {}),
        }

    def table(self, columns=("hit@10", "ndcg@10", "mrr@10")) -> str:
        """One row per grid point (validation), the chosen one starred; the chosen point's test below."""
        shown = [m for m in dict.fromkeys([self.metric, *columns]) if m in self.points[0]["valid"]]  # K in topk
        keys = list(self.points[0]["settings"])
        head = "| " + " | ".join(keys) + " | " + " | ".join(f"valid {m}" for m in shown) + " |"
        rows = [head, "|" + "---|" * (len(keys) + len(shown))]
        for i, point in enumerate(self.points):
            mark = " *" if i == self.best else ""
            cells = [f"{point['settings'][k]}" for k in keys] + [f"{point['valid'][m]:.4f}" for m in shown]
            cells[0] += mark
            rows.append("| " + " | ".join(cells) + " |")
        text = "\n".join(rows) + f"\n\nchosen on {self.metric} over {self.users}: " + self._settings_text()
        if self.test is not None:
            text += "\ntest at the chosen settings: " + "  ".join(f"{m} {self.test[m]:.4f}" for m in shown)
        return text

    def _settings_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.settings.items())


def parse_grid(specs) -> dict[str, list]:
    """{"retriever_temperature": [0.07, 0.3], ...} from "key=v1,v2,..." strings; only INFERENCE_KEYS, each once."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, raw = str(spec).partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise ConfigError(f"grid {spec!r}: expected key=value1,value2,...")
        if key not in INFERENCE_KEYS:
            raise ConfigError(
                f"grid {spec!r}: config key {key!r} cannot change without retraining; "
                f"a grid may vary only {list(INFERENCE_KEYS)}"
            )
        if key in grid:
            raise ConfigError(f"grid: config key {key!r} given twice")
        values = [parse_override(f"{key}={v.strip()}")[1] for v in raw.split(",")]
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"grid {spec!r}: a value is repeated")
        grid[key] = values
    if not grid:
        raise ConfigError("grid: give at least one key=value1,value2,...")
    return grid


def grid_points(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def _as_overrides(point: dict) -> list[str]:
    return [f"{k}={v}" for k, v in point.items()]


def tune(
    checkpoint,
    grid: dict[str, list],
    *,
    metric: str | None = None,
    data=None,
    overrides=(),
    valid_holdout: float | None = None,
    test: bool = False,
    show_progress: bool = True,
) -> TuneResult:
    """Evaluate every grid point of a trained FTragrec model directory on validation (module docstring) and pick
    the best by `metric` (default: the config's valid_metric); `test`: also evaluate the chosen point on test.
    `overrides` apply to every point (dataset settings, eval_batch_size, ...) and may not name a grid key."""
    meta = read_meta(checkpoint)
    source = str(checkpoint)
    if meta.get("model") != "ftragrec":
        raise ConfigError(f"{source}: tuning chooses FTragrec inference settings; this model is {meta.get('model')!r}")
    points = grid_points(grid)
    check_inference_overrides(points[0], meta, source)  # learned scalars and non-inference keys, before compute
    fixed = {parse_override(o)[0] for o in overrides}
    if fixed & set(grid):
        raise ConfigError(f"config keys {sorted(fixed & set(grid))} are both fixed with --set and varied by the grid")
    overrides = [*overrides, *([f"valid_metric={metric}"] if metric else [])]  # checked with the topk in force
    for point in points:  # every value checked before anything is loaded
        checked = load_config(None, [*overrides, *_as_overrides(point)])
    metric = checked.valid_metric

    ftr = meta.get("ftragrec") or {}
    own = ftr.get("retriever_valid_holdout") if ftr.get("retriever_queries") == "valid" else None
    if own is not None and valid_holdout is not None and not math.isclose(valid_holdout, own):
        raise ConfigError(
            f"{source}: g was fitted on validation queries outside a held-out share of {own}; tuning on a share "
            f"of {valid_holdout} would choose on users it was fitted on; leave valid_holdout unset or give {own}"
        )
    holdout = own if valid_holdout is None else valid_holdout
    if holdout is not None and not 0.0 < holdout < 1.0:
        raise ConfigError(f"valid_holdout: expected a share in (0, 1), got {holdout}")

    first = load_model_dir(checkpoint, data, [*overrides, *_as_overrides(points[0])], show_progress)
    cfg, dataset = first.cfg, first.dataset
    if holdout is None:
        users, chosen_on = f"all {len(dataset.valid)} validation users", dataset
    else:
        _, held = valid_query_split(len(dataset.valid), holdout)
        users = f"the held-out {holdout} share of validation users ({len(held)} of {len(dataset.valid)})"
        chosen_on = dataclasses.replace(dataset, valid=dataset.valid.take(held))
    # the training split is encoded once; each point recomputes the keys with g (its h dtype, if varied, not)
    kb = None if "knowledge_base_dtype" in grid else first.scorer.knowledge_base.train_arrays()

    def load(point):
        return load_model_dir(
            checkpoint, data, [*overrides, *_as_overrides(point)], show_progress, (cfg, dataset), knowledge_base=kb
        )

    rows = []
    for i, point in enumerate(points):
        model = first if i == 0 else load(point)
        rows.append(
            {"settings": point, "valid": evaluate_split(model.scorer, chosen_on, "valid", model.cfg, mesh=model.mesh)}
        )
    best = max(range(len(rows)), key=lambda i: (rows[i]["valid"][metric], -i))
    result = TuneResult(source, metric, users, len(chosen_on.valid), rows, best)
    if test:
        model = first if best == 0 else load(points[best])
        model.scorer.before_test()
        result.test = evaluate_split(model.scorer, dataset, "test", model.cfg, mesh=model.mesh)
    return result


def save_tuned(checkpoint, out, result: TuneResult) -> Path:
    """A copy of the model directory at `out` whose stored settings are the chosen ones (parameters and
    knowledge base unchanged), so that evaluate, compare and recommend use them; source.tuned records how."""
    dest = Path(out).absolute()
    if dest.exists():
        raise ConfigError(f"{dest}: exists; the tuned model is written to a new folder")
    meta, params, vocab = load_model(checkpoint)
    if meta.get("model") != "ftragrec":
        raise ConfigError(f"{checkpoint}: not an FTragrec model")
    meta = dict(meta)
    meta["ftragrec"] = {**meta["ftragrec"], **result.settings}
    meta["source"] = {
        **(meta.get("source") or {}),
        "tuned": {
            "from": str(Path(str(checkpoint)).absolute()),
            "metric": result.metric,
            "valid_users": result.users,
            "settings": result.settings,
            "valid": result.points[result.best]["valid"],
        },
    }
    return save_model(dest, params, meta, vocab, load_knowledge_base(checkpoint))
