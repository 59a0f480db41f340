"""Checkpoints written by RecBole 1.2.1's own trainer (tests/data/recbole1x, see make_fixtures.py there) convert
with only --data and evaluate to the metrics RecBole printed, whatever the data file is called; the data
settings come from each checkpoint's config (0.2 or 1.x vocabulary), and what the data path does not
implement, or a model class whose forward pass is not SASRec's, is refused by name."""

import json
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from converters import duorec_to_flax
from converters.recbole_config import data_settings
from ftragrec_jax.errors import CheckpointError
from ftragrec_jax.evaluation import evaluate_model_dir
from ftragrec_jax.model_dir import load_model

FIXTURES = Path(__file__).parent / "data" / "recbole1x"
RECORDED = json.loads((FIXTURES / "metrics.json").read_text())
# checkpoints saved by RecBole 0.2.1's trainer (DuoRec's copy) on the same events (tests/data/recbole021)
FIXTURES_02 = Path(__file__).parent / "data" / "recbole021"
RECORDED_02 = json.loads((FIXTURES_02 / "checkpoint_metrics.json").read_text())


def _convert(case, data, dest, *flags):
    assert duorec_to_flax.main([str(FIXTURES / f"{case}.pth"), str(dest), "--data", str(data), *flags]) == 0
    return dest


@pytest.mark.parametrize("case", sorted(RECORDED["cases"]))
@pytest.mark.parametrize("name", ["events.inter", "ml-100k.inter", "movies.inter"])
def test_recbole121_checkpoint_reproduces_its_printed_metrics_under_any_file_name(case, name, tmp_path, capsys):
    data = tmp_path / name
    shutil.copy(FIXTURES / "events.inter", data)
    dest = _convert(case, data, tmp_path / "model")
    assert "warning" not in capsys.readouterr().err
    meta, _, vocab = load_model(dest)
    assert meta["model"] == "sasrec" and meta["source"]["recbole_class"] == "SASRec" and vocab is not None
    got = evaluate_model_dir(dest, show_progress=False)
    for split in ("valid", "test"):
        want = RECORDED["cases"][case][split]
        assert len(want) == 20
        assert {k: round(got[split][k], 4) for k in want} == want, split


@pytest.mark.parametrize("case", sorted(RECORDED_02["cases"]))
def test_recbole021_checkpoint_reproduces_its_printed_metrics(case, tmp_path, capsys):
    data = tmp_path / "renamed.inter"
    shutil.copy(FIXTURES / "events.inter", data)
    dest = tmp_path / "model"
    assert duorec_to_flax.main([str(FIXTURES_02 / f"{case.lower()}_events.pth"), str(dest), "--data", str(data)]) == 0
    assert "warning" not in capsys.readouterr().err
    meta, _, _ = load_model(dest)
    assert meta["model"] == case.lower() and meta["source"]["recbole_class"] == case
    # CL4SRec's item table ends with its augmentation's mask token, which it never scores
    assert meta["source"].get("dropped_item_rows", 0) == (1 if case == "CL4SRec" else 0)
    assert (meta["dataset"]["min_user_inter_num"], meta["dataset"]["min_item_inter_num"]) == (5, 5)  # seq.yaml
    got = evaluate_model_dir(dest, show_progress=False)
    for split in ("valid", "test"):
        want = RECORDED_02["cases"][case][split]
        assert len(want) == 16  # DuoRec's seq.yaml: recall, mrr, ndcg, precision at 5/10/20/50
        assert {k: round(got[split][k], 4) for k in want} == want, split


def test_settings_are_read_from_the_checkpoint_config(tmp_path):
    data = FIXTURES / "events.inter"
    shop, _, _ = load_model(_convert("shop", data, tmp_path / "shop"))
    assert shop["dataset"]["user_inter_num_interval"] == "[4,inf)"
    assert shop["dataset"]["item_inter_num_interval"] == "(2,inf)"
    assert shop["dataset"]["MAX_ITEM_LIST_LENGTH"] == 6 and shop["dataset"]["normalize_time"] is False
    norm, _, _ = load_model(_convert("norm", data, tmp_path / "norm"))
    assert norm["dataset"]["normalize_time"] is True  # normalize_all in its config, not its file name
    # the setting matters on this file: forced off, the float32 time ties (and so the samples) change
    off = _convert("norm", data, tmp_path / "off", "--no-normalize-time")
    on_metrics = evaluate_model_dir(tmp_path / "norm", show_progress=False)["test"]
    off_metrics = evaluate_model_dir(off, show_progress=False)["test"]
    assert on_metrics != off_metrics


BASE_1X = {
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    "user_inter_num_interval": "[5,inf)",
    "item_inter_num_interval": None,
    "rm_dup_inter": None,
    "normalize_all": None,
    "normalize_field": None,
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "field_separator": "\t",
    "val_interval": None,
    "threshold": None,
    "benchmark_filename": None,
}
BASE_02 = {
    "eval_setting": "TO_LS,full",
    "leave_one_num": 2,
    "group_by_user": True,
    "min_user_inter_num": 5,
    "max_user_inter_num": None,
    "min_item_inter_num": 0,
    "max_item_inter_num": 40,
    "rm_dup_inter": "last",
    "normalize_all": None,
    "normalize_field": ["rating", "ts"],
    "TIME_FIELD": "ts",
    "load_col": None,
    "lowest_val": None,
    "highest_val": None,
}


def test_both_config_vocabularies_map_to_the_same_settings():
    one, read = data_settings(BASE_1X, "x.pth")
    assert one["recbole"] == "1.x" and one["user_inter_num_interval"] == "[5,inf)"
    assert one["item_inter_num_interval"] == "" and one["normalize_time"] is False and "eval_args" in read
    old, _ = data_settings(BASE_02, "y.pth")
    assert old["recbole"] == "0.2" and (old["min_user_inter_num"], old["user_inter_num_interval"]) == (5, "")
    assert old["item_inter_num_interval"] == "[0,40]"  # 0.2's max_item_inter_num: an upper bound
    assert old["rm_dup_inter"] == "last" and old["normalize_time"] is True and old["TIME_FIELD"] == "ts"


@pytest.mark.parametrize(
    "base,change,names",
    [
        (BASE_1X, {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "mode": "full"}}, "eval_args.split"),
        (BASE_1X, {"eval_args": {**BASE_1X["eval_args"], "mode": "uni100"}}, "eval_args.mode"),
        (BASE_1X, {"eval_args": {"split": {"LS": "test_only"}, "order": "TO"}}, "eval_args.split"),
        (BASE_1X, {"val_interval": {"rating": "[3,inf)"}}, "val_interval"),
        (BASE_1X, {"threshold": {"rating": 4}}, "threshold"),
        (
            BASE_1X,
            {"load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "class"]}},
            "load_col",
        ),
        (BASE_1X, {"load_col": {"inter": ["user_id", "item_id"]}}, "load_col"),
        (BASE_1X, {"user_inter_num_interval": "[5,inf"}, "user_inter_num_interval"),
        (BASE_1X, {"field_separator": ","}, "field_separator"),
        (BASE_1X, {"benchmark_filename": ["train", "valid", "test"]}, "benchmark_filename"),
        (BASE_1X, {"alias_of_item_id": ["item_id_list"]}, "alias_of_item_id"),
        (BASE_1X, {"rm_dup_inter": "both"}, "rm_dup_inter"),
        (BASE_02, {"eval_setting": "RO_RS,full"}, "eval_setting"),
        (BASE_02, {"eval_setting": "TO_LS,uni100"}, "eval_setting"),
        (BASE_02, {"leave_one_num": 1}, "leave_one_num"),
        (BASE_02, {"lowest_val": {"rating": 3}}, "lowest_val"),
    ],
)
def test_settings_the_data_path_does_not_implement_are_refused_by_name(base, change, names):
    with pytest.raises(CheckpointError, match=rf"^z\.pth: config {names}="):
        data_settings({**base, **change}, "z.pth")


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    """Write a RecBole-layout checkpoint with a given config: a tiny SASRec-shaped state dict."""
    torch = pytest.importorskip("torch")
    from converters.mapping import encoder_to_torch_state
    from ftragrec_jax.models.encoder import EncoderConfig, build_encoder

    enc = build_encoder(
        EncoderConfig(n_items=9, max_seq_length=4, hidden_size=8, n_layers=1, n_heads=2, inner_size=16), seed=0
    )
    state = OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in encoder_to_torch_state(enc).items())
    tmp = tmp_path_factory.mktemp("forge")

    def write(name, config, extra=None):
        path = tmp / f"{name}.pth"
        sd = OrderedDict(state)
        for k, shape in (extra or {}).items():
            sd[k] = torch.zeros(shape)
        torch.save({"config": config, "state_dict": sd} if config is not None else sd, path)
        return path

    return write


@pytest.mark.parametrize("cls", ["FEARec", "BERT4Rec", "GRU4Rec", "SASRecF"])
def test_other_architectures_are_refused_naming_the_class(forge, cls, tmp_path, capsys):
    src = forge(cls, {"model": cls, "n_heads": 2})
    assert duorec_to_flax.main([str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"model class {cls!r} is not a SASRec-family encoder" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("cls,kind", [("SASRec", "sasrec"), ("DuoRec", "duorec"), ("CL4SRec", "cl4srec")])
def test_family_classes_record_their_kind(forge, cls, kind, tmp_path):
    src = forge(cls, {"model": cls, "n_heads": 2})
    assert duorec_to_flax.main([str(src), str(tmp_path / "out")]) == 0
    meta, _, _ = load_model(tmp_path / "out")
    assert meta["model"] == kind and meta["source"]["recbole_class"] == cls


def test_plain_state_dict_takes_its_class_from_the_flag(forge, tmp_path, capsys):
    src = forge("plain", None)
    assert duorec_to_flax.main([str(src), str(tmp_path / "a"), "--n-heads", "2"]) == 0
    meta, _, _ = load_model(tmp_path / "a")
    assert meta["model"] == "sasrec" and meta["source"]["recbole_class"] is None
    assert duorec_to_flax.main([str(src), str(tmp_path / "b"), "--n-heads", "2", "--model-class", "CL4SRec"]) == 0
    assert load_model(tmp_path / "b")[0]["model"] == "cl4srec"
    declared = forge("declared", {"model": "DuoRec", "n_heads": 2})
    assert duorec_to_flax.main([str(declared), str(tmp_path / "c"), "--model-class", "SASRec"]) == 2
    assert "--model-class SASRec contradicts the checkpoint's model class DuoRec" in capsys.readouterr().err


def test_converted_sasrec_recommends_and_loads_as_an_ftragrec_backbone(tmp_path, capsys):
    """A model directory of kind "sasrec" works wherever an encoder model does."""
    from experiments.recommend import main as recommend
    from ftragrec_jax.data.dataset import load_dataset
    from ftragrec_jax.train.ftragrec_task import load_pretrained_encoder

    dest = _convert("shop", FIXTURES / "events.inter", tmp_path / "shop")
    capsys.readouterr()  # the conversion report
    assert recommend(["--checkpoint", str(dest), "--items", "3 4 5", "--k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3
    dataset = load_dataset(
        FIXTURES / "events.inter",
        user_inter_num_interval="[4,inf)",
        item_inter_num_interval="(2,inf)",
        max_seq_length=6,
    )
    encoder, meta = load_pretrained_encoder(str(dest), dataset)
    assert meta["model"] == "sasrec" and encoder.config.n_items == dataset.n_items
