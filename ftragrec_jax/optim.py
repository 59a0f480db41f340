"""The FTragrec freeze mask, in one place: which parameters train, and the optimizer that enforces it.

Labels come from parameter paths. A path is trainable only if its first component is listed in
`TRAINABLE`; everything else, including any parameter added later that nobody thought about, is frozen
("no schedule means frozen"). Frozen leaves go to `optax.set_to_zero()`, which keeps no optimizer state, so
Adam holds moment buffers for the retriever only. `keep_frozen` additionally returns the frozen input
buffers themselves after the update, so frozen leaves stay bit-identical (x + 0.0 would turn -0.0 into +0.0).
"""

from __future__ import annotations

import jax
import optax

from ftragrec_jax.trees import key_names

TRAINABLE = ("retriever", "reranker", "fusion")  # top-level modules of FTragrec whose parameters are fine-tuned
TRAIN, FROZEN = "train", "frozen"


def trainable_modules(*, freeze_retriever: bool = False) -> tuple[str, ...]:
    """TRAINABLE, less the retriever when the config freezes g at its initialisation (an ablation)."""
    return tuple(m for m in TRAINABLE if not (freeze_retriever and m == "retriever"))


def is_trainable(path, trainable: tuple[str, ...] = TRAINABLE) -> bool:
    names = key_names(path)
    return bool(names) and names[0] in trainable


def param_labels(params, trainable: tuple[str, ...] = TRAINABLE):
    """A tree shaped like `params` with "train" or "frozen" at every leaf."""
    return jax.tree_util.tree_map_with_path(lambda p, _: TRAIN if is_trainable(p, trainable) else FROZEN, params)


def label_counts(params, trainable: tuple[str, ...] = TRAINABLE) -> dict[str, int]:
    """Number of array leaves per label; every leaf gets exactly one label by construction."""
    counts = {TRAIN: 0, FROZEN: 0}
    for label in jax.tree_util.tree_leaves(param_labels(params, trainable)):
        counts[label] += 1
    return counts


def adam(learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """torch.optim.Adam as RecBole uses it: weight_decay is L2 added to the gradient, not AdamW. DuoRec
    pretraining uses it on every parameter; FTragrec on the retriever only (`make_optimizer`)."""
    tx = optax.adam(learning_rate)
    if weight_decay > 0:
        tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
    return tx


def make_optimizer(
    learning_rate: float, weight_decay: float = 0.0, trainable: tuple[str, ...] = TRAINABLE
) -> optax.GradientTransformation:
    """FTragrec: `adam` on the `trainable` modules (the retriever, and alpha or the temperature when learnable),
    zero updates elsewhere."""
    return optax.multi_transform(
        {TRAIN: adam(learning_rate, weight_decay), FROZEN: optax.set_to_zero()},
        lambda params: param_labels(params, trainable),
    )


def keep_frozen(new_params, old_params, trainable: tuple[str, ...] = TRAINABLE):
    """new_params with every frozen leaf replaced by the corresponding old leaf (bit-identical, aliasable)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, new, old: new if is_trainable(p, trainable) else old, new_params, old_params
    )
