"""duorec_to_flax / flax_to_duorec: the real checkpoint converts, scores match PyTorch, round trip
is bit-exact, and every bad input exits non-zero with nothing written."""

import json
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

from converters import duorec_to_flax, flax_to_duorec
from converters.safe_pickle import read_torch_checkpoint
from ftragrec_jax.atomic import sha256_file
from ftragrec_jax.model_dir import encoder_from_model_dir, load_model
from tests import forge_checkpoints as forge
from tests.conftest import ROOT

REAL = "checkpoints/raserec_beauty_recbole02.pth"
# a model directory's data settings when the checkpoint's config leaves them at RecBole's defaults
DEFAULT_DATA = {
    "min_user_inter_num": 0,
    "min_item_inter_num": 0,
    "user_inter_num_interval": "",
    "item_inter_num_interval": "",
    "rm_dup_inter": "",
    "normalize_time": False,
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "TIME_FIELD": "timestamp",
}


def _cli(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def real_model(shared_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("conv") / "beauty"
    r = _cli("converters.duorec_to_flax", shared_dir / REAL, dest)
    assert r.returncode == 0, r.stderr
    return dest, r.stdout


def test_real_checkpoint_converts(real_model, shared_dir):
    dest, report = real_model
    meta, params, vocab = load_model(dest)
    enc = meta["encoder"]
    assert (
        enc["n_items"],
        enc["max_seq_length"],
        enc["hidden_size"],
        enc["n_layers"],
        enc["n_heads"],
        enc["inner_size"],
    ) == (12102, 50, 64, 2, 2, 256)
    # RaSeRec's checkpoint: only its DuoRec backbone is converted
    assert meta["model"] == "duorec" and meta["source"]["recbole_class"] == "RaSeRec" and vocab is None
    # the data settings come from the checkpoint's own RecBole 0.2 config
    assert meta["dataset"] == {
        **DEFAULT_DATA,
        "MAX_ITEM_LIST_LENGTH": 50,
        "min_user_inter_num": 5,
        "min_item_inter_num": 5,
    }
    assert meta["source"]["recbole_dataset"] == "Amazon_Beauty"
    assert {"min_user_inter_num", "max_item_inter_num", "eval_setting", "normalize_all", "rm_dup_inter"} <= set(
        meta["source"]["recbole_config_keys_read"]
    )
    assert meta["source"]["file"] == "raserec_beauty_recbole02.pth"
    assert meta["source"]["sha256"] == sha256_file(shared_dir / REAL)
    assert params["item_embedding"]["embedding"].shape == (12102, 64)
    assert "keys mapped: 36, parameters: 877,824" in report
    assert "seq_tar_ram.* (10 keys)" in report and "retriever_mlp.* (2 keys)" in report


def _random_batch(n_items, max_len, batch, seed):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, max_len + 1, batch).astype(np.int32)
    lens[:3] = [1, max_len, max_len]
    seq = np.zeros((batch, max_len), np.int32)
    for i, n in enumerate(lens):
        seq[i, :n] = rng.integers(1, n_items, n)
    return seq, lens


def test_scores_match_pytorch_reference(real_model, shared_dir):
    torch = pytest.importorskip("torch")
    from converters.reference import torch_duorec

    dest, _ = real_model
    encoder, meta, _ = encoder_from_model_dir(dest)
    sd = read_torch_checkpoint(shared_dir / REAL).state_dict
    ref = torch_duorec.TorchDuoRec.from_encoder_config(encoder.config)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items() if k in ref.state_dict()}, strict=True)
    ref.eval()
    seq, lens = _random_batch(12102, 50, 64, seed=0)
    with torch.no_grad():
        want = ref.full_sort_predict(torch.from_numpy(seq).long(), torch.from_numpy(lens).long()).numpy()
    got = np.asarray(encoder.scores(encoder(seq, lens)))
    assert got.shape == want.shape == (64, 12102)
    assert np.abs(got - want).max() <= 1e-5


def test_round_trip_is_bit_exact(real_model, shared_dir, tmp_path):
    torch = pytest.importorskip("torch")
    dest, _ = real_model
    out = tmp_path / "back.pth"
    r = _cli("converters.flax_to_duorec", dest, out)
    assert r.returncode == 0, r.stderr
    back = torch.load(out, weights_only=True)  # plain tensors only: loadable by stock torch safely
    src = read_torch_checkpoint(shared_dir / REAL).state_dict
    assert len(back) == 36 and set(back) <= set(src)
    for k, t in back.items():
        assert t.dtype == torch.float32 and np.array_equal(t.numpy(), src[k]), k
    # and back again through the converter: the Flax parameters are unchanged bit for bit
    r = _cli("converters.duorec_to_flax", out, tmp_path / "again", "--n-heads", "2")
    assert r.returncode == 0, r.stderr
    a, b = load_model(dest)[1], load_model(tmp_path / "again")[1]
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def _real_state(shared_dir):
    return OrderedDict(read_torch_checkpoint(shared_dir / REAL).state_dict)


def _assert_refused(src, dest, match, *extra, marker=None):
    r = _cli("converters.duorec_to_flax", src, dest, *extra)
    assert r.returncode != 0
    assert r.stderr.startswith("error: ") and match in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")]  # no temp dirs
    if marker is not None:
        assert not marker.exists()


def test_cli_refuses_evil_and_broken_files(tmp_path, shared_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    state = {"config": forge.evil_objects(str(marker))["os.system"], "state_dict": {}}
    forge.write_zip(evil, forge.evil_pickle(state), {})
    _assert_refused(evil, tmp_path / "out", "refusing pickle global posix.system", marker=marker)

    real = (shared_dir / REAL).read_bytes()
    cases = {
        "truncated.pth": (real[: len(real) * 2 // 3], "truncated or corrupt zip"),
        "magic.pth": (b"\x7fELF" + real[4:], "not a PyTorch checkpoint"),
        "notes.txt": (b"user_id item_id\n1 2\n", "not a PyTorch checkpoint"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        _assert_refused(tmp_path / name, tmp_path / "out", match)

    liar = tmp_path / "liar.pth"
    pkl = forge.program(forge.dict_of({"item_embedding.weight": forge.tensor("0", 64, (12102, 64), (64, 1))}))
    forge.write_zip(liar, pkl, {"0": np.zeros(64, np.float32).tobytes()})
    _assert_refused(liar, tmp_path / "out", "needs more than the 64 elements")


def test_cli_refuses_bad_state_dicts(tmp_path, shared_dir):
    torch = pytest.importorskip("torch")
    base = _real_state(shared_dir)

    def save(name, sd):
        torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items()), tmp_path / name)
        return tmp_path / name

    missing = OrderedDict(base)
    del missing["trm_encoder.layer.1.feed_forward.LayerNorm.bias"]
    _assert_refused(
        save("missing.pth", missing),
        tmp_path / "out",
        "trm_encoder.layer.1.feed_forward.LayerNorm.bias",
        "--n-heads",
        "2",
    )
    bad_shape = OrderedDict(base)
    bad_shape["trm_encoder.layer.0.multi_head_attention.query.weight"] = np.zeros((64, 32), np.float32)
    _assert_refused(save("shape.pth", bad_shape), tmp_path / "out", "query", "--n-heads", "2")
    plain = save("plain.pth", base)
    _assert_refused(plain, tmp_path / "out", "pass --n-heads")  # weights cannot tell the head count
    _assert_refused(plain, tmp_path / "out", "n_heads", "--n-heads", "3")  # 64 not divisible by 3


def test_cli_config_contradictions_and_existing_dest(tmp_path, shared_dir, real_model):
    _assert_refused(
        shared_dir / REAL, tmp_path / "out", "contradicts the checkpoint config n_heads=2", "--n-heads", "4"
    )
    dest, _ = real_model
    before = (dest / "model.json").read_text()
    r = _cli("converters.duorec_to_flax", shared_dir / REAL, dest)
    assert r.returncode != 0 and "already exists" in r.stderr
    assert (dest / "model.json").read_text() == before
    assert json.loads(before)["encoder"]["n_items"] == 12102


def test_export_refuses_incomplete_model_dir(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "params").mkdir()
    for src in (tmp_path / "nope", tmp_path / "half"):
        assert flax_to_duorec.main([str(src), str(tmp_path / "out.pth")]) == 2
        assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


# --- --data: a converted checkpoint with its vocabulary ------------------------------------------------------


def _lines_file(path, n_users, n_items, seed=0):
    """One line per user; item tokens are words (not ids), so the vocabulary mapping is visible. Two rare items
    occur exactly twice: min_item_inter_num 2 keeps them, 3 drops them."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        items = [f"it{(int(rng.integers(n_items)) + 2 * i) % n_items}" for i in range(int(rng.integers(4, 12)))]
        if u < 2:
            items[1:1] = ["rare0", "rare1"]
        lines.append(" ".join([f"u{u}", *items]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """A small DuoRec .pth in RecBole's layout (config dict + state_dict) and the data file it 'was trained on'."""
    torch = pytest.importorskip("torch")
    from converters.mapping import encoder_to_torch_state
    from ftragrec_jax.data.dataset import load_dataset
    from ftragrec_jax.models.encoder import EncoderConfig, build_encoder

    tmp = tmp_path_factory.mktemp("forged")
    data = _lines_file(tmp / "shop.txt", n_users=50, n_items=20)
    config = {
        "model": "DuoRec",
        "n_heads": 2,
        "hidden_size": 8,
        "n_layers": 1,
        "inner_size": 16,
        "MAX_ITEM_LIST_LENGTH": 6,
        "min_user_inter_num": 3,
        "min_item_inter_num": 2,
        "dataset": "shop",
        "hidden_act": "gelu",
    }
    n_items = load_dataset(data, min_user_inter_num=3, min_item_inter_num=2, max_seq_length=6).n_items
    enc = build_encoder(
        EncoderConfig(n_items=n_items, max_seq_length=6, hidden_size=8, n_layers=1, n_heads=2, inner_size=16), seed=3
    )
    state = OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in encoder_to_torch_state(enc).items())
    src = tmp / "duorec.pth"
    torch.save({"config": config, "state_dict": state, "epoch": 7}, src)
    return src, data, n_items


def test_data_stores_vocab_and_settings_so_recommend_takes_tokens(forged, tmp_path, capsys):
    from experiments.recommend import main as recommend

    src, data, n_items = forged
    dest = tmp_path / "with_vocab"
    assert duorec_to_flax.main([str(src), str(dest), "--data", str(data)]) == 0
    report = capsys.readouterr()
    assert "vocabulary: vocab.json from --data" in report.out
    assert "sanity on 50 valid samples of --data: hit@10" in report.out
    meta, _, vocab = load_model(dest)
    in_file = {t for line in data.read_text().splitlines() for t in line.split()[1:]}
    assert vocab is not None and vocab.n_items == n_items and set(vocab.item_tokens[1:]) == in_file
    # the settings come from the checkpoint's RecBole config, the max length from its position table
    assert meta["dataset"] == {
        **DEFAULT_DATA,
        "data": str(data.absolute()),
        "data_format": "auto",
        "min_user_inter_num": 3,
        "min_item_inter_num": 2,
        "MAX_ITEM_LIST_LENGTH": 6,
    }
    assert meta["model"] == "duorec" and meta["source"]["recbole_dataset"] == "shop"
    tokens = " ".join(vocab.item_tokens[1:4])
    assert recommend(["--checkpoint", str(dest), "--items", tokens + " nope", "--k", "5", "--json"]) == 0
    cap = capsys.readouterr()
    got = json.loads(cap.out)
    assert got["unknown"] == ["nope"] and len(got["items"]) == 5
    assert {r["item"] for r in got["items"]} <= set(vocab.item_tokens[1:])
    # the same as the vocabulary-less conversion given the data file at recommend time
    bare = tmp_path / "bare"
    assert duorec_to_flax.main([str(src), str(bare)]) == 0
    assert "vocabulary: none" in capsys.readouterr().out
    assert recommend(["--checkpoint", str(bare), "--items", tokens, "--k", "5", "--json", "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == got["items"]


def test_data_with_another_item_count_is_refused_and_nothing_written(forged, tmp_path, capsys):
    src, data, n_items = forged
    other = _lines_file(tmp_path / "other.txt", n_users=50, n_items=35, seed=1)
    for args, what in (
        ([str(other)], f"but {src} has {n_items - 1} (+1 padding row)"),
        ([str(data), "--min-item-inter-num", "3"], "min_item_inter_num=3"),
    ):
        dest = tmp_path / "out"
        assert duorec_to_flax.main([str(src), str(dest), "--data", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and what in err and "items after filtering" in err, err
        assert not dest.exists()
    assert duorec_to_flax.main([str(src), str(tmp_path / "x"), "--max-item-list-length", "9", "--data", str(data)]) == 2
    assert "position table has 6 rows" in capsys.readouterr().err
    assert duorec_to_flax.main([str(src), str(tmp_path / "x"), "--min-user-inter-num", "3"]) == 2
    assert "need --data" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_real_checkpoint_on_a_file_with_other_item_ids_is_flagged(shared_dir, tmp_path):
    """shared/README: the real checkpoint's ids follow RecBole's Amazon_Beauty.inter, not amazon/Beauty.txt. Same
    item count, so only the score check can tell: it must warn, comparing with the checkpoint's own valid score."""
    r = _cli(
        "converters.duorec_to_flax",
        shared_dir / REAL,
        tmp_path / "out",
        "--data",
        shared_dir / "data" / "amazon" / "Beauty.txt",
    )
    assert r.returncode == 0, r.stderr
    assert "the checkpoint recorded valid recall@10 0.1060" in r.stdout
    assert "warning: " in r.stderr and "item ids are probably not the ones it was trained with" in r.stderr
