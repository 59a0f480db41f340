"""Regenerate tests/data/recbole021/{duorec,cl4srec}_events.pth and checkpoint_metrics.json: checkpoints saved
by RecBole 0.2.1's own trainer (the copy DuoRec vendors, RuihongQiu/DuoRec) and the metrics it returned.

Not run by the tests, and it needs what the project does not ship. How the committed files were made:

1. a scratch folder SCRATCH holding DuoRec's `recbole/` and `seq.yaml` (`git archive HEAD recbole seq.yaml`);
2. a Python 3.11 virtualenv with torch 2.13.0 (CPU), numpy<2, pandas<3, scipy, pyyaml, colorlog, tqdm,
   scikit-learn (the RecBole 1.x fixture venv of tests/data/recbole1x/make_fixtures.py has them all);
3. `python tests/data/recbole021/make_checkpoint.py SCRATCH tests/data/recbole021`.

Data: tests/data/recbole1x/events.inter (synthetic, see make_fixtures.py there). DuoRec's seq.yaml as its
authors ran it (5-core, TO_LS full ranking, metrics at 5/10/20/50), with a small model so the files stay small.
Old numpy aliases are restored before importing recbole 0.2.1 (np.float, np.bool, np.int), as for
make_reference.py, and DuoRec's semantic_augmentation gets `dtype=object` for its ragged list of same-target
indices, the array numpy < 1.24 built by itself (current numpy refuses a ragged list without it).
torch >= 2.6 loads with weights_only=True by default, which cannot read the Config object RecBole pickles into
its own checkpoint when it reloads the best model for the test, hence
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (this script trusts the file it just wrote).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402

EVENTS = Path(__file__).resolve().parent.parent / "recbole1x" / "events.inter"
SMALL = {
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 2,
    "n_heads": 2,
    "epochs": 30,
    "train_batch_size": 64,
    "stopping_step": 30,
    "seed": 2020,
    "show_progress": False,
    "use_gpu": False,
    "gpu_id": "",
}
MODELS = ("DuoRec", "CL4SRec")  # the sequential models DuoRec vendors


def run(model: str, **config_args) -> dict:
    """DuoRec's recbole.quick_start.run_recbole without its embedding plots (they need seaborn), with the seed
    set (its own call to init_seed is commented out): configure, filter and split, train with best-model
    checkpointing, then test the best model."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    config = Config(model=model, dataset="events", **config_args)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    config["log_dir"] = config["checkpoint_dir"]  # DuoRec's trainer saves log_dir/model.pth
    Path(config["log_dir"]).mkdir(parents=True, exist_ok=True)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    net = get_model(config["model"])(config, train_data).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    _, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    return {"best_valid_result": best_valid_result, "test_result": test_result}


def main(scratch: Path, out: Path) -> None:
    np.float, np.bool, np.int = np.float64, np.bool_, np.int_  # names recbole 0.2.1 still uses
    seq = scratch / "recbole" / "data" / "dataset" / "sequential_dataset.py"
    seq.write_text(seq.read_text().replace("np.array(same_target_index)", "np.array(same_target_index, dtype=object)"))
    sys.path.insert(0, str(scratch))
    import torch

    torch.set_num_threads(1)
    results = {
        "recbole": "0.2.1 (RuihongQiu/DuoRec)",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "model_settings": SMALL,
        "cases": {},
    }
    for model in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "events").mkdir()
            shutil.copy(EVENTS, Path(tmp) / "events" / "events.inter")
            config = {**SMALL, "data_path": tmp + "/", "checkpoint_dir": str(Path(tmp) / "saved")}
            res = run(model, config_file_list=[str(scratch / "seq.yaml")], config_dict=config)
            (saved,) = (Path(tmp) / "saved").glob("*.pth")  # model.pth
            shutil.copy(saved, out / f"{model.lower()}_events.pth")
        results["cases"][model] = {
            "valid": {k: float(v) for k, v in res["best_valid_result"].items()},
            "test": {k: float(v) for k, v in res["test_result"].items()},
        }
    (out / "checkpoint_metrics.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
