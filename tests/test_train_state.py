"""Training-state checkpoints: exact round trip, newest complete one wins, a half-written one is ignored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import yaml
from flax import nnx

from ftragrec_jax.config import load_config
from ftragrec_jax.errors import CheckpointError, ConfigError
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.train.checkpoints import FILES_JSON, TrainCheckpoints, arrays_like
from ftragrec_jax.train.run_dir import RunDir


def tiny_state(seed):
    enc = build_encoder(
        EncoderConfig(n_items=20, max_seq_length=4, hidden_size=8, n_layers=1, n_heads=2, inner_size=8), seed
    )
    params = nnx.state(enc, nnx.Param)
    tx = optax.adam(1e-2)
    opt = tx.init(params)
    grads = jax.tree.map(lambda x: x * 0 + 1.0, params)
    _, opt = tx.update(grads, opt, params)  # non-trivial moments
    return params, opt


def test_round_trip_and_latest(tmp_path):
    p1, o1 = tiny_state(1)
    p2, o2 = tiny_state(2)
    ck = TrainCheckpoints(tmp_path / "ck")
    assert ck.latest() is None
    ck.save(1, arrays_like(p1, o1, None), {"step": 10, "history": [{"loss": 1.5}]})
    ck.save(2, arrays_like(p2, o2, {"keys": np.arange(6.0).reshape(2, 3)}), {"step": 20, "history": []})
    ck.close()

    # a half-written newer checkpoint (what a SIGKILL during a save leaves behind) is ignored
    (tmp_path / "ck" / "3.orbax-checkpoint-tmp-123").mkdir()
    ck = TrainCheckpoints(tmp_path / "ck")
    assert ck.latest() == 2
    like = arrays_like(*tiny_state(0), {"keys": np.zeros((2, 3))})
    arrays, loop = ck.restore(2, like)
    assert loop == {"step": 20, "history": []}
    for a, b in zip(jax.tree.leaves((p2, o2)), jax.tree.leaves((arrays["params"], arrays["opt_state"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(arrays["opt_state"]) == jax.tree.structure(o2)
    np.testing.assert_array_equal(np.asarray(arrays["host"]["keys"]), np.arange(6.0).reshape(2, 3))
    arrays, loop = ck.restore(1, arrays_like(*tiny_state(0), None))
    assert loop["step"] == 10
    np.testing.assert_array_equal(
        np.asarray(arrays["params"]["item_embedding"]["embedding"]), np.asarray(p1["item_embedding"]["embedding"])
    )
    ck.close()


def test_run_dir_refuses_a_different_config(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.check_or_write_config(load_config(None, ["epochs=2"])) is False
    assert yaml.safe_load(run.config_yaml.read_text())["epochs"] == 2
    # extending the run or hiding progress bars is a resume; changing what was computed is not
    (run.checkpoints / "1").mkdir(parents=True)  # what a completed epoch leaves
    assert run.check_or_write_config(load_config(None, ["epochs=5", "show_progress=false"])) is True
    # FTragrec-only keys do not touch a DuoRec run
    assert run.check_or_write_config(load_config(None, ["epochs=5", "top_k=3", "pretrain_epochs=2"])) is True
    # a key added to Config after the run was written reads as its default
    text = run.config_yaml.read_text()
    run.config_yaml.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("weight_decay:")) + "\n")
    assert run.check_or_write_config(load_config(None, ["epochs=5"])) is True
    (run.checkpoints / "1").rmdir()
    # nothing computed yet (the earlier attempt failed its checks): a corrected config starts afresh
    assert run.check_or_write_config(load_config(None, ["epochs=5", "learning_rate=0.01"])) is False
    assert yaml.safe_load(run.config_yaml.read_text())["learning_rate"] == 0.01
    (run.checkpoints / "1").mkdir()
    with pytest.raises(ConfigError, match=r"config.yaml.*'?learning_rate"):
        run.check_or_write_config(load_config(None, ["epochs=5", "learning_rate=0.02"]))


def _damage_biggest_array_file(step_dir, how):
    """Damage the step's largest chunk file (every chunk file for "delete"); the first damaged file's path
    below step_dir."""
    files = sorted(
        (p for p in (step_dir / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"),
        key=lambda p: p.stat().st_size,
    )
    damaged = min(files).relative_to(step_dir).as_posix() if how == "delete" else None
    data = files[-1].read_bytes()
    if how == "truncate":
        files[-1].write_bytes(data[: len(data) // 2])
    elif how == "delete":
        for f in files:
            f.unlink()
    elif how == "flip":  # every byte but the ends: the file's own framing fails to decode
        files[-1].write_bytes(bytes(b ^ 0xFF if 64 <= i < len(data) - 64 else b for i, b in enumerate(data)))
    elif how == "bitflip":  # bit rot inside array data: TensorStore reads it back as another number
        b = bytearray(data)
        b[len(b) // 2] ^= 0x01
        files[-1].write_bytes(bytes(b))
    return damaged or files[-1].relative_to(step_dir).as_posix()


@pytest.mark.parametrize("listed", [True, False])
@pytest.mark.parametrize("how", ["truncate", "delete", "flip", "bitflip", "loop_json"])
def test_damaged_committed_checkpoint_is_refused_in_one_line_and_the_older_one_restores(tmp_path, how, listed):
    """A committed checkpoint damaged afterwards (disk error, bit rot, a hand edit) is never half-read. With its
    file listing (FILES_JSON) the damaged file is named before Orbax opens anything; without it (a save killed
    between the commit and the listing) TensorStore refuses missing chunks (no zero fill), compressed chunks
    fail their decode, and the arrays' checksum catches a bit flip. The error names the folder either way."""
    p1, o1 = tiny_state(1)
    p2, o2 = tiny_state(2)
    ck = TrainCheckpoints(tmp_path / "ck")
    big = {"keys": np.random.default_rng(0).standard_normal((20000, 16)).astype(np.float32)}  # out-of-line chunks
    ck.save(1, arrays_like(p1, o1, big), {"step": 10})
    ck.save(2, arrays_like(p2, o2, big), {"step": 20})
    ck.close()
    step2 = tmp_path / "ck" / "2"
    assert (step2 / FILES_JSON).is_file() and (tmp_path / "ck" / "1" / FILES_JSON).is_file()
    if not listed:
        (step2 / FILES_JSON).unlink()
    if how == "loop_json":
        (step2 / "loop" / "metadata").write_text('{"step": 2')
        damaged = "loop/metadata"
    else:
        damaged = _damage_biggest_array_file(step2, how)
    ck = TrainCheckpoints(tmp_path / "ck")
    like = arrays_like(*tiny_state(0), {"keys": np.zeros_like(big["keys"])})
    with pytest.raises(CheckpointError) as e:
        ck.restore(2, like)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 500 and "tensorstore_spec" not in msg
    assert msg.startswith(f"{step2}: cannot restore the training state") and "delete that folder" in msg
    assert (f"({damaged}: " in msg) == listed
    arrays, loop = ck.restore(1, like)
    assert loop == {"step": 10}  # the checksum stays inside the checkpoint
    np.testing.assert_array_equal(
        np.asarray(arrays["params"]["item_embedding"]["embedding"]), np.asarray(p1["item_embedding"]["embedding"])
    )
    np.testing.assert_array_equal(np.asarray(arrays["host"]["keys"]), big["keys"])
    ck.close()


def test_file_listing_of_a_step_is_checked_for_its_own_damage(tmp_path):
    """A damaged listing refuses the step (naming the listing) instead of being trusted or ignored; an
    intact step with its listing restores exactly."""
    p1, o1 = tiny_state(1)
    ck = TrainCheckpoints(tmp_path / "ck")
    ck.save(1, arrays_like(p1, o1, None), {"step": 10})
    ck.close()
    listing = tmp_path / "ck" / "1" / FILES_JSON
    good = listing.read_text()
    assert all(k.split("/")[0] in ("arrays", "loop") for k in json.loads(good))
    ck = TrainCheckpoints(tmp_path / "ck")
    arrays, loop = ck.restore(1, arrays_like(*tiny_state(0), None))
    assert loop == {"step": 10}
    for bad in ('{"arrays/x": [1', '{"arrays/x": ["1", "ab"]}', "[]"):
        listing.write_text(bad)
        with pytest.raises(
            CheckpointError, match=rf"^{tmp_path / 'ck' / '1'}: .*{FILES_JSON}: unreadable file listing"
        ):
            ck.restore(1, arrays_like(*tiny_state(0), None))
    ck.close()


def test_a_damaged_checkpoint_is_refused_without_tracebacks_at_exit(tmp_path):
    """What a user sees when resuming from a damaged checkpoint: the one-line refusal and nothing else. Had
    Orbax started reading the damaged file, its abandoned reader coroutines would print tracebacks to stderr
    when the interpreter exits."""
    p1, o1 = tiny_state(1)
    big = {"keys": np.random.default_rng(0).standard_normal((20000, 16)).astype(np.float32)}
    ck = TrainCheckpoints(tmp_path / "ck")
    ck.save(1, arrays_like(p1, o1, big), {"step": 10})
    ck.close()
    _damage_biggest_array_file(tmp_path / "ck" / "1", "truncate")
    script = f"""
import sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_train_state import tiny_state
from ftragrec_jax.errors import CheckpointError
from ftragrec_jax.train.checkpoints import TrainCheckpoints, arrays_like
ck = TrainCheckpoints({str(tmp_path / "ck")!r})
try:
    ck.restore(1, arrays_like(*tiny_state(0), {{"keys": np.zeros((20000, 16), np.float32)}}))
except CheckpointError as e:
    print(e)
ck.close()
"""
    root = Path(__file__).resolve().parents[1]  # this checkout's package, not whichever one is installed
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"{tmp_path / 'ck' / '1'}: cannot restore the training state (arrays/")
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[-2000:]
