"""The retriever encoder g of FTragrec: `retriever_layers` RecBole FeedForward blocks, LN(x + W2·gelu(W1·x)).

With `retriever_layers` 0 there is no g: queries and keys are the frozen vectors h/|h| themselves (an ablation:
retrieval by the raw cosine).

Queries and knowledge-base keys are `g(h)/|g(h)|` of frozen encoder outputs h. g has no dropout: keys are
recomputed in the train step from stored h and must agree with the keys the index was built from.

Initialisation: W1 ~ N(0, initializer_range) like RecBole, but W2 = 0 and b2 = 0, so every block starts as
LN(x) and g starts as the (centred, scaled) frozen representation itself. Cosine of LN(x) is the Pearson
correlation of the DuoRec vectors, a neighbour metric that is already meaningful at step 0; a random W2 would
start from a noisy retriever that first has to unlearn its noise. W2 = 0 does not block learning: W2's gradient
is gelu(W1·x) ≠ 0, so W2 moves on the first step and W1 receives gradient from the second (the usual
zero-initialised residual branch).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ftragrec_jax.models.encoder import FeedForward

NORM_EPS = 1e-12  # guards the L2 normalisation of an all-zero vector


class Retriever(nnx.Module):
    """g: [..., hidden] -> [..., hidden]; param paths layers.{i}.{dense_1,dense_2,layer_norm}.*"""

    def __init__(
        self,
        hidden_size: int,
        inner_size: int = 256,
        n_layers: int = 1,
        initializer_range: float = 0.02,
        *,
        rngs: nnx.Rngs,
    ):
        self.layers = nnx.List(
            [FeedForward(hidden_size, inner_size, 0.0, initializer_range, rngs=rngs) for _ in range(n_layers)]
        )
        for layer in self.layers:
            layer.dense_2.kernel[...] = jnp.zeros_like(layer.dense_2.kernel[...])

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def l2_normalize(x, axis=-1):
    """x/|x| (torch.nn.functional.normalize's convention: divide by max(|x|, eps))."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, NORM_EPS)


def embed(retriever: Retriever, h):
    """Unit-norm retrieval vectors g(h)/|g(h)| (queries and keys alike)."""
    return l2_normalize(retriever(h))
