"""The training steps of both models, beside the loop that runs them (train/loop.py).

A step is pure: (params, opt_state, batch, ...) -> (params, opt_state, metrics), the loss from models/, its
gradient and one optimizer update; no host sync except FTragrec's designed FAISS callback. The loop jits the
task's step once with params and opt_state donated. The FTragrec step comes jitted as well, for callers that
run it without the loop (tests, benchmarks); inside the loop's jit it is inlined.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ftragrec_jax.models.duorec import duorec_loss
from ftragrec_jax.models.ftragrec import FTragrecHParams, ftragrec_loss
from ftragrec_jax.models.search import FaissSearcher
from ftragrec_jax.optim import TRAINABLE, keep_frozen


def make_duorec_step(
    merge, optimizer: optax.GradientTransformation, *, lmd_sem: float, tau: float, mesh=None, item_chunk_size: int = 0
):
    """step(params, opt_state, batch, key, same_target=None) -> (params, opt_state, metrics) for DuoRec's us_x
    objective (SASRec with lmd_sem 0). merge: params -> encoder module; mesh with more than one device: each
    device encodes its own rows."""

    def step(params, opt_state, batch, key, same_target=None):
        def loss_fn(p):
            return duorec_loss(
                merge(p),
                batch,
                key,
                lmd_sem=lmd_sem,
                tau=tau,
                same_target=same_target,
                mesh=mesh,
                item_chunk_size=item_chunk_size,
            )

        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**terms, "grad_norm": optax.tree.norm(grads)}

    return step


def make_ftragrec_step(
    graphdef,
    hp: FTragrecHParams,
    optimizer: optax.GradientTransformation,
    *,
    rest=None,
    searcher: FaissSearcher | None = None,
    cached: bool = True,
    trainable: tuple[str, ...] = TRAINABLE,
    item_chunk_size: int = 0,
):
    """jitted pure step(params, opt_state, batch, memory) -> (params, opt_state, aux); params and opt_state are
    donated. cached=True reads seq_output from memory.h[batch["index"]] (the base built from the training
    split, whose entry i is training sample i); cached=False runs the frozen encoder on the batch. `trainable`:
    the modules the optimizer updates (optim.trainable_modules), kept in step with its freeze mask.
    item_chunk_size: the loss's whole-catalogue terms over item chunks (models/ftragrec.py; 0 = whole)."""

    def merge(params):
        return nnx.merge(graphdef, params) if rest is None else nnx.merge(graphdef, params, rest)

    def step(params, opt_state, batch, memory):
        def loss_fn(p):
            seq = memory.h[batch["index"]].astype(jnp.float32) if cached else None  # h may be stored as float16
            rec = memory.rec_ce[batch["index"]] if cached and memory.rec_ce is not None else None
            return ftragrec_loss(
                merge(p),
                batch,
                memory,
                hp=hp,
                seq_output=seq,
                searcher=searcher,
                rec_ce=rec,
                item_chunk_size=item_chunk_size,
            )

        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        new_params = keep_frozen(optax.apply_updates(params, updates), params, trainable)
        # frozen leaves get exact zeros (stop_gradient), so this is the retriever's gradient norm; a NaN here
        # stops training with the step named (train/loop.py)
        return new_params, opt_state, {**aux, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(step, donate_argnums=(0, 1))
