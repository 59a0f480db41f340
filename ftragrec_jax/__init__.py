"""FTragrec in JAX/Flax: a frozen DuoRec encoder plus a trainable retriever."""

__version__ = "0.1.0"
