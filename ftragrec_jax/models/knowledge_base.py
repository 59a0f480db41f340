"""FTragrec's knowledge base: every training sample encoded once by the frozen encoder, plus its retrieval key.

Per entry: h_j (frozen encoder output, dropout off, float32 [N, H]), target item, user, untruncated prefix
length, and key_j = g(h_j)/|g(h_j)| with g as of the last refresh; with knn_value_window m > 1 also its value
window: its target and the targets of the same user's next m-1 training samples (`value_windows`). Entry i of a
base built from the training split IS training sample i, so `memory.h` doubles as the cached `seq_output` of the
training samples (the encoder is frozen and deterministic).

Encoding and key computation run in fixed-size jitted chunks (the last chunk padded) so memory stays bounded
and one compilation serves every chunk. `refresh_keys` recomputes all keys with the current g and rebuilds the
FAISS index; it runs between epochs, outside jit, and returns its wall time for the log.

Memory, per entry of H = hidden_size: h 4H bytes (2H as float16), key 4H, target, user, prefix length 12, and
the backbone's CE 4 when cached; each held once: on a CPU backend the host arrays are read-only views of the
device buffers (`_placed`), on an accelerator they sit in host memory beside the device copy. A FAISS index
adds its own copy of the keys (Flat and IVF-Flat 4H bytes per entry; PQ codes far fewer).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftragrec_jax.data.samples import SequenceSamples
from ftragrec_jax.errors import ConfigError
from ftragrec_jax.models.retriever import embed
from ftragrec_jax.models.search import BACKENDS, FaissSearcher, Memory
from ftragrec_jax.models.softmax_ce import cross_entropy_rows

SAMPLE_FIELDS = ("item_seq", "item_seq_len", "target", "user", "prefix_len")
KB_DTYPES = ("float32", "float16")  # storage of h (knowledge_base_dtype); every computation reads it as float32


def aligned_empty(shape, dtype) -> np.ndarray:
    """np.empty whose data starts on a 64-byte boundary: a CPU backend's device_put then takes the buffer as
    it is instead of copying it (numpy's own large allocations start 16 bytes past a page)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start : start + n].view(dtype).reshape(shape)


def _placed(a: np.ndarray):
    """(device copy of host array a, the host array to keep). On a CPU backend the device buffer is host
    memory already (the very buffer of `a` when it is 64-byte aligned, `aligned_empty`), so the kept array is
    a read-only view of it: the base is held once, not twice; on an accelerator the host array is kept."""
    d = jax.device_put(a)
    if all(dev.platform == "cpu" for dev in d.devices()):
        return d, np.asarray(d)
    return d, a


def _field(samples, name):
    value = samples[name] if isinstance(samples, dict) else getattr(samples, name)
    return np.asarray(value)


def _encode(encoder, samples, chunk_size: int, dtype) -> np.ndarray:
    """The frozen encoder over SequenceSamples (windows gathered chunk by chunk, never the whole [N, L]
    matrix) or over a dict holding item_seq and item_seq_len."""
    if isinstance(samples, SequenceSamples):
        return encode_samples(encoder, samples, None, chunk_size=chunk_size, dtype=dtype)
    return encode_samples(
        encoder, _field(samples, "item_seq"), _field(samples, "item_seq_len"), chunk_size=chunk_size, dtype=dtype
    )


@functools.lru_cache(maxsize=16)
def _apply_fn(graphdef, kind, item_chunk_size: int = 0):
    def encode(state, item_seq, item_seq_len):
        return nnx.merge(graphdef, state)(item_seq, item_seq_len)

    def keys(state, h):
        return embed(nnx.merge(graphdef, state), h.astype(jnp.float32))

    def rec_ce(state, h, target):  # the loss's own CE: the cached value is the one the step would compute
        table = nnx.merge(graphdef, state).item_table()
        return cross_entropy_rows(h.astype(jnp.float32), table, target, item_chunk_size)

    return jax.jit({"encode": encode, "keys": keys, "rec_ce": rec_ce}[kind])


def _chunked(fn, state, arrays, chunk_size, dtype=np.float32):
    """Apply a jitted fn to row chunks of numpy arrays; the last chunk is padded so every call has one shape.
    `arrays` may also be a function (start, stop) -> the chunk's arrays, with its row count as `n`."""
    if callable(arrays[0]):
        rows, n = arrays
    else:
        rows, n = (lambda a, b, whole=tuple(arrays): [x[a:b] for x in whole]), len(arrays[0])
    if n == 0:
        raise ConfigError("knowledge base: no samples to encode")
    c = max(1, min(int(chunk_size), n))
    out = None  # written chunk by chunk: a list of chunks plus their concatenation would hold the result twice
    for start in range(0, n, c):
        part = rows(start, start + c)
        m = len(part[0])
        if m < c:
            part = [np.concatenate([p, np.repeat(p[:1], c - m, axis=0)]) for p in part]
        chunk = np.asarray(fn(state, *part))[:m]
        if out is None:
            out = aligned_empty((n, *chunk.shape[1:]), dtype)
        out[start : start + m] = chunk
    return out


def encode_samples(encoder, item_seq, item_seq_len, *, chunk_size: int = 2048, dtype="float32") -> np.ndarray:
    """Frozen encoder output, dropout off, [N, H] stored as `dtype` (written chunk by chunk: a float16 base
    never exists in float32 as a whole). item_seq: an [N, L] matrix, or SequenceSamples (item_seq_len None)."""
    graphdef, state = nnx.split(encoder)
    fn = _apply_fn(graphdef, "encode")
    if isinstance(item_seq, SequenceSamples):  # windows: each chunk's rows gathered when it is encoded
        samples = item_seq
        arrays = (lambda a, b: [samples.sequences(slice(a, b)), samples.item_seq_len[a:b]], len(samples))
    else:
        arrays = [np.asarray(item_seq, np.int32), np.asarray(item_seq_len, np.int32)]
    return _chunked(fn, state, arrays, chunk_size, np.dtype(dtype))


def compute_keys(retriever, h, *, chunk_size: int = 65536) -> np.ndarray:
    """g(h)/|g(h)| for every row of h, float32 [N, H]."""
    graphdef, state = nnx.split(retriever)
    return _chunked(_apply_fn(graphdef, "keys"), state, [np.asarray(h)], chunk_size)  # h of either storage dtype


def backbone_ce(encoder, h, target, *, chunk_size: int = 4096, item_chunk_size: int = 0) -> np.ndarray:
    """-log softmax(h·Eᵀ)[target] per row, float32 [N]: the frozen backbone's CE on each entry's target, over
    item chunks of item_chunk_size (0 = whole catalogue)."""
    graphdef, state = nnx.split(encoder)
    fn = _apply_fn(graphdef, "rec_ce", int(item_chunk_size))
    return _chunked(fn, state, [np.asarray(h), np.asarray(target, np.int32)], chunk_size)


def value_windows(target, user, prefix_len, m: int) -> np.ndarray:
    """int32 [N, m]: row j holds entry j's target, then the targets of the entries of the same user whose
    prefixes are 1, 2, ..., m-1 longer (the items that followed it), 0 where there is none (item 0 is the padding
    item of every vocabulary, never a target). Over training entries these are training items only, so a window
    never holds a validation or test item; which of them a query may see is decided per query (`ftragrec.
    neighbour_values`: nothing at or past the query's own target)."""
    target, user, prefix = (np.asarray(a, np.int64) for a in (target, user, prefix_len))
    n = len(target)
    out = np.zeros((n, m), np.int32)
    if n == 0:
        return out
    span = int(prefix.max()) + m + 1  # (user, prefix) -> one int64 key, ordered by user, then prefix
    key = (user - int(user.min())) * span + prefix
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    for w in range(m):
        at = np.minimum(np.searchsorted(ordered, key + w), n - 1)
        out[:, w] = np.where(ordered[at] == key + w, target[order[at]], 0)
    return out


def kb_options(hp, *, faiss_shards: int = 1, width: int | None = None) -> dict:
    """KnowledgeBase's settings (search backend and index, storage of h) from FTragrec hyperparameters
    (models/ftragrec.FTragrecHParams), read in this one place for training and inference. width: the FAISS
    searcher's top_k, hp.eval_search_k unless given (top_k, or value_rerank's pool; training passes hp.search_k,
    the retriever objective's pool)."""
    return dict(
        backend=hp.retrieval_backend,
        faiss_index=hp.faiss_index,
        nprobe=hp.nprobe,
        top_k=hp.eval_search_k if width is None else width,
        faiss_overfetch=hp.faiss_overfetch,
        faiss_rerank=hp.faiss_rerank,
        faiss_shards=faiss_shards,
        h_dtype=hp.knowledge_base_dtype,
        value_window=hp.knn_value_window if hp.fusion == "knn_lm" else 1,
    )


class KnowledgeBase:
    """Host arrays of the base, their device copy (`memory`, a pytree for jitted steps), and the FAISS index."""

    def __init__(
        self,
        h,
        target,
        user,
        prefix_len,
        keys,
        *,
        backend: str = "faiss",
        faiss_index: str = "Flat",
        nprobe: int = 16,
        top_k: int = 5,
        faiss_overfetch: int = 32,
        faiss_rerank: int = 0,
        h_dtype: str = "float32",
        n_train: int | None = None,
        faiss_shards: int = 1,
        rec_ce=None,
        item_chunk_size: int = 0,
        value_window: int = 1,
    ):
        if backend not in BACKENDS:
            raise ConfigError(f"config key 'retrieval_backend': expected one of {list(BACKENDS)}, got {backend!r}")
        if h_dtype not in KB_DTYPES:
            raise ConfigError(f"config key 'knowledge_base_dtype': expected one of {list(KB_DTYPES)}, got {h_dtype!r}")
        self.h = np.asarray(h, h_dtype)
        self.target = np.asarray(target, np.int32)
        self.user = np.asarray(user, np.int32)
        self.prefix_len = np.asarray(prefix_len, np.int32)
        self.keys = np.asarray(keys, np.float32)
        self.rec_ce = None if rec_ce is None else np.asarray(rec_ce, np.float32)
        n = len(self.h)
        if not all(
            len(a) == n
            for a in (self.target, self.user, self.prefix_len, self.keys)
            + (() if self.rec_ce is None else (self.rec_ce,))
        ):
            raise ConfigError("knowledge base: h, target, user, prefix_len, keys and rec_ce must have the same length")
        self.n_train = n if n_train is None else int(n_train)
        self.value_window = int(value_window)
        self.window = self._windows()
        self.item_chunk_size = int(item_chunk_size)  # rec_ce of entries added later, as the first ones
        self.backend = backend
        self.searcher = (
            FaissSearcher(
                faiss_index,
                self.h.shape[1],
                top_k=top_k,
                nprobe=nprobe,
                overfetch=faiss_overfetch,
                shards=faiss_shards,
                rerank=faiss_rerank,
            )
            if backend == "faiss"
            else None
        )
        self.index_seconds = self._sync()

    @classmethod
    def build(
        cls,
        encoder,
        retriever,
        samples,
        *,
        encode_chunk_size: int = 2048,
        key_chunk_size: int = 65536,
        with_rec_ce: bool = False,
        item_chunk_size: int = 0,
        **options,
    ) -> "KnowledgeBase":
        """Encode SequenceSamples (or a dict with the same fields) with the frozen encoder and g.
        with_rec_ce: also store the backbone's CE per entry (for the cached training step), computed over
        item chunks of item_chunk_size as the step would (0 = whole catalogue)."""
        arrays = {name: _field(samples, name) for name in SAMPLE_FIELDS[2:]}
        h = _encode(encoder, samples, encode_chunk_size, options.get("h_dtype", "float32"))
        keys = compute_keys(retriever, h, chunk_size=key_chunk_size)
        rec_ce = backbone_ce(encoder, h, arrays["target"], item_chunk_size=item_chunk_size) if with_rec_ce else None
        return cls(
            h,
            arrays["target"],
            arrays["user"],
            arrays["prefix_len"],
            keys,
            rec_ce=rec_ce,
            item_chunk_size=item_chunk_size,
            **options,
        )

    def _windows(self):
        """Value windows (value_windows) over the training entries; an entry added later (validation, before
        testing) votes for its own target only: the item after it is a test item. None when m = 1."""
        if self.value_window < 1:
            raise ConfigError(f"config key 'knn_value_window': expected an integer >= 1, got {self.value_window}")
        if self.value_window == 1:
            return None
        n = self.n_train
        out = np.zeros((len(self.target), self.value_window), np.int32)
        out[:n] = value_windows(self.target[:n], self.user[:n], self.prefix_len[:n], self.value_window)
        out[n:, 0] = self.target[n:]
        return out

    def __len__(self) -> int:
        return len(self.h)

    def train_arrays(self) -> dict:
        """The stored fields (model_dir.KB_FIELDS) of the training-split base, never the valid extension made
        before testing: what a model directory saves, and what another scorer of the same base starts from."""
        n = self.n_train
        return {"h": self.h[:n], "target": self.target[:n], "user": self.user[:n], "prefix_len": self.prefix_len[:n]}

    def _sync(self) -> float:
        """Copy the host arrays to the device and rebuild the index; returns the index build seconds."""
        self.memory, placed = None, {}  # the old device copies go before the new ones arrive
        for name in ("h", "keys", "target", "user", "prefix_len", "rec_ce", "window"):  # one at a time: a short peak
            if getattr(self, name) is None:
                placed[name] = None
                continue
            placed[name], kept = _placed(getattr(self, name))
            setattr(self, name, kept)
        self.memory = Memory(**placed)
        if self.searcher is None:
            return 0.0
        return self.searcher.build(self.keys, self.user, self.prefix_len)

    def refresh_keys(self, retriever, *, chunk_size: int = 65536) -> float:
        """Recompute every key with the current g and rebuild the index (between epochs). Returns seconds."""
        t0 = time.perf_counter()
        self.set_keys(compute_keys(retriever, self.h, chunk_size=chunk_size))
        return time.perf_counter() - t0

    def set_keys(self, keys) -> None:
        """Search with these keys from now on (one per entry), e.g. the keys of before a temporary refresh."""
        keys = np.asarray(keys, np.float32)
        if keys.ndim != 2 or len(keys) != len(self.h):
            raise ConfigError(f"knowledge base: keys of shape {keys.shape}, expected ({len(self.h)}, dim)")
        self.keys = keys
        self.index_seconds = self._sync_keys()

    def _sync_keys(self) -> float:
        """Like _sync when only the keys changed: h, target, user and prefix_len keep their device copies
        (copying h again would briefly hold it twice on the device)."""
        self.memory = self.memory._replace(keys=None)  # the old device keys go before the new ones arrive
        keys, self.keys = _placed(self.keys)
        self.memory = self.memory._replace(keys=keys)
        if self.searcher is None:
            return 0.0
        return self.searcher.build(self.keys, self.user, self.prefix_len)

    def extend(self, encoder, retriever, samples, *, encode_chunk_size: int = 2048) -> float:
        """Append more samples (validation, before testing: extend_memory_with_valid). Returns seconds."""
        t0 = time.perf_counter()
        arrays = {name: _field(samples, name) for name in SAMPLE_FIELDS[2:]}
        h = _encode(encoder, samples, encode_chunk_size, self.h.dtype)
        self.h = np.concatenate([self.h, h])
        for name in ("target", "user", "prefix_len"):
            setattr(self, name, np.concatenate([getattr(self, name), arrays[name].astype(np.int32)]))
        self.keys = np.concatenate([self.keys, compute_keys(retriever, h)])
        if self.rec_ce is not None:
            ce = backbone_ce(encoder, h, arrays["target"], item_chunk_size=self.item_chunk_size)
            self.rec_ce = np.concatenate([self.rec_ce, ce])
        self.window = self._windows()
        self.index_seconds = self._sync()
        return time.perf_counter() - t0

    def state(self) -> dict:
        """Host arrays a resumed run needs to search exactly as before (keys depend on g at the last refresh)."""
        return {"keys": self.keys}

    def restore_state(self, state: dict) -> None:
        keys = np.asarray(state["keys"], np.float32)
        if keys.shape != self.keys.shape:
            raise ConfigError(f"knowledge base: stored keys have shape {keys.shape}, expected {self.keys.shape}")
        self.set_keys(keys)
