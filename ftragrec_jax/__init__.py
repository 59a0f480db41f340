"""FTragrec in JAX/Flax: a frozen DuoRec encoder plus a trainable retriever."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """A saved model directory ready to recommend: `ftragrec_jax.load(DIR).recommend(["a", "b"], k=10)`.

    Imported on first use so that `import ftragrec_jax` stays light (no JAX, Flax or Orbax).
    """
    from ftragrec_jax.recommend import load as _load

    return _load(path, **kwargs)
