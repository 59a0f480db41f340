"""Model directory: bit-exact round trip, atomic replacement, clear errors for incomplete dirs."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from ftragrec_jax import atomic, model_dir
from ftragrec_jax.data.vocab import Vocab
from ftragrec_jax.errors import CheckpointError
from ftragrec_jax.model_dir import check_vocab_compat, encoder_from_model_dir, load_model, save_model
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder

CFG = EncoderConfig(n_items=13, max_seq_length=6, hidden_size=8, n_layers=2, n_heads=2, inner_size=16)


def _model(seed=0, cfg=CFG):
    enc = build_encoder(cfg, seed)
    return enc, nnx.to_pure_dict(nnx.state(enc, nnx.Param)), {"model": "duorec", "encoder": dataclasses.asdict(cfg)}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_round_trip_is_bit_exact(tmp_path):
    enc, params, meta = _model()
    vocab = Vocab(("[PAD]",) + tuple(f"i{k}" for k in range(12)), ("[PAD]", "u1"))
    save_model(tmp_path / "m", params, {**meta, "dataset": {"name": "toy"}}, vocab)
    meta2, params2, vocab2 = load_model(tmp_path / "m")
    assert meta2["format"] == model_dir.FORMAT and meta2["dataset"] == {"name": "toy"} and meta2["source"] is None
    assert vocab2 == vocab
    as_numpy = jax.tree_util.tree_map(np.asarray, params)
    assert jax.tree_util.tree_structure(params2) == jax.tree_util.tree_structure(as_numpy)
    for a, b in zip(_leaves(params), _leaves(params2)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    enc2, _, _ = encoder_from_model_dir(tmp_path / "m")
    seq = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9]], np.int32)
    lens = np.array([3, 6], np.int32)
    assert np.array_equal(np.asarray(enc(seq, lens)), np.asarray(enc2(seq, lens)))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dirs left behind


def test_replace_is_atomic(tmp_path, monkeypatch):
    _, params_a, meta = _model(0)
    _, params_b, _ = _model(1)
    dest = tmp_path / "m"
    save_model(dest, params_a, meta)
    save_model(dest, params_b, meta)  # replacing a model dir works
    assert np.array_equal(_leaves(load_model(dest)[1])[0], _leaves(params_b)[0])

    def crash(path, tree):
        path.mkdir()
        (path / "half-written").write_text("x")
        raise KeyboardInterrupt  # e.g. Ctrl-C halfway through the parameter write

    monkeypatch.setattr(model_dir, "_save_params", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(dest, params_a, meta)
    assert np.array_equal(_leaves(load_model(dest)[1])[0], _leaves(params_b)[0])  # old model intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_refuses_to_clobber_other_folders(tmp_path):
    _, params, meta = _model()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a model directory"):
        save_model(tmp_path / "data", params, meta)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_model(tmp_path / "file", params, meta)
    with pytest.raises(CheckpointError, match="'model'"):
        save_model(tmp_path / "m", params, {"encoder": meta["encoder"]})
    assert (tmp_path / "data" / "precious.txt").exists() and not (tmp_path / "m").exists()


def test_incomplete_dirs(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    _, params, meta = _model()
    save_model(tmp_path / "m", params, meta)
    broken = tmp_path / "no_json"
    shutil.copytree(tmp_path / "m", broken)
    (broken / "model.json").unlink()
    with pytest.raises(CheckpointError, match="model.json: missing"):
        load_model(broken)
    broken = tmp_path / "no_params"
    shutil.copytree(tmp_path / "m", broken)
    shutil.rmtree(broken / "params")
    with pytest.raises(CheckpointError, match="params: missing"):
        load_model(broken)
    broken = tmp_path / "bad_params"
    shutil.copytree(tmp_path / "m", broken)
    for f in (broken / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")  # every parameter file emptied
    with pytest.raises(CheckpointError, match="cannot restore"):
        load_model(broken)
    broken = tmp_path / "bad_json"
    shutil.copytree(tmp_path / "m", broken)
    (broken / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="expected format"):
        load_model(broken)


def test_encoder_shape_mismatch(tmp_path):
    _, params, meta = _model()
    bigger = dataclasses.replace(CFG, hidden_size=16, inner_size=32)
    save_model(tmp_path / "m", params, {**meta, "encoder": dataclasses.asdict(bigger)})
    with pytest.raises(CheckpointError, match="has shape"):
        encoder_from_model_dir(tmp_path / "m")
    fewer = dict(params, layers={0: params["layers"][0]})
    save_model(tmp_path / "m2", fewer, meta)
    with pytest.raises(CheckpointError, match="missing"):
        encoder_from_model_dir(tmp_path / "m2")
    save_model(tmp_path / "m3", params, {**meta, "encoder": {**meta["encoder"], "n_heads": 3}})
    with pytest.raises(CheckpointError, match="n_heads"):
        encoder_from_model_dir(tmp_path / "m3")


def test_vocab_compat():
    meta = {"model": "duorec", "encoder": {"n_items": 12102}}
    check_vocab_compat(meta, 12102, "ckpt")
    with pytest.raises(CheckpointError, match="12102 item rows but the dataset vocabulary has 12101"):
        check_vocab_compat(meta, 12101, "ckpt")


def test_replace_without_atomic_exchange(tmp_path, monkeypatch):
    _, params_a, meta = _model(0)
    _, params_b, _ = _model(1)
    save_model(tmp_path / "m", params_a, meta)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # e.g. not Linux
    save_model(tmp_path / "m", params_b, meta)
    assert np.array_equal(_leaves(load_model(tmp_path / "m")[1])[0], _leaves(params_b)[0])
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


_SAVER = """
import sys, numpy as np
from ftragrec_jax.model_dir import save_model
dest = sys.argv[1]
for i in range(1, 10**6):
    params = {"w": np.full((256, 64), i, np.float32), "layers": {0: {"b": np.full(64, i, np.float32)}}}
    save_model(dest, params, {"model": "duorec", "encoder": {"n_items": 256}, "source": {"iteration": i}})
    print(i, flush=True)
"""


@pytest.mark.parametrize("delay", [0.3, 0.9])
def test_sigkill_mid_save_leaves_a_complete_model(tmp_path, delay):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    dest = tmp_path / "m"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(dest)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "1"  # first model complete: now kill mid-way through later saves
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    meta, params, _ = load_model(dest)
    i = meta["source"]["iteration"]
    assert i >= 1 and (params["w"] == i).all() and (params["layers"][0]["b"] == i).all()
    save_model(dest, params, meta)  # the next save clears what the killed one left behind
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize("listed", [True, False])
@pytest.mark.parametrize("how", ["bitflip", "truncate", "delete"])
def test_damaged_params_are_refused_never_half_read(tmp_path, how, listed):
    """model.json lists every params file (size, SHA-256): a damaged one is refused by name before Orbax opens
    it. Without the listing (directories written before it existed) TensorStore refuses missing or truncated
    files itself, and a bit flip inside array data, which reads back as another number, is caught by the
    params_sha256. Messages are one short line."""
    big = dataclasses.replace(CFG, n_items=4000, hidden_size=16, inner_size=16)  # chunks stored out of line
    _, params, meta = _model(cfg=big)
    path = save_model(tmp_path / "m", params, meta)
    stored = json.loads((path / "model.json").read_text())
    assert len(stored[model_dir.DIGEST_KEY]) == 64
    assert stored[model_dir.FILES_KEY] == atomic.files_manifest(path / "params")
    if not listed:
        del stored[model_dir.FILES_KEY]
        (path / "model.json").write_text(json.dumps(stored))
    files = sorted(
        (p for p in (path / "params").rglob("*") if p.is_file() and p.parent.name == "d"),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(files[-1].read_bytes())
    if how == "bitflip":
        data[len(data) // 2] ^= 0x01
        files[-1].write_bytes(bytes(data))
    elif how == "truncate":
        files[-1].write_bytes(bytes(data[: len(data) // 2]))
    else:
        files[-1].unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert msg.startswith(f"{path / 'params'}: ") and "\n" not in msg and len(msg) < 500
    assert "tensorstore_spec" not in msg
    named = f"({files[-1].relative_to(path / 'params').as_posix()}: "
    assert (named in msg) == listed
    if how == "bitflip" and not listed:
        assert "checksum mismatch" in msg


def test_a_bad_file_listing_in_model_json_is_refused_naming_the_key(tmp_path):
    _, params, meta = _model()
    path = save_model(tmp_path / "m", params, meta)
    stored = json.loads((path / "model.json").read_text())
    for bad in ([], {"a": [1]}, {"a": [True, "x"]}, {"a": ["1", "x"]}):
        stored[model_dir.FILES_KEY] = bad
        (path / "model.json").write_text(json.dumps(stored))
        with pytest.raises(CheckpointError, match=rf"model.json: '{model_dir.FILES_KEY}': expected an object"):
            load_model(path)


def test_digest_ignores_key_types_and_older_dirs_without_it_load(tmp_path):
    _, params, meta = _model()
    as_str = jax.tree_util.tree_map(np.asarray, params)
    as_str["layers"] = {str(k): v for k, v in as_str["layers"].items()}
    assert model_dir.params_digest(params) == model_dir.params_digest(as_str)
    changed = jax.tree_util.tree_map(np.array, as_str)
    changed["layer_norm"]["bias"][0] += 1e-7
    assert model_dir.params_digest(changed) != model_dir.params_digest(as_str)
    path = save_model(tmp_path / "m", params, meta)
    stored = json.loads((path / "model.json").read_text())
    del stored[model_dir.DIGEST_KEY]  # as written before the digest existed
    (path / "model.json").write_text(json.dumps(stored))
    _, got, _ = load_model(path)
    assert model_dir.params_digest(got) == model_dir.params_digest(params)


def test_files_manifest_names_the_first_file_that_differs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "b.txt").write_text("hello")
    listing = atomic.files_manifest(tmp_path)
    assert list(listing) == ["a/x.bin", "b.txt"] and listing["b.txt"][0] == 5
    assert atomic.manifest_mismatch(tmp_path, listing) is None
    (tmp_path / "c.txt").write_text("not listed")  # files the listing does not name are not judged
    assert atomic.manifest_mismatch(tmp_path, listing) is None
    (tmp_path / "b.txt").write_text("hellO")  # same size, other bytes
    assert atomic.manifest_mismatch(tmp_path, listing) == "b.txt: contents differ from the save (SHA-256 mismatch)"
    (tmp_path / "a" / "x.bin").write_bytes(b"\x00")
    assert atomic.manifest_mismatch(tmp_path, listing) == "a/x.bin: 1 bytes, 3 when saved"
    (tmp_path / "a" / "x.bin").unlink()
    assert atomic.manifest_mismatch(tmp_path, listing) == "a/x.bin: missing"
