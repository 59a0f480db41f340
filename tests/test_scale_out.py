"""Scale-out on this machine: the sharded exact search, FTragrec on a 4-device mesh against 1 device, and a
two-process run on localhost against one process. Multi-device runs use forced CPU devices in subprocesses
(the device count is fixed when jax starts)."""

import json
import os
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from ftragrec_jax import parallel
from ftragrec_jax.models.search import Memory, ShardedKeys
from tests.conftest import ROOT


def run_script(name: str, *args, devices: int = 4, timeout: int = 300, extra_env: dict | None = None):
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        **(extra_env or {}),
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / name), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(done) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sharded_exact_search_matches_one_device():
    res = last_json(run_script("sharded_search.py"))
    assert res["devices"] == 4
    for case in res["cases"]:
        assert case["keys_type"] == "ShardedKeys", case
        assert case["shard_rows"] == [-(-case["n"] // case["devices"])], case  # padded, split evenly
        assert case["same_as_one_device"] and case["same_as_naive"] and case["faiss_flat_same"], case
    assert {c["devices"] for c in res["cases"] if c["ties"] == "int"} == {2, 3, 4}
    assert any(c["n"] % c["devices"] for c in res["cases"])  # padding rows were never returned
    assert any(c["missing"] for c in res["cases"])  # fewer allowed entries than top_k: -1, as on one device
    assert res["cases"][0]["grad"] == 0.0


def test_one_device_mesh_keeps_plain_arrays():
    rng = np.random.default_rng(0)
    keys = jnp.asarray(rng.normal(size=(10, 4)).astype(np.float32))
    ints = jnp.arange(10, dtype=jnp.int32)
    memory = Memory(h=keys, keys=keys, target=ints, user=ints, prefix_len=ints)
    placed = parallel.place_step_data(memory, parallel.make_mesh(1))
    assert not isinstance(placed.keys, ShardedKeys)
    np.testing.assert_array_equal(np.asarray(placed.keys), np.asarray(keys))
    assert parallel.place_step_data(None, parallel.make_mesh(1)) is None


def test_ftragrec_training_on_four_devices_matches_one(tmp_path):
    """The trainer end to end (exact backend, keys refreshed after epoch 0, validation and test)."""
    res = last_json(run_script("sharded_ftragrec_run.py", tmp_path))
    assert res["sharded_traces_1"] == 0 and res["sharded_traces_4"] > 0  # 4 devices searched shard by shard
    m1, m4 = res["metrics_1"], res["metrics_4"]
    assert len(m1) == len(m4) == 2
    for a, b in zip(m1, m4):
        for k in ("loss", "rec_loss", "enhanced_rec_loss", "kl_loss", "fallback_fraction", "neighbours"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
        for k, v in a["valid"].items():
            assert b["valid"][k] == pytest.approx(v, abs=2e-4), k  # 4-decimal metrics; a rank tie may flip
    for k, v in res["test_1"].items():
        assert res["test_4"][k] == pytest.approx(v, abs=2e-4), k
    assert res["retriever_leaves"] > 0
    # 40 Adam steps at lr 0.01: the all-reduce's summation order shows up as a few float32 ulps per step
    assert res["retriever_max_abs_diff"] < 1e-4


def test_duorec_step_on_four_devices_encodes_per_device(tmp_path):
    """DuoRec's step (three passes fused into 3B rows, length-bucketed) on 4 devices with dropout off: the 1-device
    metrics and parameters, and each device encodes only its own rows. Left to the SPMD partitioner, the
    global sort all-gathered the 3B sequences and every device ran all the chunks."""
    res = last_json(run_script("sharded_duorec_step.py", tmp_path))
    assert res["devices"] == 4
    assert len(res["metrics_1"]) == len(res["metrics_4"]) == 2
    for a, b in zip(res["metrics_1"], res["metrics_4"]):
        for k in ("loss", "ce", "sem_nce", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-5), k
    for k, d in res["param_max_abs_diff"].items():
        assert d < 1e-5, (k, d)
    # 768 fused rows: a scan over 12 chunks of 64 on one device; 192 rows = 3 chunks on each of 4 (one scan
    # forward, one backward, each with one length-bucket conditional)
    assert res["chunk_loops_1"] == [12, 12] and res["chunk_loops_4"] == [3, 3]
    assert res["conditionals_1"] == res["conditionals_4"] == 2
    assert res["all_gathers_1"] == []
    # nothing of the fused 3B = 768 rows crosses devices (the global sort gathered their lengths, s32[768])
    assert res["all_gathers_4"] and not [s for s in res["all_gathers_4"] if "[768" in s], res["all_gathers_4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(args: list[str]) -> list[subprocess.Popen]:
    """`python ARGS` as 2 jax.distributed processes x 2 CPU devices on localhost (docs/scaling.md's variables)."""
    port, procs = _free_port(), []
    for i in range(2):
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            FTRAGREC_COORDINATOR=f"127.0.0.1:{port}",
            FTRAGREC_NUM_PROCESSES="2",
            FTRAGREC_PROCESS_ID=str(i),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def _wait_all(procs: list[subprocess.Popen], timeout: int = 240) -> None:
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]


def test_two_processes_match_one_process(tmp_path):
    """jax.distributed on localhost: 2 processes x 2 CPU devices, each feeding its half of every batch."""
    procs = _launch_two([str(ROOT / "tests/scripts/multiprocess_steps.py"), str(tmp_path)])
    from tests.scripts.multiprocess_steps import run  # the reference meanwhile, here on one device

    ref = run(1)  # conftest sets the "highest" matmul precision, as the script does
    _wait_all(procs)
    got = np.load(tmp_path / "result.npz")
    assert int(got["processes"]) == 2 and int(got["devices"]) == 4 and ref["devices"] == 1
    assert str(got["keys_type"]) == "ShardedKeys" and int(got["n_base"]) % 4  # padded shards across processes
    np.testing.assert_allclose(got["ce_losses"], ref["ce_losses"], rtol=1e-5)
    np.testing.assert_allclose(got["ft_losses"], ref["ft_losses"], rtol=1e-5)
    # data-parallel evaluation: each process fed its rows, every rank came back, exactly the 1-device ranks
    assert len(ref["ft_ranks"]) == ref["n_base"] and ref["ft_ranks"].min() >= 1
    np.testing.assert_array_equal(got["ft_ranks"], ref["ft_ranks"])
    names = [k for k in ref if k.startswith(("ce/", "ft/"))]
    assert sorted(names) == sorted(k for k in got.files if k.startswith(("ce/", "ft/")))
    for k in names:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


# --- FAISS: IndexShards and GPU indexes ----------------------------------------------------------------


@pytest.mark.parametrize("factory,shards", [("Flat", 3), ("Flat", 4), ("IVF16,Flat", 3)])
def test_index_shards_return_the_unsharded_ids(factory, shards):
    import faiss

    from ftragrec_jax.models.search import FaissSearcher
    from tests.test_search import _base, naive_top_k

    q, qu, qp, keys, user, prefix = _base(11, n=1001, b=64)  # 1001: parts of unequal size
    one = FaissSearcher(factory, 16, top_k=8, nprobe=4)
    one.build(keys, user, prefix)
    split = FaissSearcher(factory, 16, top_k=8, nprobe=4, shards=shards)
    split.build(keys, user, prefix)
    assert isinstance(split.index, faiss.IndexShards) and split.index.count() == shards
    assert split.ntotal == len(keys) and split.device == "cpu"
    got = split.search_host(q, qu, qp)
    np.testing.assert_array_equal(got, one.search_host(q, qu, qp))  # IVF: every part has the same cells
    if factory == "Flat":
        np.testing.assert_array_equal(got, naive_top_k(q, qu, qp, keys, user, prefix, 8))


def test_faiss_shards_checked_and_plumbed():
    from ftragrec_jax.config import Config
    from ftragrec_jax.errors import ConfigError
    from ftragrec_jax.models.knowledge_base import KnowledgeBase
    from ftragrec_jax.models.search import FaissSearcher
    from tests.test_search import _base

    with pytest.raises(ConfigError, match="faiss_shards"):
        Config(faiss_shards=0).validate()
    with pytest.raises(ConfigError, match="faiss_shards"):
        FaissSearcher("Flat", 16, top_k=3, shards=0)
    _, _, _, keys, user, prefix = _base(0, n=5)
    with pytest.raises(ConfigError, match="faiss_shards"):
        FaissSearcher("Flat", 16, top_k=3, shards=6).build(keys, user, prefix)
    kb = KnowledgeBase(keys, np.zeros(5, np.int32), user, prefix, keys, top_k=3, faiss_shards=2)
    assert kb.searcher.index.count() == 2 and kb.searcher.ntotal == 5


def test_gpu_indexes_when_faiss_reports_gpus(monkeypatch):
    """faiss-cpu here: no GPU, CPU indexes; asking for a GPU is an error; a GPU copy that fails falls back."""
    from ftragrec_jax.errors import ConfigError
    from ftragrec_jax.models import search
    from tests.test_search import _base

    assert search.faiss_gpus() == 0
    with pytest.raises(ConfigError, match="GPU"):
        search.FaissSearcher("Flat", 16, top_k=3, use_gpu=True)
    q, qu, qp, keys, user, prefix = _base(2, n=300)
    cpu = search.FaissSearcher("Flat", 16, top_k=5)
    cpu.build(keys, user, prefix)
    monkeypatch.setattr(search, "faiss_gpus", lambda: 2)  # as if faiss-gpu saw 2 GPUs
    fake = search.FaissSearcher("Flat", 16, top_k=5, shards=2)
    assert fake.gpus == 2
    fake.build(keys, user, prefix)  # faiss-cpu has no StandardGpuResources: the copy fails, CPU remains
    assert fake.device.startswith("cpu (GPU copy failed")
    np.testing.assert_array_equal(fake.search_host(q, qu, qp), cpu.search_host(q, qu, qp))


def test_two_process_trainer_matches_one_process(tmp_path):
    """experiments.train launched as in docs/scaling.md (FTRAGREC_* variables), 2 processes x 2 CPU devices on
    localhost writing one run folder, against the same command in one process on one device."""
    from tests.test_train import (
        cli_args,
        final_params,
        metrics_lines,
        results_without_times,
        train,
        write_lines_dataset,
    )

    data = write_lines_dataset(tmp_path / "tiny.txt")
    # dropout off: on several devices each draws its own masks (test_train checks that such runs repeat)
    off = ("--hidden_dropout_prob=0", "--attn_dropout_prob=0")
    procs = _launch_two(["-m", "experiments.train", *cli_args(data, tmp_path / "two", "--epochs=1", *off)])
    assert train(data, tmp_path / "one", "--epochs=1", "--mesh=1", *off) == 0
    _wait_all(procs)
    a, b = metrics_lines(tmp_path / "two")[0], metrics_lines(tmp_path / "one")[0]
    for k in ("loss", "ce", "sem_nce", "grad_norm"):
        assert a[k] == pytest.approx(b[k], rel=1e-5), k
    for k, v in b["valid"].items():
        assert a["valid"][k] == pytest.approx(v, abs=2e-4), k  # 4-decimal metrics; a rank tie may flip
    ra, rb = results_without_times(tmp_path / "two"), results_without_times(tmp_path / "one")
    for k, v in rb["test"].items():
        assert ra["test"][k] == pytest.approx(v, abs=2e-4), k
    pa, pb = final_params(tmp_path / "two"), final_params(tmp_path / "one")
    assert pa.keys() == pb.keys()
    for k in pa:
        # attention key biases get a gradient that is float noise around 0 (softmax ignores a per-row
        # constant), which Adam scales up: there the all-reduce's summation order shows (6e-5 seen)
        tol = 1e-3 if k[-2:] == ("key", "bias") else 1e-5
        np.testing.assert_allclose(pa[k], pb[k], atol=tol, err_msg=".".join(map(str, k)))


# --- data-parallel evaluation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_eval(tmp_path_factory) -> dict:
    return last_json(run_script("sharded_eval.py", tmp_path_factory.mktemp("sharded_eval")))


def test_four_device_evaluation_gives_the_one_device_ranks(sharded_eval):
    """Random DuoRec and FTragrec (exact and faiss backends) scored on 4 devices: every sample's rank, with and
    without history masking, before and after the base grows by the valid samples, and the metrics of
    experiments.evaluate are exactly those of one device."""
    res = sharded_eval
    assert res["devices"] == 4 and res["models"] == ["duorec", "ftragrec_exact", "ftragrec_faiss"]
    runs = res["runs"]
    for model in res["models"]:
        one, four = runs[f"{model}/1"], runs[f"{model}/4"]
        for key in ("valid_16", "valid_512", "valid_masked", "test", "cli"):
            assert four[key] == one[key], (model, key)
        assert one["sharding"] == {"input_rows": [16], "user_rows": [16], "score_rows": [16]}
        # each device received and scored a quarter of every 16-row batch
        assert four["sharding"] == {"input_rows": [4] * 4, "user_rows": [4] * 4, "score_rows": [4] * 4}
    assert runs["ftragrec_exact/1"]["valid_16"] != runs["duorec/1"]["valid_16"]  # retrieval changed the ranks
    assert runs["duorec/1"]["valid_masked"] != runs["duorec/1"]["valid_16"]
    # the DuoRec scorer (length-bucketed on each device's 128 rows: 2 chunks of 64) needs no cross-device traffic
    assert res["duorec_scorer_collectives"] == 0 and res["duorec_scorer_chunk_loops"] == [2]
    assert res["duorec_scorer_conditionals"] == 1


def test_eval_batch_not_divisible_by_devices_is_refused_first(sharded_eval):
    errors = sharded_eval["errors"]
    assert set(errors) == {"sample_ranks", "evaluate_cli", "train_cli"}
    for where, message in errors.items():
        assert "config key 'eval_batch_size': 6 is not divisible by the 4 devices" in message, where
    assert errors["train_cli"].startswith("exit 2: error:")
    assert sharded_eval["scored_before_refusal"] == 0 and not sharded_eval["refused_run_written"]
