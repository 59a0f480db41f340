"""Read PyTorch checkpoint files without torch, without recbole, and without running pickle code.

A pickle is a program: `torch.load(weights_only=False)` on a stranger's file can run anything.
Here the unpickler resolves globals only from an explicit allow-list, and every allowed global
maps to OUR function or stand-in class (never to the real torch/recbole/numpy callable), so the
worst a hostile file can do is fail with a CheckpointError naming what it asked for.

Tensors are rebuilt from the archive's raw storage records with numpy. Every size a file declares
(storage element count, shape, strides, offsets) is checked against the bytes actually present
before anything is allocated, so a lying header costs no memory.

Formats: the zip archive written by `torch.save` since PyTorch 1.6, and the legacy stream format
(`_use_new_zipfile_serialization=False`).
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import io
import math
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftragrec_jax.errors import CheckpointError

# data.pkl of a real checkpoint is tens of KB (tensors live in separate records); anything
# near this cap is not a checkpoint we want to hold in memory as Python objects.
MAX_PICKLE_BYTES = 256 * 2**20
MAX_NDIM = 64
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
    state_dict: dict[str, np.ndarray]  # parameter name -> array, in file order
    config: dict | None  # RecBole Config.final_config_dict as plain data, if the file has one
    meta: dict  # JSON-able facts about the file: format, top-level keys, epoch, model class, ...


# ---------------------------------------------------------------- stand-ins (data only)


class StandIn:
    """A global we allow to be referenced but never run: calls and state are recorded as data."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.qualname} args={self.args!r}>"


_STANDIN_CACHE: dict[str, type] = {}


def _standin(qualname: str) -> type:
    cls = _STANDIN_CACHE.get(qualname)
    if cls is None:
        cls = type(qualname.rsplit(".", 1)[-1], (StandIn,), {"qualname": qualname})
        _STANDIN_CACHE[qualname] = cls
    return cls


def _standin_allowed(module: str, name: str) -> bool:
    if module == "recbole.config.configurator" and name == "Config":
        return True
    if module == "recbole.utils.enum_type":
        return True
    if module == "recbole.model" or module.startswith("recbole.model."):
        return True
    return module == "yaml.loader" and name in {"FullLoader", "Loader", "SafeLoader"}


class _OrderedDict(OrderedDict):
    """collections.OrderedDict whose pickled attributes (torch's `_metadata`) are kept as data."""

    def __setstate__(self, state):
        self.pickle_state = state


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _bfloat16():
    import ml_dtypes  # a jax dependency; only needed for bfloat16 files

    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "DoubleStorage": lambda: np.dtype("f8"),
    "FloatStorage": lambda: np.dtype("f4"),
    "HalfStorage": lambda: np.dtype("f2"),
    "BFloat16Storage": _bfloat16,
    "LongStorage": lambda: np.dtype("i8"),
    "IntStorage": lambda: np.dtype("i4"),
    "ShortStorage": lambda: np.dtype("i2"),
    "CharStorage": lambda: np.dtype("i1"),
    "ByteStorage": lambda: np.dtype("u1"),
    "BoolStorage": lambda: np.dtype("?"),
    "ComplexFloatStorage": lambda: np.dtype("c8"),
    "ComplexDoubleStorage": lambda: np.dtype("c16"),
    "UntypedStorage": lambda: np.dtype("u1"),
}


def _int(x, what: str, lo: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < lo:
        raise CheckpointError(f"{what}: expected an integer >= {lo}, got {x!r}")
    return x


def _int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or len(x) > MAX_NDIM:
        raise CheckpointError(f"{what}: expected a tuple of at most {MAX_NDIM} integers, got {x!r}")
    return tuple(_int(v, what) for v in x)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Our replacement for torch._utils._rebuild_tensor_v2: checks the view fits its storage."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"tensor: storage must come from the archive, got {type(storage).__name__}")
    offset = _int(storage_offset, "tensor storage_offset")
    shape = _int_tuple(size, "tensor size")
    strides = _int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise CheckpointError(f"tensor: size {shape} and stride {strides} differ in length")
    count = math.prod(shape)
    if count:
        last = offset + sum((s - 1) * st for s, st in zip(shape, strides))
        if last >= storage.numel or count > storage.numel:
            raise CheckpointError(
                f"tensor: shape {shape} (stride {strides}, offset {offset}) needs more than the "
                f"{storage.numel} elements its storage {storage.key!r} declares"
            )
    return _TensorRef(storage, offset, shape, strides)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(data, _TensorRef):
        raise CheckpointError("parameter: expected a tensor")
    return data


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise CheckpointError(f"torch.device: unexpected arguments {kind!r}, {index!r}")
    return kind if index is None else f"{kind}:{index}"


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles spell bytes as _codecs.encode(str, "latin1"); nothing else is needed.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"_codecs.encode: only str -> latin1 is allowed, got {encoding!r}")
    return obj.encode("latin1")


class _NumpyDType:
    """numpy.dtype(spec, align, copy) for plain numeric types; BUILD's state sets the byte order."""

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str):
            raise CheckpointError(f"numpy.dtype: expected a type code, got {spec!r}")
        try:
            dt = np.dtype(spec)
        except TypeError:
            raise CheckpointError(f"numpy.dtype: unknown type code {spec!r}") from None
        if dt.kind not in "biufc?" or dt.fields is not None or dt.subdtype is not None:
            raise CheckpointError(f"numpy.dtype: only plain numeric types are allowed, got {spec!r}")
        self.dtype = dt

    def __setstate__(self, state):
        # numpy's state is (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise CheckpointError(f"numpy.dtype: unexpected pickled state {state!r:.80}")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _dtype_of(x) -> np.dtype:
    if not isinstance(x, _NumpyDType):
        raise CheckpointError("numpy: expected a dtype built by numpy.dtype")
    return x.dtype


def _numpy_scalar(dtype, data=None):
    dt = _dtype_of(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise CheckpointError(f"numpy scalar: expected {dt.itemsize} bytes for {dt}")
    return np.frombuffer(data, dt)[0].astype(dt.newbyteorder("="))


class _NumpyArray:
    """numpy.ndarray rebuilt from (version, shape, dtype, fortran, raw bytes): numeric dtypes only."""

    def __init__(self, *args):
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise CheckpointError("numpy array: unexpected pickled state")
        _, shape, dtype, fortran, raw = state
        shape, dt = _int_tuple(shape, "numpy array shape"), _dtype_of(dtype)
        if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * dt.itemsize:
            raise CheckpointError(f"numpy array: {shape} of {dt} does not match its {len(raw)} data bytes")
        arr = np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C")
        self.array = np.array(arr, dtype=dt.newbyteorder("="), order="C")


def _numpy_reconstruct(cls, shape=(0,), dtype=b"b"):
    if cls is not _NumpyArray:
        raise CheckpointError("numpy _reconstruct: only numpy.ndarray is allowed")
    return _NumpyArray()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "device"): _torch_device,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy", "ndarray"): _NumpyArray,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "scalar")] = _numpy_scalar
    _ALLOWED[(_mod, "_reconstruct")] = _numpy_reconstruct


# Objects whose pickled state BUILD may set: each has a __setstate__ that only records or checks data.
_BUILDABLE = (StandIn, _OrderedDict, _NumpyDType, _NumpyArray)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (data.pkl is small), so BUILD can be restricted too.

    BUILD is pickle's "set attributes" step; unrestricted it would let a file rewrite a tensor
    header after it was checked, or patch this module's functions and classes.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, source: str, persistent: Callable[[Any], Any] | None):
        super().__init__(file, encoding="utf-8")
        self.source = source
        self._persistent = persistent

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _BUILDABLE):
            raise CheckpointError(f"{self.source}: pickle BUILD on {type(inst).__name__} is not allowed")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        # Protocol-2 pickles (torch.save's) use Python-2 names (__builtin__, commands); map them
        # like pickle's own fix_imports so the allow-list and the error speak Python 3.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name]())
        if _standin_allowed(module, name):
            return _standin(f"{module}.{name}")
        raise CheckpointError(f"{self.source}: refusing pickle global {module}.{name} (not on the allow-list)")

    def persistent_load(self, pid):
        if self._persistent is None:
            raise CheckpointError(f"{self.source}: unexpected persistent id in pickle")
        return self._persistent(pid)


def _unpickle(data, source: str, persistent=None):
    f = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return _RestrictedUnpickler(f, source, persistent).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{source}: pickle nests too deeply") from None
    except Exception as e:  # bad opcodes, truncation, or arguments our stand-ins reject
        raise CheckpointError(f"{source}: corrupt, truncated or malformed pickle ({type(e).__name__}: {e})") from None


def _storage_ref(pid, source: str, legacy: bool) -> _StorageRef:
    n = 6 if legacy else 5
    if not isinstance(pid, tuple) or len(pid) != n or pid[0] != "storage":
        raise CheckpointError(f"{source}: unexpected persistent id {pid!r:.200}")
    stype, key, _location, numel = pid[1:5]
    if not isinstance(stype, _StorageType) or not isinstance(key, str):
        raise CheckpointError(f"{source}: malformed storage reference {pid!r:.200}")
    if legacy and pid[5] is not None:
        raise CheckpointError(f"{source}: legacy storage views are not supported (storage {key!r})")
    return _StorageRef(key, stype.dtype, _int(numel, f"{source}: storage {key!r} size"))


# ---------------------------------------------------------------- archive formats


class _ZipArchive:
    def __init__(self, path: Path, zf: zipfile.ZipFile):
        self.path, self.zf = path, zf
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: zip archive without exactly one <name>/data.pkl: not a torch.save file")
        self.prefix = pkls[0][: -len("data.pkl")]
        self.refs: dict[str, _StorageRef] = {}
        self.cache: dict[str, bytes] = {}
        order = self._read_small("byteorder", b"little")
        if order not in (b"little", b"big"):
            raise CheckpointError(f"{path}: byteorder record is {order!r:.40}, expected little or big")
        self.byteorder = order.decode()

    def _read_small(self, name: str, default: bytes) -> bytes:
        try:
            info = self.zf.getinfo(self.prefix + name)
        except KeyError:
            return default
        return self._read(info, 64)

    def _read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        if info.file_size > limit:
            raise CheckpointError(f"{self.path}: record {info.filename} is {info.file_size} bytes (limit {limit})")
        if info.compress_type != zipfile.ZIP_STORED:
            # torch.save never compresses; refusing keeps memory bounded by the file size (no zip bombs)
            raise CheckpointError(f"{self.path}: record {info.filename} is compressed, torch.save never compresses")
        try:
            with self.zf.open(info) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise CheckpointError(f"{self.path}: record {info.filename} is corrupt or truncated ({e})") from None
        if len(data) != info.file_size:
            raise CheckpointError(
                f"{self.path}: record {info.filename} holds {len(data)} bytes, header says {info.file_size}"
            )
        return data

    def load(self):
        info = self.zf.getinfo(self.prefix + "data.pkl")
        data = self._read(info, MAX_PICKLE_BYTES)
        return _unpickle(data, f"{self.path}:{info.filename}", self._persistent)

    def _persistent(self, pid):
        ref = _storage_ref(pid, str(self.path), legacy=False)
        seen = self.refs.setdefault(ref.key, ref)
        if seen.dtype.itemsize * seen.numel != ref.dtype.itemsize * ref.numel:
            raise CheckpointError(f"{self.path}: storage {ref.key!r} is declared with two different sizes")
        return ref

    def storage_bytes(self, ref: _StorageRef) -> bytes:
        if ref.key not in self.cache:
            name = f"{self.prefix}data/{ref.key}"
            try:
                info = self.zf.getinfo(name)
            except KeyError:
                raise CheckpointError(f"{self.path}: storage record {name} is missing") from None
            want = ref.numel * ref.dtype.itemsize
            if info.file_size != want:
                raise CheckpointError(
                    f"{self.path}: storage {name} declares {ref.numel} x {ref.dtype} ({want} bytes) "
                    f"but the record holds {info.file_size} bytes"
                )
            self.cache[ref.key] = self._read(info, want)
        return self.cache[ref.key]


class _BoundedReader:
    """File reads capped at the bytes left, so a pickle's declared length never sizes an allocation."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def _left(self, n) -> int:
        left = max(self.size - self.f.tell(), 0)
        return left if n is None or n < 0 else min(n, left)

    def read(self, n=-1) -> bytes:
        return self.f.read(self._left(n))

    def readline(self, n=-1) -> bytes:
        return self.f.readline(self._left(n))


class _LegacyArchive:
    """Pre-1.6 stream: magic, protocol, sys_info, object pickle, key list, then raw storages."""

    def __init__(self, path: Path, f):
        self.path, self.f = path, f
        self.size = os.fstat(f.fileno()).st_size
        self.refs: dict[str, _StorageRef] = {}
        self.cache: dict[str, bytes] = {}
        self.byteorder = "little"  # legacy storages are always written little-endian

    def load(self):
        src, stream = str(self.path), _BoundedReader(self.f, self.size)
        if _unpickle(stream, src) != LEGACY_MAGIC:
            raise CheckpointError(f"{src}: not a PyTorch checkpoint (bad magic number)")
        if _unpickle(stream, src) != LEGACY_PROTOCOL:
            raise CheckpointError(f"{src}: unsupported legacy torch protocol")
        sys_info = _unpickle(stream, src)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError(f"{src}: big-endian legacy checkpoints are not supported")
        obj = _unpickle(stream, src, self._persistent)
        keys = _unpickle(stream, src)
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(self.refs):
            raise CheckpointError(f"{src}: storage key list does not match the tensors in the pickle")
        for key in keys:
            ref = self.refs[key]
            head = self.f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{src}: truncated before storage {key!r}")
            (numel,) = struct.unpack("<q", head)
            nbytes = ref.numel * ref.dtype.itemsize
            if numel != ref.numel or nbytes > self.size - self.f.tell():
                raise CheckpointError(
                    f"{src}: storage {key!r} declares {ref.numel} elements, its record says {numel} "
                    f"and {self.size - self.f.tell()} bytes remain"
                )
            self.cache[key] = self.f.read(nbytes)
        return obj

    def _persistent(self, pid):
        ref = _storage_ref(pid, str(self.path), legacy=True)
        seen = self.refs.setdefault(ref.key, ref)
        if seen != ref:
            raise CheckpointError(f"{self.path}: storage {ref.key!r} is declared twice differently")
        return ref

    def storage_bytes(self, ref: _StorageRef) -> bytes:
        return self.cache[ref.key]


# ---------------------------------------------------------------- plain data


class _Plain:
    """Turns the unpickled graph into plain Python/numpy data, building tensors on demand."""

    def __init__(self, archive):
        self.archive = archive
        self.active: set[int] = set()
        # Views of one storage are copied out separately, so a small pickle could ask for the same
        # big storage thousands of times; cap the total at a few times the file's own size.
        self.budget = 4 * os.path.getsize(archive.path) + 256 * 2**20

    def tensor(self, t: _TensorRef) -> np.ndarray:
        ref = t.storage
        self.budget -= math.prod(t.shape) * ref.dtype.itemsize
        if self.budget < 0:
            raise CheckpointError(f"{self.archive.path}: tensors would take far more memory than the file holds")
        dtype = ref.dtype.newbyteorder(">" if self.archive.byteorder == "big" else "<")
        if math.prod(t.shape) == 0:
            return np.zeros(t.shape, ref.dtype)
        base = np.frombuffer(self.archive.storage_bytes(ref), dtype)
        last = t.offset + sum((s - 1) * st for s, st in zip(t.shape, t.stride))
        if len(base) != ref.numel or last >= len(base):  # re-checked: as_strided trusts its arguments
            raise CheckpointError(f"{self.archive.path}: tensor view {t.shape} does not fit storage {ref.key!r}")
        view = np.lib.stride_tricks.as_strided(
            base[t.offset :], t.shape, tuple(s * dtype.itemsize for s in t.stride), writeable=False
        )
        return np.array(view, dtype=ref.dtype.newbyteorder("="), order="C")

    def __call__(self, x):
        if isinstance(x, _TensorRef):
            return self.tensor(x)
        if isinstance(x, (str, bytes, int, float, bool, complex, type(None), np.generic)):
            return x.item() if isinstance(x, np.generic) else x
        if isinstance(x, _NumpyArray):
            return x.array
        if isinstance(x, _NumpyDType):
            return x.dtype.str
        if isinstance(x, type) and issubclass(x, StandIn):
            return x.qualname
        if isinstance(x, (_StorageType, _StorageRef)):
            return repr(x)
        if id(x) in self.active:
            raise CheckpointError(f"{self.archive.path}: pickle contains a self-referencing structure")
        self.active.add(id(x))
        try:
            if isinstance(x, dict):
                return {self(k) if not isinstance(k, str) else k: self(v) for k, v in x.items()}
            if isinstance(x, tuple):
                return tuple(self(v) for v in x)
            if isinstance(x, (list, set, frozenset)):
                return [self(v) for v in x]
            if isinstance(x, StandIn):
                if x.state is None and len(x.args) == 1 and isinstance(x.args[0], (int, str)):
                    return f"{x.qualname}({x.args[0]!r})"  # an enum member such as ModelType(2)
                return {"__class__": x.qualname, "args": self(list(x.args)), "state": self(x.state)}
            raise CheckpointError(f"{self.archive.path}: unexpected object {type(x).__name__} in pickle")
        finally:
            self.active.discard(id(x))


# ---------------------------------------------------------------- entry points


def _open_archive(path: Path, f):
    head = f.read(4)
    f.seek(0)
    if head.startswith(b"PK\x03\x04"):
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt zip archive ({e})") from None
        return _ZipArchive(path, zf)
    if head[:1] == b"\x80":
        return _LegacyArchive(path, f)
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (starts with {head!r}, expected a zip or pickle)")


def _load(path, select: Callable[[Any, _Plain], Any]):
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open checkpoint ({e.strerror})") from None
    with f:
        archive = _open_archive(path, f)
        obj = archive.load()
        plain = _Plain(archive)
        try:
            return select(obj, plain), archive
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(f"{path}: pickle nests too deeply") from None
        except (TypeError, ValueError, OverflowError) as e:  # e.g. a tensor used as a dict key
            raise CheckpointError(f"{path}: malformed checkpoint content ({type(e).__name__}: {e})") from None


def load_pickled(path) -> Any:
    """The whole pickled object as plain data (dicts, lists, numpy arrays); never runs file code."""
    out, _ = _load(path, lambda obj, plain: plain(obj))
    return out


def read_torch_checkpoint(path) -> TorchCheckpoint:
    """State dict (numpy), RecBole config (plain dict) and facts about a torch.save file.

    Accepts a RecBole checkpoint (dict with `state_dict`, `config`, `epoch`, ...) or a plain
    state dict. The optimizer state is skipped without building its tensors.
    """

    def select(obj, plain: _Plain):
        meta: dict[str, Any] = {}
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            meta["kind"] = "recbole"
            meta["top_level_keys"] = [str(k) for k in obj]
            raw_sd = obj["state_dict"]
            for key in ("epoch", "cur_step", "best_valid_score"):
                if key in obj:
                    v = plain(obj[key])
                    meta[key] = v if isinstance(v, (int, float, str)) else repr(v)
            config, model_class = _config_of(obj.get("config"), plain)
            if model_class:
                meta["model_class"] = model_class
        elif isinstance(obj, dict) and obj and all(isinstance(v, _TensorRef) for v in obj.values()):
            meta["kind"] = "state_dict"
            raw_sd, config = obj, None
        else:
            raise CheckpointError(
                f"{path}: no state_dict found (expected a RecBole checkpoint dict or a plain state dict, "
                f"got {type(obj).__name__})"
            )
        state, skipped = {}, []
        for k, v in raw_sd.items():
            if isinstance(k, str) and isinstance(v, _TensorRef):
                state[k] = plain(v)
            else:
                skipped.append(str(k))
        if skipped:
            meta["non_tensor_entries"] = skipped
        return state, config, meta

    (state, config, meta), archive = _load(path, select)
    meta["format"] = "zip" if isinstance(archive, _ZipArchive) else "legacy"
    return TorchCheckpoint(state_dict=state, config=config, meta=meta)


def _config_of(cfg, plain: _Plain) -> tuple[dict | None, str | None]:
    """RecBole's Config keeps the merged settings in `final_config_dict`; take that as plain data."""
    if cfg is None:
        return None, None
    if isinstance(cfg, dict):
        return plain(cfg), None
    if isinstance(cfg, StandIn) and isinstance(cfg.state, dict):
        final = cfg.state.get("final_config_dict")
        if isinstance(final, dict):
            config = plain(final)
            model_class = plain(cfg.state.get("model_class"))
            return config, model_class if isinstance(model_class, str) else None
    return None, None
