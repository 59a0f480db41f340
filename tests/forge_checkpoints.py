"""Hand-assembled torch.save files for attack and corruption tests (no torch needed).

Protocol-2 opcodes are written directly so a test can declare any storage size, shape or
global it likes, including lies that torch itself would never write.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile

MARK, TUPLE, EMPTY_TUPLE, REDUCE, BINPERSID = b"(", b"t", b")", b"R", b"Q"
EMPTY_DICT, SETITEMS, NEWFALSE, STOP, PROTO2 = b"}", b"u", b"\x89", b".", b"\x80\x02"


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def string(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def integer(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def tup(items) -> bytes:
    return MARK + b"".join(items) + TUPLE


def tensor(key: str, numel: int, shape, stride, offset: int = 0, storage: str = "FloatStorage") -> bytes:
    pid = tup([string("storage"), glob("torch", storage), string(key), string("cpu"), integer(numel)])
    hooks = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    args = tup([pid + BINPERSID, integer(offset), tup(map(integer, shape)), tup(map(integer, stride)), NEWFALSE, hooks])
    return glob("torch._utils", "_rebuild_tensor_v2") + args + REDUCE


def dict_of(items: dict[str, bytes]) -> bytes:
    return EMPTY_DICT + MARK + b"".join(string(k) + v for k, v in items.items()) + SETITEMS


def program(body: bytes) -> bytes:
    return PROTO2 + body + STOP


def write_zip(path, pkl: bytes, records: dict[str, bytes], name: str = "archive") -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{name}/data.pkl", pkl)
        zf.writestr(f"{name}/byteorder", b"little")
        for key, data in records.items():
            zf.writestr(f"{name}/data/{key}", data)
        zf.writestr(f"{name}/version", b"3\n")


class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def evil_objects(marker: str) -> dict[str, object]:
    """Objects whose unpickling would create `marker` if the loader ran pickle code."""
    import subprocess

    return {
        "os.system": _Payload(os.system, (f"touch {marker}",)),
        "builtins.eval": _Payload(eval, (f"open({marker!r}, 'w').close()",)),
        "subprocess.call": _Payload(subprocess.call, (["touch", marker],)),
        "builtins.exec": _Payload(exec, (f"open({marker!r}, 'w').close()",)),
    }


def evil_pickle(obj, protocol: int = 2) -> bytes:
    return pickle.dumps(obj, protocol=protocol, fix_imports=False)  # keep real module names
