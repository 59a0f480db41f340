"""Length-bucketed encoding: the same outputs as `encoder(item_seq, item_seq_len)`, far fewer tokens.

Why it is exact: with right padding and a causal mask, the state at position len-1 depends only on
positions 0..len-1, so dropping trailing columns past a row's length changes nothing (LayerNorm and the
feed-forward act per position; attention of query i reads keys j <= i).

Why it is fast: real prefixes are short (Amazon Beauty: median 4 items, 90th percentile 22, cap 50), but a
batch of 256 almost always holds one row of length 50, so a plain batch pays for 50 positions on every row.
Here rows are sorted by length on the device, cut into fixed-size chunks, and each chunk runs at the
smallest length budget that holds its longest row (`lax.switch`: only the chosen branch executes, forward
and backward). Shapes stay static, nothing leaves the device, and gradients are those of the plain call.

Why every branch is rematerialised (`jax.checkpoint`): differentiating a `lax.switch` makes each branch
return the union of all branches' residuals, zero-filled for the branches not taken, so every chunk wrote
and carried the attention and feed-forward activations of the 50-position branch too. Saving only the
branch inputs and recomputing the chosen branch's forward in the backward pass cut the DuoRec step's
gradient from 356 to 187 ms on the 2-core CPU (Beauty, B 256; experiments/results/2026-11-28_bench_cpu_remat.md).
The item table itself enters no branch: the batch's item rows are gathered once before the scan and each
chunk receives its rows. A parameter read inside the branches gets a cotangent per branch and per scan carry,
each as large as the parameter: with the table inside, the DuoRec step held about 15 table-sized gradient
buffers (4 GB at 10^6 items); gathered outside, the table's gradient is one scatter-add.
Chunks of 64 rows and budgets down to 2 positions then fit Amazon's short prefixes more tightly
(encoder gradient 174 -> 143 ms). The chunks go through one `lax.scan`, so the branches compile once
(unrolled, the 12 chunks x 6 budgets of a DuoRec step took 78 s to compile instead of 15 s).

On a mesh (`mesh=`, batch sharded along its data axis) each device sorts and buckets its own rows
(`jax.shard_map`): left to the SPMD partitioner, the global sort gathers the whole batch and every device
would encode all of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from ftragrec_jax.parallel import DATA_AXIS

BUCKETS = (2, 4, 8, 16, 32)  # length budgets below max_len; max_len itself is always the last
CHUNK = 64  # rows per bucketed chunk


def length_budgets(max_len: int, buckets=BUCKETS) -> tuple[int, ...]:
    return tuple(sorted({b for b in buckets if 0 < b < max_len} | {max_len}))


def encode_bucketed(
    encoder, item_seq, item_seq_len, dropout_key=None, *, chunk: int = CHUNK, buckets=BUCKETS, mesh=None
):
    """[B, L] sequences -> [B, H] outputs, equal to `encoder(item_seq, item_seq_len, dropout_key)`.

    With dropout the masks are drawn per chunk (fold_in of the chunk index): as random as the plain
    call, not bit-identical to it. mesh: rows sharded along its data axis are bucketed per device.
    """
    if mesh is not None and mesh.size > 1:
        return _per_device(encoder, item_seq, item_seq_len, dropout_key, chunk, buckets, mesh)
    n, max_len = item_seq.shape
    budgets = length_budgets(max_len, buckets)
    if len(budgets) == 1 or n <= chunk // 2:
        return encoder(item_seq, item_seq_len, dropout_key)
    lengths = jnp.clip(item_seq_len.astype(jnp.int32), 1, max_len)
    order = jnp.argsort(lengths, stable=True)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    seq_sorted = jnp.pad(item_seq[order], ((0, pad), (0, 0)))
    len_sorted = jnp.pad(lengths[order], (0, pad), constant_values=1)
    # the item rows are gathered here, once for the whole batch (module docstring: one table-sized gradient)
    emb_sorted = jnp.pad(encoder.item_rows(item_seq[order]), ((0, pad), (0, 0), (0, 0)))
    budget_arr = jnp.asarray(budgets, jnp.int32)

    # the other parameters enter every branch as an operand; the item table enters none
    graphdef, table, state = nnx.split(encoder, nnx.PathContains("item_embedding"), ...)
    table = jax.lax.stop_gradient(table)  # not read inside: the branches get the rows gathered above

    def run(budget):
        def branch(state, seq, emb, lens, key):
            return nnx.merge(graphdef, table, state)(seq[:, :budget], lens, key, item_emb=emb[:, :budget])

        return jax.checkpoint(branch)  # residuals = inputs only (module docstring)

    branches = [run(b) for b in budgets]  # a None key passes through lax.switch as an empty pytree

    # one chunk per scan iteration: the branches are compiled once, not once per chunk
    def body(state, xs):
        c, seq_c, emb_c, len_c = xs
        which = jnp.sum(budget_arr < jnp.max(len_c))  # smallest budget >= the chunk's longest row
        key_c = None if dropout_key is None else jax.random.fold_in(dropout_key, c)
        return state, jax.lax.switch(which, branches, state, seq_c, emb_c, len_c, key_c)

    xs = (
        jnp.arange(n_chunks, dtype=jnp.int32),
        seq_sorted.reshape(n_chunks, chunk, max_len),
        emb_sorted.reshape(n_chunks, chunk, max_len, -1),
        len_sorted.reshape(n_chunks, chunk),
    )
    _, outs = jax.lax.scan(body, state, xs)
    sorted_out = outs.reshape(n_chunks * chunk, -1)[:n]
    return jnp.zeros_like(sorted_out).at[order].set(sorted_out)


def _per_device(encoder, item_seq, item_seq_len, dropout_key, chunk, buckets, mesh):
    """encode_bucketed on each device's rows; the encoder's parameters enter replicated."""
    (out,) = encode_passes_per_device(
        encoder, (item_seq,), (item_seq_len,), dropout_key, mesh, chunk=chunk, buckets=buckets
    )
    return out


def encode_passes(encoder, seqs, lens, dropout_key=None, *, mesh=None, chunk: int = CHUNK, buckets=BUCKETS):
    """Several [B, L] passes -> one [B, H] output per pass, all rows bucketed together (DuoRec's three fused
    passes). mesh with more than one device: each device joins and buckets its own rows."""
    if mesh is not None and mesh.size > 1:
        return encode_passes_per_device(encoder, seqs, lens, dropout_key, mesh, chunk=chunk, buckets=buckets)
    return _joined(encoder, seqs, lens, dropout_key, chunk, buckets)


def _joined(encoder, seqs, lens, dropout_key, chunk, buckets):
    rows, n = seqs[0].shape[0], len(seqs)
    joined = (
        (seqs[0], lens[0])
        if n == 1
        else (jnp.concatenate(seqs).astype(jnp.int32), jnp.concatenate(lens).astype(jnp.int32))
    )
    outs = encode_bucketed(encoder, *joined, dropout_key, chunk=chunk, buckets=buckets)
    return tuple(outs[i * rows : (i + 1) * rows] for i in range(n))


def encode_passes_per_device(encoder, seqs, lens, dropout_key, mesh, *, chunk: int = CHUNK, buckets=BUCKETS):
    """`encode_passes` with the passes sharded along the mesh's data axis -> one sharded [B, H] output per pass.
    Each device joins its own rows of every pass and buckets them together; a global concatenate-and-sort
    would make the SPMD partitioner gather everything onto every device."""

    graphdef, state = nnx.split(encoder)
    n = len(seqs)

    def local(state, seqs, lens, key):
        # Explicitly device-varying, so the transpose of this cast psums the parameter gradients once. Left
        # implicit (replicated values entering lax.switch branches whose index differs per device), some
        # parameter gradients came back wrong on 4 devices once the branches were rematerialised
        # (tests/test_scale_out.py::test_duorec_step_on_four_devices_encodes_per_device caught it).
        state = jax.tree.map(lambda x: jax.lax.pcast(x, DATA_AXIS, to="varying"), state)
        if key is not None:  # devices draw different masks, as the rows of one device do
            key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
        return _joined(nnx.merge(graphdef, state), seqs, lens, key, chunk, buckets)

    sharded = (P(DATA_AXIS),) * n
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), sharded, sharded, P()), out_specs=sharded)(
        state, tuple(seqs), tuple(lens), dropout_key
    )
