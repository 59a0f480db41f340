"""Full-sort evaluation on a 1-device and a 4-device mesh: a random DuoRec and random FTragrec models (exact and
faiss backends), through `scoring.from_params` + `sample_ranks` (every sample's rank) and through
`experiments.evaluate` (the metrics). Prints one JSON line: ranks and metrics per model and mesh, and how the
scorer's inputs and outputs were split over the devices. Run with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (tests do).

    python tests/scripts/sharded_eval.py WORKDIR
"""

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import jax

from experiments.train import main as train_main
from ftragrec_jax import parallel
from ftragrec_jax.config import load_config
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.errors import ConfigError
from ftragrec_jax.evaluation import evaluate_model_dir, sample_ranks
from ftragrec_jax.model_dir import load_model, save_model
from ftragrec_jax.scoring import from_params
from ftragrec_jax.train.pipeline import make_task
from tests.test_train import TINY, cli_args, write_lines_dataset

jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py sets it

work = Path(sys.argv[1])
data = write_lines_dataset(work / "tiny.txt")
# length 20 > the smallest bucket (8): the bucketed encoder has budgets to choose from
common = [*TINY, "MAX_ITEM_LIST_LENGTH=20", f"data={data}", "mesh=1", "initializer_range=0.3"]
cfg = load_config(None, common)
dataset = dataset_from_config(cfg)


def save(task, path: Path) -> Path:
    params = task.init()[0]
    save_model(
        path,
        task.export_params(params),
        task.model_meta(),
        vocab=dataset.vocab,
        knowledge_base=task.knowledge_base_arrays(),
    )
    return path


models = {"duorec": save(make_task(cfg, dataset), work / "duorec")}
for backend in ("exact", "faiss"):
    ft_cfg = load_config(
        None,
        [
            *common,
            "model=ftragrec",
            f"pretrained={models['duorec']}",
            "top_k=3",
            "retriever_inner_size=16",
            "quality_threshold=-1",
            "alpha=0.5",
            "extend_memory_with_valid=true",
            f"retrieval_backend={backend}",
        ],
    )
    models[f"ftragrec_{backend}"] = save(make_task(ft_cfg, dataset), work / f"ftragrec_{backend}")


def split_of(x) -> list:
    """Rows of each device's shard of a [B, ...] array, in device order."""
    return sorted(s.data.shape[0] for s in x.addressable_shards)


out = {}
for name, path in models.items():
    for n in (1, 4):
        mesh = parallel.make_mesh(n)
        meta, params, _ = load_model(path)
        scorer = from_params(meta, params, source=str(path), dataset=dataset, mesh=mesh)
        score, before_test = scorer.score, scorer.before_test
        seen = {}

        def recorded(item_seq, item_seq_len, batch):
            scores = score(item_seq, item_seq_len, batch)
            seen.update(input_rows=split_of(item_seq), user_rows=split_of(batch["user"]), score_rows=split_of(scores))
            return scores

        rec = {}
        for batch_size in (16, 512):  # 512: length-bucketed encoding (above 64 rows per device)
            rec[f"valid_{batch_size}"] = sample_ranks(
                recorded, dataset.valid, dataset.n_items, batch_size=batch_size, mesh=mesh
            ).tolist()
        rec["valid_masked"] = sample_ranks(
            recorded, dataset.valid, dataset.n_items, batch_size=16, history=dataset.history, mesh=mesh
        ).tolist()
        before_test()  # FTragrec: the base grows by the valid samples and is placed on the mesh again
        rec["test"] = sample_ranks(recorded, dataset.test, dataset.n_items, batch_size=16, mesh=mesh).tolist()
        rec["sharding"] = seen
        rec["cli"] = evaluate_model_dir(path, data, [f"mesh={n}", "eval_batch_size=16"], show_progress=False)
        out[f"{name}/{n}"] = rec


def refusal(fn) -> str:
    """The ConfigError's message; the CLI prints it as `error: ...` and exits 2."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            fn()
    except ConfigError as e:
        return str(e)
    except SystemExit as e:
        return f"exit {e.code}: {err.getvalue().strip()}"
    return "no error"


calls = []
errors = {
    "sample_ranks": refusal(
        lambda: sample_ranks(
            lambda *a: calls.append(1), dataset.valid, dataset.n_items, batch_size=6, mesh=parallel.make_mesh(4)
        )
    ),
    "evaluate_cli": refusal(
        lambda: evaluate_model_dir(models["duorec"], data, ["mesh=4", "eval_batch_size=6"], show_progress=False)
    ),
    "train_cli": refusal(lambda: train_main(cli_args(data, work / "refused", "--mesh=4", "--eval_batch_size=6"))),
}
# the DuoRec scorer on 4 devices: each encodes and scores its own rows, nothing crosses devices
task4 = make_task(load_config(None, [*common, "mesh=4"]), dataset)
batch = parallel.put_batch(
    {k: getattr(dataset.valid, k)[:8].repeat(64, axis=0) for k in ("item_seq", "item_seq_len")}, task4.mesh
)
hlo = task4._score.lower(task4.init()[0], batch["item_seq"], batch["item_seq_len"]).compile().as_text()
collectives = sum(hlo.count(f"{op}(") for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"))
print(
    json.dumps(
        {
            "devices": jax.device_count(),
            "models": sorted(models),
            "runs": out,
            "errors": errors,
            "scored_before_refusal": len(calls),
            "refused_run_written": (work / "refused").exists(),
            "duorec_scorer_collectives": collectives,
            "duorec_scorer_conditionals": hlo.count("conditional("),
            "duorec_scorer_chunk_loops": [int(n) for n in re.findall(r'known_trip_count":\{"n":"(\d+)"', hlo)],
        }
    )
)
