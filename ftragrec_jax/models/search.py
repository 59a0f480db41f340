"""Nearest-neighbour search over the knowledge base: the one place that decides what a query may retrieve.

Exclusion rule (both backends): a query of user u with untruncated prefix length l never retrieves an entry
with user == u and prefix_len >= l. That excludes its own sample and every later sample of the same user,
whose sequences contain the query's target; without it training learns to copy labels.

Order (every backend, chunk size and device count): score descending, and among equal scores the smaller entry
id first. Equal scores are common: duplicate prefixes (frequent in Amazon data) give identical keys, so which
of the tied entries fill the last slots must not depend on how the search is laid out.

Both backends only propose candidates (top_k + RERANK_MARGIN by their own scores); `rerank` recomputes each
candidate's score one (query, key) pair at a time and orders them, so `exact` and FAISS `Flat` return the same
ids even where their matmuls round two nearly equal scores differently.

Backends return ids only, int32 [B, top_k] in that order, -1 where fewer than top_k entries are allowed or
found (the model masks those; the training log reports the share of such queries as `short`):
- `exact`: inside the jitted graph; scores are computed one chunk of `chunk_size` keys at a time and merged
  into a running top-k, so memory is O(B · chunk_size) whatever the base size. On a mesh of several devices
  (`Memory.shard_over`) the keys are split along the `data` axis: each device searches its shard for the
  local top-k of every query (`jax.shard_map`), and one top-k over the D·top_k candidates merges them.
- `faiss`: a FAISS index searched on the host through `jax.pure_callback` with a static [B, top_k] result.
  It over-fetches `top_k + overfetch` candidates, drops excluded ones, orders the rest by (score, id), and
  re-searches only the rows that still lack top_k allowed candidates, or whose last slot ties with an unfetched
  score, with a larger fetch (bounded by `MAX_FETCH`), so for a Flat index the result equals `exact`.
Queries are cut from the autodiff graph (`stop_gradient`): ids are integers and carry no gradient; the model
recomputes scores of the retrieved ids in-graph, which is where gradients flow.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ftragrec_jax.errors import ConfigError
from ftragrec_jax.parallel import DATA_AXIS, replicate

BACKENDS = ("exact", "faiss")


class ShardedKeys:
    """The searched side of the base split along a mesh's `data` axis: keys and their own user/prefix_len
    copies, padded to a multiple of the device count (padding rows are never returned).

    A pytree whose static part is (mesh, n): a jitted step sees which mesh to search on from its argument's
    structure, so the same step function serves one device (plain arrays) and many (this)."""

    def __init__(self, keys, user, prefix_len, mesh: Mesh, n: int):
        self.keys, self.user, self.prefix_len, self.mesh, self.n = keys, user, prefix_len, mesh, int(n)


jax.tree_util.register_pytree_node(
    ShardedKeys,
    lambda s: ((s.keys, s.user, s.prefix_len), (s.mesh, s.n)),
    lambda aux, leaves: ShardedKeys(*leaves, *aux),
)


def _sharded_from_host(a: np.ndarray, mesh: Mesh, fill) -> jax.Array:
    """Pad rows to a multiple of the mesh size and place them along the data axis; every process passes the
    same full array and each device takes its slice (works single- and multi-process)."""
    d = mesh.size
    pad = -len(a) % d
    if pad:
        a = np.concatenate([a, np.full((pad, *a.shape[1:]), fill, a.dtype)])
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


class Memory(NamedTuple):
    """Device-side knowledge base (a pytree: pass it into jitted steps as an argument, never close over it)."""

    h: jax.Array  # float32 [N, H]: frozen encoder output of each entry (also the cached seq_output of train samples)
    keys: jax.Array | ShardedKeys  # float32 [N, H]: g(h)/|g(h)| as of the last refresh (what the index searches)
    target: jax.Array  # int32 [N]: the entry's target item
    user: jax.Array  # int32 [N]
    prefix_len: jax.Array  # int32 [N]: untruncated prefix length
    # float32 [N]: the frozen backbone's CE on each entry's own target. A constant of the frozen model, so the
    # cached training step reads it instead of scoring all items a second time; None = compute in the step
    rec_ce: jax.Array | None = None
    # int32 [N, m]: the entry's value window with knn_value_window m > 1 (knowledge_base.value_windows); None = its
    # target alone
    window: jax.Array | None = None

    def shard_over(self, mesh: Mesh) -> "Memory":
        """This base placed on `mesh`: keys (with user/prefix_len copies) split along the data axis, the rest
        replicated (h and target are gathered by global id after the search). One device: all replicated."""
        keys = self.keys
        if isinstance(keys, ShardedKeys):
            if keys.mesh == mesh:
                return self
            raise ConfigError("knowledge base: already sharded over another mesh")
        rest = replicate(self._replace(keys=None), mesh)
        if mesh.size == 1:
            return rest._replace(keys=replicate(keys, mesh))
        host = [np.asarray(x) for x in (keys, self.user, self.prefix_len)]
        sk = ShardedKeys(
            _sharded_from_host(host[0], mesh, 0.0),
            _sharded_from_host(host[1], mesh, -1),
            _sharded_from_host(host[2], mesh, 0),
            mesh,
            len(host[0]),
        )
        return rest._replace(keys=sk)


def excluded(q_user, q_prefix, e_user, e_prefix):
    """[B, M] bool: entry j is forbidden for query i (same user and prefix not shorter). Works on np and jnp."""
    return (e_user[None, :] == q_user[:, None]) & (e_prefix[None, :] >= q_prefix[:, None])


# --- exact, in-graph ------------------------------------------------------------------------------------

GROUP = 128  # columns per group in the two-stage top-k
# Candidates beyond top_k that each backend hands to `rerank`: the backends' own scores may order near-equal
# entries differently, so each passes on a margin and the shared rerank decides.
RERANK_MARGIN = 16


def _top_k(scores, k):
    """lax.top_k over the last axis, in two stages when the row is long.

    A full top_k over tens of thousands of columns is a sort-like pass and dominated the CPU step. Instead take
    the max of each group of GROUP columns, the k best groups, then top_k over those k·GROUP candidates.

    Exact, ties included (the order is score descending, then column ascending, as `lax.top_k` orders a row):
    if an element e of the true top k lay in a group G that was not chosen, each of the k chosen groups would
    hold an element that precedes e (its max is > e's score, or equal with the group, and so every column of
    it, before G's), so e would not be in the top k. The chosen groups are put back in column order before
    the second top_k, so among equal candidates it keeps the smaller column, as the one-stage top_k does.
    """
    b, c = scores.shape
    n_groups = -(-c // GROUP)
    if n_groups <= 2 * k:
        return jax.lax.top_k(scores, min(k, c))
    if n_groups * GROUP > c:
        scores = jnp.pad(scores, ((0, 0), (0, n_groups * GROUP - c)), constant_values=-jnp.inf)
    grouped = scores.reshape(b, n_groups, GROUP)
    _, groups = jax.lax.top_k(grouped.max(axis=-1), k)  # [b, k]
    groups = jnp.sort(groups, axis=1)  # candidates in column order: equal scores go to the smaller column
    cand = jnp.take_along_axis(grouped, groups[:, :, None], axis=1).reshape(b, k * GROUP)
    top, pos = jax.lax.top_k(cand, k)
    idx = jnp.take_along_axis(groups, pos // GROUP, axis=1) * GROUP + pos % GROUP
    return top, idx  # a padded column can only be picked with score -inf, which becomes id -1


def _block_top_k(query, keys, e_user, e_prefix, q_user, q_prefix, offset, k, limit=None):
    scores = query @ keys.T
    forbidden = excluded(q_user, q_prefix, e_user, e_prefix)
    if limit is not None:  # a shard's padding rows (local index >= limit)
        forbidden = forbidden | (offset + jnp.arange(keys.shape[0]) >= limit)[None, :]
    scores = jnp.where(forbidden, -jnp.inf, scores)
    top, idx = _top_k(scores, k)
    return top, (idx + offset).astype(jnp.int32)


def _merge(top_a, ids_a, top_b, ids_b, k):
    # `a` (earlier, smaller ids) first: lax.top_k keeps the earlier of equal values, so ties go to smaller ids
    scores = jnp.concatenate([top_a, top_b], axis=1)
    ids = jnp.concatenate([ids_a, ids_b], axis=1)
    top, pos = jax.lax.top_k(scores, k)
    return top, jnp.take_along_axis(ids, pos, axis=1)


def exact_search(query, q_user, q_prefix, keys, e_user, e_prefix, *, top_k: int, chunk_size: int = 65536, limit=None):
    """(ids int32 [B, top_k], scores float32 [B, top_k]); ids -1 and score -inf where nothing is allowed.
    limit: entries at index >= limit are never returned (a traced scalar: the padding of a shard).
    The matmul picks top_k + RERANK_MARGIN candidates, `rerank` orders them (module docstring)."""
    if isinstance(keys, ShardedKeys):
        return sharded_exact_search(query, q_user, q_prefix, keys, top_k=top_k, chunk_size=chunk_size)
    width = min(top_k + RERANK_MARGIN, keys.shape[0])
    cand, _ = _matmul_search(
        query, q_user, q_prefix, keys, e_user, e_prefix, top_k=width, chunk_size=chunk_size, limit=limit
    )
    return rerank(query, cand, keys, top_k)


def rerank(query, cand, keys, top_k: int):
    """The top_k of candidate ids [B, C] (-1 = none) by scores recomputed one pair at a time, then the smaller id.

    Both backends end here, so they order their candidates by the same float32 numbers: a matmul (XLA's or
    FAISS's BLAS) rounds q·k differently with the shape and position of the block it computes, and on real
    data two different keys often score within one rounding step of each other, so the two backends' own
    scores put such pairs in different orders. The elementwise product summed over the hidden axis gives one
    value per (query, key) pair whatever else is in the batch. Returns (ids [B, top_k], scores [B, top_k])."""
    query = jax.lax.stop_gradient(query)
    valid = cand >= 0
    order = jnp.argsort(jnp.where(valid, cand, jnp.iinfo(jnp.int32).max), axis=1)  # id order: ties -> smaller
    cand = jnp.take_along_axis(cand, order, axis=1)
    valid = cand >= 0
    kc = jax.lax.stop_gradient(keys)[jnp.where(valid, cand, 0)]  # [B, C, H]
    scores = jnp.where(valid, jnp.sum(query[:, None, :] * kc, axis=-1), -jnp.inf)
    k = min(top_k, cand.shape[1])
    top, pos = jax.lax.top_k(scores, k)
    ids = jnp.where(jnp.isfinite(top), jnp.take_along_axis(cand, pos, axis=1), -1)
    if k < top_k:  # fewer candidates than slots (a base smaller than top_k)
        ids = jnp.pad(ids, ((0, 0), (0, top_k - k)), constant_values=-1)
        top = jnp.pad(top, ((0, 0), (0, top_k - k)), constant_values=-jnp.inf)
    return ids.astype(jnp.int32), top


def _matmul_search(query, q_user, q_prefix, keys, e_user, e_prefix, *, top_k: int, chunk_size: int, limit=None):
    """The chunked scan: top_k by the matmul's scores, ties to the smaller id."""
    query = jax.lax.stop_gradient(query)
    keys = jax.lax.stop_gradient(keys)
    n, b = keys.shape[0], query.shape[0]
    c = max(1, min(int(chunk_size), n))
    n_full = n // c
    top = jnp.full((b, top_k), -jnp.inf, query.dtype)
    ids = jnp.full((b, top_k), -1, jnp.int32)

    if n_full:

        def body(carry, i):
            start = i * c
            blk = _block_top_k(
                query,
                jax.lax.dynamic_slice_in_dim(keys, start, c),
                jax.lax.dynamic_slice_in_dim(e_user, start, c),
                jax.lax.dynamic_slice_in_dim(e_prefix, start, c),
                q_user,
                q_prefix,
                start,
                top_k,
                limit,
            )
            return _merge(*carry, *blk, top_k), None

        # the first chunk outside the scan: the carry then derives from the keys, so inside shard_map it has
        # the same per-device type as the body's output (a constant initial carry would not)
        (top, ids), _ = body((top, ids), 0)
        if n_full > 1:
            (top, ids), _ = jax.lax.scan(body, (top, ids), jnp.arange(1, n_full, dtype=jnp.int32))
    if n_full * c < n:
        s = n_full * c
        blk = _block_top_k(query, keys[s:], e_user[s:], e_prefix[s:], q_user, q_prefix, s, top_k, limit)
        top, ids = _merge(top, ids, *blk, top_k)
    ids = jnp.where(jnp.isfinite(top), ids, -1)
    return ids, top


def sharded_exact_search(query, q_user, q_prefix, sk: ShardedKeys, *, top_k: int, chunk_size: int = 65536):
    """`exact_search` over keys split along the mesh: same ids and scores (ties to the smaller id as well).

    Every device scores all queries against its own shard (queries are gathered: they are B·H floats, the
    shard is N/D·H), keeps its top_k with global ids, and one top_k over the D·top_k candidates, laid out in
    shard order, merges them; equal scores keep the earlier column, i.e. the smaller id, as on one device."""
    per = sk.keys.shape[0] // sk.mesh.size

    def local(q, qu, qp, keys, e_user, e_prefix):
        offset = jax.lax.axis_index(DATA_AXIS) * per
        ids, top = exact_search(
            q, qu, qp, keys, e_user, e_prefix, top_k=top_k, chunk_size=chunk_size, limit=sk.n - offset
        )
        return jnp.where(ids >= 0, ids + offset, -1), top

    # out_specs split the candidate columns by device, so no output claims replication (no check to disable)
    rows = P(None, DATA_AXIS)
    ids, top = jax.shard_map(
        local, mesh=sk.mesh, in_specs=(P(), P(), P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)), out_specs=(rows, rows)
    )(jax.lax.stop_gradient(query), q_user, q_prefix, jax.lax.stop_gradient(sk.keys), sk.user, sk.prefix_len)
    top, pos = jax.lax.top_k(top, top_k)
    ids = jnp.take_along_axis(ids, pos, axis=1)
    return jnp.where(jnp.isfinite(top), ids, -1), top


# --- FAISS on the host ----------------------------------------------------------------------------------


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a runtime dependency
        raise ConfigError("retrieval_backend='faiss' needs the faiss-cpu package (pip install faiss-cpu)") from e
    return faiss


def make_faiss_index(factory: str, dim: int):
    """An inner-product index from a factory string; ConfigError if FAISS rejects the string."""
    faiss = _faiss()
    if not isinstance(factory, str) or not factory.strip():
        raise ConfigError(f"config key 'faiss_index': expected a FAISS index factory string, got {factory!r}")
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as e:  # FAISS raises RuntimeError with a multi-line C++ message
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config key 'faiss_index': FAISS rejects factory string {factory!r} ({first})") from None


def check_faiss_factory(factory: str, dim: int) -> None:
    make_faiss_index(factory, dim)


GPU_MAX_K = 2048  # FAISS GPU indexes return at most this many candidates per query
# Largest re-search fetch per query. A Flat index needs more than top_k + overfetch only for a query whose best
# entries are its own user's later samples or tie at the boundary; 16384 candidates cost 16384 x 12 bytes per
# such query and far exceed what Amazon data needs (its longest user history is a few hundred samples).
MAX_FETCH = 16384


def faiss_gpus() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu (no GPU support compiled in)."""
    get = getattr(_faiss(), "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _set_nprobe(index, nprobe: int, gpu: bool) -> None:
    faiss = _faiss()
    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    try:
        space.set_index_parameter(index, "nprobe", int(nprobe))
    except Exception:  # not an IVF index: nprobe does not apply
        pass


def build_faiss_index(factory: str, keys: np.ndarray, *, shards: int = 1, nprobe: int = 16, gpus: int = 0):
    """(index, keep_alive) holding `keys` with ids 0..N-1. shards > 1: an `IndexShards` over contiguous id
    blocks, searched in parallel threads and merged by FAISS. gpus > 0: each part copied to GPU (part i on GPU
    i % gpus). Training runs once and every part gets a copy of the trained index (same IVF cells).
    keep_alive: the parts and GPU resources, which the Python wrapper does not keep referenced by itself."""
    faiss = _faiss()
    n, dim = keys.shape
    if not 1 <= shards <= max(n, 1):
        raise ConfigError(f"config key 'faiss_shards': expected 1..{n} (the knowledge-base size), got {shards}")
    template = make_faiss_index(factory, dim)
    if not template.is_trained:
        try:
            template.train(keys)
        except Exception as e:
            raise ConfigError(
                f"config key 'faiss_index': cannot train {factory!r} on {n} keys "
                f"({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__})"
            ) from None
    bounds = np.linspace(0, n, shards + 1).astype(int)
    resources = [faiss.StandardGpuResources() for _ in range(min(gpus, shards))]
    parts = []
    for i in range(shards):
        part = template if shards == 1 else faiss.clone_index(template)
        part.add(keys[bounds[i] : bounds[i + 1]])
        if resources:
            part = faiss.index_cpu_to_gpu(resources[i % len(resources)], i % gpus, part)
        _set_nprobe(part, nprobe, gpus > 0)
        parts.append(part)
    if shards == 1:
        return parts[0], (parts, resources)
    index = faiss.IndexShards(dim, True, True)  # threaded, successive ids: part i's ids start at bounds[i]
    for part in parts:
        index.add_shard(part)
    return index, (parts, resources)


class FaissSearcher:
    """A FAISS index plus the entries' user/prefix arrays for the exclusion rule, searched on the host.

    The jitted step calls `search_host` through `jax.pure_callback` and reads the index at run time, so
    `build` (a refresh between epochs) swaps the index without recompiling the step. `shards` > 1 builds an
    `IndexShards`; `use_gpu` None = GPU indexes whenever FAISS reports GPUs (faiss-gpu installed), with a
    fall-back to CPU for factory strings FAISS cannot put on a GPU (`device` says which was used).
    """

    def __init__(
        self,
        factory: str,
        dim: int,
        *,
        top_k: int,
        nprobe: int = 16,
        overfetch: int = 32,
        shards: int = 1,
        use_gpu: bool | None = None,
        max_fetch: int = MAX_FETCH,
        rerank: int = 0,
    ):
        make_faiss_index(factory, dim)  # fail early on a bad string
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ConfigError(f"config key 'faiss_shards': expected an integer >= 1, got {shards!r}")
        self.factory, self.dim, self.top_k = factory, int(dim), int(top_k)
        self.nprobe, self.overfetch, self.shards = int(nprobe), int(overfetch), shards
        self.max_fetch = int(max_fetch)
        if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
            raise ConfigError(f"config key 'faiss_rerank': expected an integer >= 0, got {rerank!r}")
        # candidates the jitted search re-scores exactly (faiss_search): a compressed index (PQ, SQ) orders its
        # candidates by approximate scores, so more of them are needed for the exact top_k to be among them
        self.rerank = max(self.top_k + RERANK_MARGIN, rerank)
        self.short = self.capped = 0  # queries left with fewer than top_k ids / stopped at max_fetch
        self._warned = False
        self.gpus = faiss_gpus() if use_gpu is None or use_gpu else 0
        if use_gpu and not self.gpus:
            raise ConfigError("FAISS reports no GPU: install faiss-gpu, or let use_gpu default to auto")
        self.device = "cpu"
        self.index = self._keep = None
        self.user = self.prefix_len = None

    def build(self, keys, user, prefix_len) -> float:
        """(Re)build the index from unit-norm keys [N, H]; returns seconds taken."""
        t0 = time.perf_counter()
        self.index = self._keep = None  # the old index goes first: a refresh never holds two copies of the keys
        keys = np.ascontiguousarray(np.asarray(keys, dtype=np.float32))
        options = {"shards": self.shards, "nprobe": self.nprobe}
        if self.gpus:
            try:
                self.index, self._keep = build_faiss_index(self.factory, keys, gpus=self.gpus, **options)
                self.device = f"gpu x{min(self.gpus, self.shards)}"
            except ConfigError:
                raise
            except Exception as e:  # e.g. an index type without a GPU implementation
                self.index, self._keep = build_faiss_index(self.factory, keys, **options)
                self.device = f"cpu (GPU copy failed: {str(e).strip().splitlines()[-1][:120]})"
        else:
            self.index, self._keep = build_faiss_index(self.factory, keys, **options)
            self.device = "cpu"
        self.user = np.asarray(user, dtype=np.int32)
        self.prefix_len = np.asarray(prefix_len, dtype=np.int32)
        self._warned = False
        return time.perf_counter() - t0

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def search_host(self, query, q_user, q_prefix, k: int | None = None) -> np.ndarray:
        """numpy in, int32 [B, k] out (k None = top_k; -1 where fewer allowed entries were found).

        Each row's allowed candidates are ordered by score, then by the smaller id (FAISS promises no order
        among equal scores). A row is final when its top_k-th allowed score is above the last score fetched
        (nothing unfetched can tie or beat it), or when the index returned fewer candidates than asked (an IVF
        row whose probed lists ran out: a larger fetch finds nothing more). Other rows are searched again with
        4x the fetch, up to `max_fetch` (and the GPU cap): for a Flat index the result then equals `exact`,
        ties included. Rows still short at the cap are counted in `capped` and warned about once per build;
        every row left with fewer than k ids is counted in `short`. Both counts are for callers of this
        method (`take_counts`); the training log's `short_fraction` is computed in the step from the ids."""
        if self.index is None:
            raise RuntimeError("FaissSearcher.search_host called before build()")
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32))
        qu, qp = np.asarray(q_user), np.asarray(q_prefix)
        k = self.top_k if k is None else int(k)
        out = np.full((q.shape[0], k), -1, dtype=np.int32)
        rows = np.arange(q.shape[0])
        # a GPU index returns at most GPU_MAX_K candidates per query
        most = min(self.ntotal, GPU_MAX_K) if self.device.startswith("gpu") else self.ntotal
        cap = min(most, max(self.max_fetch, k + self.overfetch))
        fetch = min(k + self.overfetch, cap)
        while rows.size:
            dist, cand = self.index.search(q[rows], fetch)
            found = cand >= 0
            safe = np.where(found, cand, 0)
            ok = found & ~((self.user[safe] == qu[rows, None]) & (self.prefix_len[safe] >= qp[rows, None]))
            # allowed candidates first, by score descending, then id ascending
            order = np.lexsort((np.where(ok, cand, np.iinfo(np.int64).max), np.where(ok, -dist, np.inf)), axis=1)
            cand_s = np.take_along_axis(cand, order, axis=1)
            dist_s = np.take_along_axis(dist, order, axis=1)
            n_ok = ok.sum(axis=1)
            exhausted = ~found.all(axis=1)
            # settled: the k-th allowed score beats the last fetched one (k > fetch only when fetch is the cap)
            settled = (n_ok >= k) & (dist_s[:, k - 1] > dist[:, -1]) if k <= fetch else np.zeros(rows.size, bool)
            done = settled | exhausted | (fetch >= cap)
            take = min(k, fetch)
            sel = np.where(np.arange(take)[None, :] < n_ok[done, None], cand_s[done, :take], -1)
            out[rows[done], :take] = sel
            if fetch >= cap and cap < most:
                capped = ~(settled | exhausted)
                if capped.any():
                    self.capped += int(capped.sum())
                    if not self._warned:
                        self._warned = True
                        warnings.warn(
                            f"FAISS index {self.factory!r} (nprobe {self.nprobe}): {int(capped.sum())} queries "
                            f"still lacked {k} allowed candidates, or had ties at the boundary, after fetching "
                            f"{cap} of {most} entries; they keep what was found (-1 for the rest). Most of "
                            f"their best entries are excluded by the same-user rule; raise max_fetch, or use "
                            f"retrieval_backend=exact.",
                            RuntimeWarning,
                            stacklevel=2,
                        )
            rows = rows[~done]
            fetch = min(fetch * 4, cap)
        self.short += int((out < 0).any(axis=1).sum())
        return out

    def take_counts(self) -> dict:
        """{'short', 'capped'} queries since the last call (or since construction), then reset."""
        counts = {"short": self.short, "capped": self.capped}
        self.short = self.capped = 0
        return counts


def faiss_search(searcher: FaissSearcher, query, q_user, q_prefix, keys=None):
    """FAISS search from inside jit / grad through a host callback with a static shape: int32 [B, top_k].
    keys: the base's keys on the device (Memory.keys); the callback then returns searcher.rerank candidates
    (top_k + RERANK_MARGIN, or faiss_rerank when larger) and `rerank` orders them by exact scores as the exact
    backend does. None: FAISS's own top_k (benchmarks)."""
    query = jax.lax.stop_gradient(query)
    k = searcher.top_k
    width = k if keys is None else searcher.rerank
    shape = jax.ShapeDtypeStruct((query.shape[0], width), jnp.int32)
    cand = jax.pure_callback(
        functools.partial(searcher.search_host, k=width), shape, query, q_user, q_prefix, vmap_method="sequential"
    )
    if keys is None:
        return cand
    if isinstance(keys, ShardedKeys):  # ids index the unpadded base, which the sharded array starts with
        keys = keys.keys
    return rerank(query, cand, keys, k)[0]


def retrieve(
    query,
    q_user,
    q_prefix,
    memory: Memory,
    *,
    backend: str,
    top_k: int,
    chunk_size: int = 65536,
    searcher: FaissSearcher | None = None,
):
    """The retrieval used by training and evaluation: ids int32 [B, top_k], -1 = no neighbour."""
    if backend == "exact":
        return exact_search(
            query, q_user, q_prefix, memory.keys, memory.user, memory.prefix_len, top_k=top_k, chunk_size=chunk_size
        )[0]
    if backend == "faiss":
        if searcher is None:
            raise ConfigError("retrieval_backend='faiss' needs a built FaissSearcher (see KnowledgeBase)")
        if searcher.top_k != top_k:
            raise ConfigError(f"config key 'top_k': searcher was built for {searcher.top_k}, model asks {top_k}")
        return faiss_search(searcher, query, q_user, q_prefix, memory.keys)
    raise ConfigError(f"config key 'retrieval_backend': expected one of {list(BACKENDS)}, got {backend!r}")
