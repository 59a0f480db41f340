"""Run a few CE steps of a tiny encoder on 1 device and on a 4-device mesh; print max differences.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (tests/test_parallel.py does).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ftragrec_jax import parallel
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder

jax.config.update("jax_default_matmul_precision", "highest")


def run(mesh):
    enc = build_encoder(
        EncoderConfig(
            n_items=40, max_seq_length=6, hidden_size=16, inner_size=32, hidden_dropout_prob=0.0, attn_dropout_prob=0.0
        ),
        seed=1,
    )
    graphdef, params = nnx.split(enc, nnx.Param)
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    params, opt_state = parallel.replicate((params, opt_state), mesh)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            model = nnx.merge(graphdef, p)
            logits = model.scores(model(batch["item_seq"], batch["item_seq_len"]))
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target"])
            return jnp.sum(ce * batch["mask"]) / jnp.sum(batch["mask"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    losses = []
    for _ in range(3):
        lens = rng.integers(1, 7, size=8).astype(np.int32)
        seq = rng.integers(1, 40, size=(8, 6)).astype(np.int32) * (np.arange(6)[None] < lens[:, None])
        batch = {
            "item_seq": seq,
            "item_seq_len": lens,
            "target": rng.integers(1, 40, size=8).astype(np.int32),
            "mask": np.array([1] * 7 + [0], np.float32),
        }
        params, opt_state, loss = step(params, opt_state, parallel.put_batch(batch, mesh))
        losses.append(float(loss))
    pure = nnx.to_pure_dict(params) if hasattr(nnx, "to_pure_dict") else params.to_pure_dict()
    return losses, jax.tree.map(np.asarray, pure)


one, p1 = run(parallel.make_mesh(1))
four, p4 = run(parallel.make_mesh(4))
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)))
print(json.dumps({"devices": jax.device_count(), "loss_1": one, "loss_4": four, "param_max_abs_diff": diff}))
