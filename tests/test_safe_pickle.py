"""The restricted checkpoint reader: same tensors as torch, and no code from the file ever runs."""

import re
import sys
import tracemalloc
import types
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from converters.safe_pickle import load_pickled, read_torch_checkpoint
from ftragrec_jax.errors import CheckpointError
from tests import forge_checkpoints as forge

REAL = "checkpoints/raserec_beauty_recbole02.pth"


def _sample_state(torch):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = OrderedDict()
    sd["f32"] = base
    sd["transposed"] = torch.randn(3, 5, generator=g).t()  # non-contiguous
    sd["row_view"] = base[2]  # shares base's storage at an offset
    sd["f64"] = torch.randn(3, generator=g, dtype=torch.float64)
    sd["f16"] = torch.randn(2, 3, generator=g).half()
    sd["bf16"] = torch.randn(5, generator=g).bfloat16()
    sd["i64"] = torch.arange(-3, 7, dtype=torch.int64)
    sd["i32"] = torch.arange(5, dtype=torch.int32)
    sd["u8"] = torch.arange(250, 256, dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    return sd


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_tensors_match_torch(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    sd = _sample_state(torch)
    path = tmp_path / "sd.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    ck = read_torch_checkpoint(path)
    assert ck.meta["kind"] == "state_dict" and ck.meta["format"] == ("zip" if zip_format else "legacy")
    assert list(ck.state_dict) == list(sd) and ck.config is None
    for key, t in sd.items():
        got, want = ck.state_dict[key], t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert got.shape == tuple(t.shape), key
        assert got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=key)
    assert str(ck.state_dict["bf16"].dtype) == "bfloat16"


def _fake_recbole(monkeypatch):
    """Modules that stand in for recbole while torch.save pickles a RecBole-shaped checkpoint."""
    import enum

    mods = {}
    for name in [
        "recbole",
        "recbole.config",
        "recbole.config.configurator",
        "recbole.utils",
        "recbole.utils.enum_type",
        "recbole.model",
        "recbole.model.sequential_recommender",
        "recbole.model.sequential_recommender.duorec",
    ]:
        mods[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mods[name])

    class Config:
        pass

    class ModelType(enum.Enum):
        SEQUENTIAL = 2

    class DuoRec:
        pass

    for cls, mod in [
        (Config, "recbole.config.configurator"),
        (ModelType, "recbole.utils.enum_type"),
        (DuoRec, "recbole.model.sequential_recommender.duorec"),
    ]:
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    return Config, ModelType, DuoRec


def test_recbole_checkpoint_without_recbole(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    Config, ModelType, DuoRec = _fake_recbole(monkeypatch)
    cfg = Config()
    cfg.final_config_dict = {
        "hidden_size": 64,
        "n_heads": 2,
        "MODEL_TYPE": ModelType.SEQUENTIAL,
        "device": torch.device("cuda"),
        "dataset": "Amazon_Beauty",
    }
    cfg.model_class = DuoRec
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {
        "config": cfg,
        "epoch": 7,
        "cur_step": 3,
        "best_valid_score": np.float64(0.25),
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
    }
    path = tmp_path / "recbole.pth"
    torch.save(state, path)
    monkeypatch.undo()  # the reader must not need these modules
    assert "recbole" not in sys.modules
    ck = read_torch_checkpoint(path)
    assert ck.meta["kind"] == "recbole" and ck.meta["epoch"] == 7 and ck.meta["best_valid_score"] == 0.25
    assert ck.meta["model_class"] == "recbole.model.sequential_recommender.duorec.DuoRec"
    assert ck.config["hidden_size"] == 64 and ck.config["dataset"] == "Amazon_Beauty"
    assert ck.config["device"] == "cuda" and "ModelType" in ck.config["MODEL_TYPE"]
    np.testing.assert_array_equal(ck.state_dict["weight"], model.weight.detach().numpy())
    assert set(ck.state_dict) == {"weight", "bias"}


def test_real_recbole_checkpoint(shared_dir):
    ck = read_torch_checkpoint(shared_dir / REAL)
    sd = ck.state_dict
    assert sd["item_embedding.weight"].shape == (12102, 64) and sd["item_embedding.weight"].dtype == np.float32
    assert sd["position_embedding.weight"].shape == (50, 64)
    assert sd["trm_encoder.layer.1.feed_forward.dense_1.weight"].shape == (256, 64)
    assert any(k.startswith("seq_tar_ram") for k in sd) and all(np.isfinite(v).all() for v in sd.values())
    assert ck.meta["kind"] == "recbole" and ck.meta["model_class"].endswith(".RaSeRec")
    c = ck.config
    assert (c["hidden_size"], c["n_heads"], c["n_layers"], c["MAX_ITEM_LIST_LENGTH"]) == (64, 2, 2, 50)
    assert c["dataset"] == "Amazon_Beauty" and c["min_user_inter_num"] == 5


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.call", "builtins.exec"])
@pytest.mark.parametrize("where", ["raw-pickle", "protocol-4", "in-torch-zip"])
def test_evil_pickle_is_refused_and_never_runs(tmp_path, name, where):
    marker = tmp_path / "pwned"
    payload = forge.evil_objects(str(marker))[name]
    path = tmp_path / "evil.pth"
    if where == "in-torch-zip":
        torch = pytest.importorskip("torch")
        torch.save({"config": payload, "state_dict": {"w": torch.zeros(2)}}, path)
    else:
        path.write_bytes(forge.evil_pickle({"state_dict": payload}, protocol=2 if where == "raw-pickle" else 4))
    with pytest.raises(CheckpointError, match="refusing pickle global") as err:
        read_torch_checkpoint(path)
    module = {
        "os.system": "(posix|os).system",
        "builtins.eval": "builtins.eval",
        "subprocess.call": "subprocess.call",
        "builtins.exec": "builtins.exec",
    }[name]
    assert re.search(f"global {module} ", str(err.value))
    assert not marker.exists()


def test_standins_never_reach_real_code(tmp_path):
    # A recbole.model stand-in "called" with a shell command just records it as data.
    body = forge.glob("recbole.model.evil", "Model") + forge.tup([forge.string("touch x")]) + forge.REDUCE
    path = tmp_path / "x.pth"
    forge.write_zip(path, forge.program(forge.dict_of({"m": body})), {})
    assert load_pickled(path) == {"m": "recbole.model.evil.Model('touch x')"}
    # _codecs.encode is only latin1 str -> bytes, never a decoder hook like "rot13" or "zlib".
    bad = forge.glob("_codecs", "encode") + forge.tup([forge.string("x"), forge.string("zlib")]) + forge.REDUCE
    forge.write_zip(path, forge.program(bad), {})
    with pytest.raises(CheckpointError, match="latin1"):
        load_pickled(path)


def _one_tensor_file(path, numel, shape, stride, offset=0, data_bytes=None):
    pkl = forge.program(forge.dict_of({"w": forge.tensor("0", numel, shape, stride, offset)}))
    data = np.arange(max(numel, 0), dtype=np.float32).tobytes() if data_bytes is None else data_bytes
    forge.write_zip(path, pkl, {"0": data})


def test_forged_tensor_file_reads(tmp_path):
    path = tmp_path / "ok.pth"
    _one_tensor_file(path, 6, (3, 2), (1, 3), offset=0)  # a transposed 2x3
    np.testing.assert_array_equal(read_torch_checkpoint(path).state_dict["w"], np.arange(6.0).reshape(2, 3).T)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(torch.load(path, weights_only=True)["w"].numpy(), np.arange(6.0).reshape(2, 3).T)


@pytest.mark.parametrize(
    "numel,shape,stride,offset,data,match",
    [
        (6, (4, 2), (2, 1), 0, None, "needs more than the 6 elements"),  # shape lies
        (6, (3, 2), (2, 1), 2, None, "needs more than"),  # offset pushes past the end
        (6, (2, 2), (5, 1), 0, None, "needs more than"),  # stride lies
        (6, (10**12, 10**12), (1, 1), 0, None, "needs more than"),  # huge shape
        (2**62, (2,), (1,), 0, None, "declares 4611686018427387904"),  # huge storage vs tiny record
        (6, (6,), (1,), 0, b"\0" * 8, "holds 8 bytes"),  # record shorter than declared
        (6, (-1,), (1,), 0, None, "integer >= 0"),
        (6, (6,), (1, 1), 0, None, "differ in length"),
    ],
)
def test_lying_tensor_headers(tmp_path, numel, shape, stride, offset, data, match):
    path = tmp_path / "lie.pth"
    payload = data if data is not None else np.zeros(6, np.float32).tobytes()
    _one_tensor_file(path, numel, shape, stride, offset, payload)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match):
            read_torch_checkpoint(path)
        assert tracemalloc.get_traced_memory()[1] < 16 * 2**20  # bounded memory: nothing big allocated
    finally:
        tracemalloc.stop()


def test_bad_files(tmp_path, shared_dir):
    real = (shared_dir / REAL).read_bytes()
    cases = {
        "text.pth": (b"hello, not a checkpoint\n", "not a PyTorch checkpoint"),
        "empty.pth": (b"", "not a PyTorch checkpoint"),
        "truncated.pth": (real[: len(real) // 2], "truncated or corrupt zip"),
        "zipmagic.pth": (b"PK\x03\x04" + b"\0" * 100, "truncated or corrupt zip"),
        "picklejunk.pth": (b"\x80\x02garbage", "corrupt, truncated or malformed pickle"),
        "nonckpt.pth": (forge.evil_pickle([1, 2, 3]), "bad magic"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=match):
            read_torch_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="cannot open"):
        read_torch_checkpoint(tmp_path / "missing.pth")


def test_bad_archives(tmp_path):
    path = tmp_path / "a.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("something/else.txt", b"x")
    with pytest.raises(CheckpointError, match="data.pkl"):
        read_torch_checkpoint(path)
    forge.write_zip(path, forge.program(forge.dict_of({"w": forge.tensor("7", 6, (6,), (1,))})), {})
    with pytest.raises(CheckpointError, match="data/7 is missing"):
        read_torch_checkpoint(path)
    forge.write_zip(path, forge.program(forge.dict_of({"a": forge.string("x")})), {})
    with pytest.raises(CheckpointError, match="no state_dict"):
        read_torch_checkpoint(path)
    # A flipped byte inside a tensor record fails the zip CRC check.
    _one_tensor_file(path, 6, (6,), (1,))
    raw = bytearray(path.read_bytes())
    pos = raw.index(np.arange(6, dtype=np.float32).tobytes()) + 5
    raw[pos] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_torch_checkpoint(path)


def test_legacy_truncated(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(100.0)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(CheckpointError, match="remain"):
        read_torch_checkpoint(path)


def test_deep_nesting_is_a_clean_error(tmp_path):
    depth = 200_000
    body = b"]" * depth + b"a" * (depth - 1)  # EMPTY_LIST x N, then APPEND each into the previous
    path = tmp_path / "deep.pth"
    forge.write_zip(path, forge.program(body), {})
    with pytest.raises(CheckpointError, match="nests too deeply"):
        load_pickled(path)


def test_numpy_scalars_and_arrays(tmp_path):
    path = tmp_path / "np.pth"
    path.write_bytes(b"")
    obj = {"s": np.float64(0.5), "i": np.int32(-3), "a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    forge.write_zip(path, forge.evil_pickle(obj), {})
    got = load_pickled(path)
    assert got["s"] == 0.5 and got["i"] == -3
    np.testing.assert_array_equal(got["a"], obj["a"])
    forge.write_zip(path, forge.evil_pickle({"o": np.array([1, "x"], dtype=object)}), {})
    with pytest.raises(CheckpointError):
        load_pickled(path)


def _build(target: bytes, state: bytes) -> bytes:
    return target + state + b"b"  # BUILD: set state on the object below it


@pytest.mark.parametrize("case", ["tensor-shape", "function-attr", "class-attr", "dtype-object"])
def test_build_cannot_tamper_with_reader_objects(tmp_path, case):
    """BUILD (pickle's 'set attributes') may only feed stand-ins; it must not rewrite a checked
    tensor header after validation, nor patch the reader's own functions or classes."""
    checked = forge.tensor("0", 6, (6,), (1,))
    if case == "tensor-shape":
        body = _build(checked, forge.dict_of({"shape": forge.tup([forge.integer(10**6)])}))
    elif case == "function-attr":
        slot = forge.dict_of({"__defaults__": forge.tup([forge.string("zlib")])})
        body = _build(forge.glob("_codecs", "encode"), forge.tup([b"N", slot]))
    elif case == "class-attr":
        slot = forge.dict_of({"qualname": forge.string("x")})
        body = _build(forge.glob("collections", "OrderedDict"), forge.tup([b"N", slot]))
    else:
        body = _build(
            forge.glob("numpy", "dtype") + forge.tup([forge.string("f8")]) + forge.REDUCE,
            forge.dict_of({"dtype": forge.string("O")}),
        )
    path = tmp_path / "build.pth"
    forge.write_zip(path, forge.program(forge.dict_of({"w": body})), {"0": np.zeros(6, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="BUILD|state"):
        load_pickled(path)
    from converters import safe_pickle

    assert safe_pickle._codecs_encode.__defaults__ == ("utf-8", "strict")
    assert not hasattr(safe_pickle._OrderedDict, "qualname")


@pytest.mark.parametrize("container", ["legacy-stream", "zip"])
def test_huge_declared_pickle_lengths_allocate_nothing(tmp_path, container):
    import struct

    # BINBYTES8 and FRAME both declare a 1 TiB payload that is not there.
    for body in (
        b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc",
        b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.",
    ):
        path = tmp_path / "huge.pth"
        if container == "zip":
            forge.write_zip(path, body, {})
        else:
            path.write_bytes(body)
        tracemalloc.start()
        try:
            with pytest.raises(CheckpointError):
                read_torch_checkpoint(path)
            assert tracemalloc.get_traced_memory()[1] < 16 * 2**20
        finally:
            tracemalloc.stop()


def test_compressed_records_are_refused(tmp_path):
    # 64 MiB of zeros compresses to ~64 KiB: a zip bomb if records were decompressed blindly.
    path = tmp_path / "bomb.pth"
    numel = 16 * 2**20
    pkl = forge.program(forge.dict_of({"w": forge.tensor("0", numel, (numel,), (1,))}))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pkl, compress_type=zipfile.ZIP_STORED)
        zf.writestr("archive/data/0", bytes(4 * numel))
    assert path.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match="compressed"):
        read_torch_checkpoint(path)


def test_shared_storage_amplification_is_capped(tmp_path):
    # 4000 views of one 1 MiB storage would copy out ~4 GiB from a ~1 MiB file.
    numel = 2**18
    views = {f"w{i}": forge.tensor("0", numel, (numel,), (1,)) for i in range(4000)}
    path = tmp_path / "amp.pth"
    forge.write_zip(path, forge.program(forge.dict_of(views)), {"0": bytes(4 * numel)})
    with pytest.raises(CheckpointError, match="far more memory"):
        read_torch_checkpoint(path)


def _fuzz_seed_pickle() -> bytes:
    sd = {"a": forge.tensor("0", 6, (2, 3), (3, 1)), "b": forge.tensor("0", 6, (3,), (2,), offset=1)}
    cfg = (
        forge.glob("recbole.config.configurator", "Config")
        + forge.EMPTY_TUPLE
        + b"\x81"
        + forge.dict_of(
            {"final_config_dict": forge.dict_of({"n_heads": forge.integer(2), "dataset": forge.string("x")})}
        )
        + b"b"
    )
    return forge.program(forge.dict_of({"config": cfg, "epoch": forge.integer(3), "state_dict": forge.dict_of(sd)}))


def test_fuzzed_pickles_give_data_or_checkpoint_error(tmp_path):
    """Random byte edits of a valid checkpoint pickle: a result or a CheckpointError, nothing else."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    seed = _fuzz_seed_pickle()
    data0 = np.arange(6, dtype=np.float32).tobytes()
    path = tmp_path / "fuzz.pth"
    forge.write_zip(path, seed, {"0": data0})
    ok = read_torch_checkpoint(path)
    assert ok.config == {"n_heads": 2, "dataset": "x"} and ok.state_dict["b"].tolist() == [1.0, 3.0, 5.0]

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(
        st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), min_size=1, max_size=4),
        st.integers(0, len(seed)),
    )
    def check(edits, cut):
        pkl = bytearray(seed)
        for pos, val in edits:
            pkl[pos] = val
        forge.write_zip(path, bytes(pkl[: max(cut, 1)] if cut < len(seed) // 4 else pkl), {"0": data0})
        try:
            read_torch_checkpoint(path)
        except CheckpointError:
            pass

    check()
