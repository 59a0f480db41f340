"""FTragrec: retrieval-augmented fine-tuning of a retriever g on top of a frozen DuoRec encoder.

For an input with frozen representation s = encoder(seq) (dropout off):
  q = g(s)/|g(s)|; ids = top_k entries of the knowledge base by q·key (exclusion rule in search.py);
  key_j = g(h_j)/|g(h_j)| recomputed HERE from the stored h_j with the current g, so g gets gradients from
  both sides and never sees stale keys within a step; cos_j = q·key_j; neighbours with cos_j <
  quality_threshold (or id -1) are invalid; P_ret = softmax(cos/temperature) over valid neighbours;
  knowledge = Σ_j P_ret_j · E[target_j]; enhanced = (1-a)·s + a·knowledge with a = alpha, or 0 for a
  sample with no valid neighbour (counted as `fallback_fraction`); scores = enhanced · Eᵀ over all items.
Loss: rec_loss = CE(s·Eᵀ) (constant for g, logged), enhanced_rec_loss = CE(enhanced·Eᵀ),
  kl_loss = mean over rows with a neighbour of Σ_j P_ret·(log(P_ret+1e-8) − log(P_rec+1e-8)) with
  P_rec = softmax(s·E[target_j]) over the same valid neighbours;
  total = rec_loss + enhanced_rec_weight·enhanced_rec_loss + kl_small_weight·kl_loss.
Ablation options (defaults = the design above):
  fusion="knn_lm": mix distributions instead of vectors, p = (1-a)·softmax(s·Eᵀ) + a·Σ_j P_ret_j·onehot(t_j)
    (kNN-LM), scores = log p; enhanced_rec_loss = -log p(target). knn_value_window m > 1: entry j votes for
    its value window (its target and its user's next m-1 training targets, decay-weighted; `neighbour_values`)
    instead of onehot(t_j): the frozen backbone never saw which items follow a neighbour's target.
  learnable_alpha: a = sigmoid(fusion.alpha_logit), a trainable scalar starting at `alpha`.
  learnable_temperature: temperature = exp(fusion.log_temperature), a trainable scalar starting at
    retriever_temperature; it learns from the design's terms (the fused loss and the KL), not from a retriever
    objective below: the contrastive term alone is minimised by an ever sharper R whenever a same-target entry
    leads the pool, which says nothing about how sharp the fused neighbour weights should be.
Retriever objectives (retriever_objective; "design" = none of them, the default): the design's terms only see
  the k neighbours already retrieved, so g never learns which other entries it should have retrieved. These
  search a wider pool of P = max(top_k, retriever_pool) entries with the same backend and exclusion rule (the
  first top_k of the pool are the fused neighbours, exactly the top_k search's), recompute the pool's keys with
  the current g, take the retrieval distribution R = softmax(cos/temperature) over the pool and add
  retriever_loss_weight · (mean over real rows it counts) of
  - "contrastive": -log Σ_{j: t_j = y} R_j, the pool's mass on entries whose target is the query's own target y
    (rows with no such entry in the pool count nowhere);
  - "usefulness": KL(Q || R) with Q = softmax(u/usefulness_temperature) over the pool,
    u_j = ∇_s log softmax(s·Eᵀ)[y] · E[t_j] = (E[y] − Σ_i softmax(s·Eᵀ)_i E[i]) · E[t_j]: how much moving the
    frozen representation towards entry j's target raises the log-likelihood of the true target, to first
    order (an LM-supervised retrieval target in the spirit of REPLUG, cheap enough for every step);
  - "knn_likelihood" (fusion knn_lm only): -log Σ_j R_j·v_j(y), the pool's kNN-LM vote for y, with v_j(y) the
    share of entry j's vote that goes to y (`neighbour_values`: its target, or with knn_value_window > 1 its
    value window, the query's own user's future dropped). It asks g for the entries the fused kNN-LM would
    profit from retrieving, including those whose user went on to y, which "contrastive" counts as negatives;
    with a window of 1 it equals "contrastive" (rows with no vote for y count nowhere).
Value-aware reranking (value_rerank, models/value_rerank.py): the retrieval score of entry j is
  cos_j + (W s)·E[t_j] instead of cos_j, wherever the design uses cos_j/temperature (P_ret and every pool
  term's R); the search returns P = max(top_k, retriever_pool) entries by cosine, at training and at
  evaluation, and the fused neighbours are the pool's top_k by the full score (ties to the smaller id).
  W = 0 at initialisation: the untrained model retrieves and scores as the design does. The quality threshold
  still reads cos_j.
CE and KL are means over real rows (batch["mask"] = 1); padded rows count nowhere.
Large catalogues (item_chunk_size > 0 and below n_items): every whole-catalogue term (the CEs, usefulness's
  softmax mean, the kNN-LM log-softmax at evaluation) runs over item chunks, so neither the step nor the
  scorer holds a [B, n_items] array (softmax_ce.py); 0 keeps the whole-catalogue expressions.
E (the item table) and s are frozen: both are cut from the autodiff graph, so backward only touches g.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ftragrec_jax.config import Config
from ftragrec_jax.errors import ConfigError
from ftragrec_jax.models.bucketing import encode_bucketed
from ftragrec_jax.models.knowledge_base import KB_DTYPES
from ftragrec_jax.models.retriever import Retriever, embed
from ftragrec_jax.models.search import BACKENDS, FaissSearcher, Memory, check_faiss_factory, retrieve
from ftragrec_jax.models.softmax_ce import cross_entropy_rows, linear_chunk_scores, logsumexp_rows, softmax_mean
from ftragrec_jax.models.value_rerank import ValueReranker, order_pool

KL_EPS = 1e-8
_DEFAULTS = Config()  # the one home of every default (config.py); the dataclasses below take theirs from it
FUSIONS = ("representation", "knn_lm")
OBJECTIVES = ("design", "contrastive", "usefulness", "knn_likelihood")


@dataclasses.dataclass(frozen=True)
class FTragrecHParams:
    """The FTragrec model hyperparameters: Config's fields of the same names, with Config's defaults (the
    design's); `from_config` derives them from a run config or a saved model's settings."""

    top_k: int = _DEFAULTS.top_k
    retriever_layers: int = _DEFAULTS.retriever_layers
    retriever_inner_size: int = _DEFAULTS.retriever_inner_size
    retriever_temperature: float = _DEFAULTS.retriever_temperature
    quality_threshold: float = _DEFAULTS.quality_threshold
    alpha: float = _DEFAULTS.alpha
    enhanced_rec_weight: float = _DEFAULTS.enhanced_rec_weight
    kl_small_weight: float = _DEFAULTS.kl_small_weight
    retrieval_backend: str = _DEFAULTS.retrieval_backend
    faiss_index: str = _DEFAULTS.faiss_index
    nprobe: int = _DEFAULTS.nprobe
    faiss_overfetch: int = (
        _DEFAULTS.faiss_overfetch
    )  # extra FAISS candidates fetched per query to survive the exclusion filter
    retrieval_chunk_size: int = _DEFAULTS.retrieval_chunk_size
    faiss_rerank: int = _DEFAULTS.faiss_rerank
    knowledge_base_dtype: str = _DEFAULTS.knowledge_base_dtype
    fusion: str = _DEFAULTS.fusion
    knn_value_window: int = _DEFAULTS.knn_value_window
    knn_value_decay: float = _DEFAULTS.knn_value_decay
    learnable_alpha: bool = _DEFAULTS.learnable_alpha
    learnable_temperature: bool = _DEFAULTS.learnable_temperature
    exclude_same_user: bool = (
        _DEFAULTS.exclude_same_user
    )  # never retrieve any sample of the query's own user (not only later ones)
    retriever_objective: str = _DEFAULTS.retriever_objective
    retriever_pool: int = _DEFAULTS.retriever_pool
    retriever_loss_weight: float = _DEFAULTS.retriever_loss_weight
    usefulness_temperature: float = _DEFAULTS.usefulness_temperature
    value_rerank: bool = _DEFAULTS.value_rerank

    def __post_init__(self):
        def need(key, ok, expected):
            if not ok:
                raise ConfigError(f"config key {key!r}: expected {expected}, got {getattr(self, key)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        need("retriever_layers", is_int(self.retriever_layers) and self.retriever_layers >= 0, "an integer >= 0")
        for key in (
            "top_k",
            "retriever_inner_size",
            "nprobe",
            "retrieval_chunk_size",
            "retriever_pool",
            "knn_value_window",
        ):
            need(key, is_int(getattr(self, key)) and getattr(self, key) >= 1, "an integer >= 1")
        for key in ("faiss_overfetch", "faiss_rerank"):
            need(key, is_int(getattr(self, key)) and getattr(self, key) >= 0, "an integer >= 0")
        need("retriever_temperature", self.retriever_temperature > 0, "a number > 0")
        need("alpha", 0.0 <= self.alpha <= 1.0, "a number in [0, 1]")
        need("quality_threshold", -1.0 <= self.quality_threshold <= 1.0, "a cosine in [-1, 1]")
        for key in ("enhanced_rec_weight", "kl_small_weight", "retriever_loss_weight"):
            need(key, getattr(self, key) >= 0, "a number >= 0")
        need("usefulness_temperature", self.usefulness_temperature > 0, "a number > 0")
        need("knn_value_decay", 0.0 < self.knn_value_decay <= 1.0, "a number in (0, 1]")
        need("knn_value_window", self.knn_value_window == 1 or self.fusion == "knn_lm", "1 unless fusion is knn_lm")
        need("retriever_objective", self.retriever_objective in OBJECTIVES, f"one of {list(OBJECTIVES)}")
        need(
            "retriever_objective",
            self.retriever_objective != "knn_likelihood" or self.fusion == "knn_lm",
            "knn_likelihood only with fusion knn_lm (it scores the pool's kNN-LM vote)",
        )
        need("knowledge_base_dtype", self.knowledge_base_dtype in KB_DTYPES, f"one of {list(KB_DTYPES)}")
        need("retrieval_backend", self.retrieval_backend in BACKENDS, f"one of {list(BACKENDS)}")
        need("fusion", self.fusion in FUSIONS, f"one of {list(FUSIONS)}")
        for key in ("learnable_alpha", "learnable_temperature", "exclude_same_user", "value_rerank"):
            need(key, isinstance(getattr(self, key), bool), "true or false")
        if self.fusion == "knn_lm" or self.learnable_alpha:  # log(1-a) / logit(a) must be finite
            need("alpha", 0.0 < self.alpha < 1.0, "a number in (0, 1) with fusion knn_lm or learnable_alpha")

    @property
    def search_k(self) -> int:
        """Entries searched per training query: top_k, or the wider pool of an objective or of value_rerank
        (without value_rerank its first top_k are the fused neighbours)."""
        wide = self.retriever_objective != "design" or self.value_rerank
        return max(self.top_k, self.retriever_pool) if wide else self.top_k

    @property
    def eval_search_k(self) -> int:
        """Entries searched per evaluation query: top_k, or with value_rerank the pool it reranks."""
        return self.search_k if self.value_rerank else self.top_k

    @classmethod
    def from_config(cls, source) -> "FTragrecHParams":
        """The one derivation of the hyperparameters: the fields of this class picked by name from a run Config
        (or any object with such attributes) or from a mapping (model.json's "ftragrec" settings); other
        names are ignored, missing ones keep their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        if isinstance(source, dict):
            return cls(**{n: source[n] for n in names if n in source})
        return cls(**{n: getattr(source, n) for n in names if hasattr(source, n)})


def validate_setup(
    hp: FTragrecHParams, *, n_base: int, hidden_size: int, encoder_cfg=None, n_items: int | None = None
) -> None:
    """Checks that need the data or the pretrained model; run before training starts."""
    if hp.top_k > n_base:
        raise ConfigError(f"config key 'top_k': expected at most the knowledge-base size {n_base}, got {hp.top_k}")
    if hp.search_k > n_base:
        raise ConfigError(
            f"config key 'retriever_pool': expected at most the knowledge-base size {n_base}, got {hp.retriever_pool}"
        )
    if hp.retrieval_backend == "faiss":
        check_faiss_factory(hp.faiss_index, hidden_size)
    if encoder_cfg is not None:
        if n_items is not None and encoder_cfg.n_items != n_items:
            raise ConfigError(
                f"config key 'pretrained': checkpoint has {encoder_cfg.n_items} item rows, "
                f"the dataset has {n_items} (same .inter file and k-core settings?)"
            )
        if encoder_cfg.hidden_size != hidden_size:
            raise ConfigError(
                f"config key 'pretrained': checkpoint has hidden_size {encoder_cfg.hidden_size}, "
                f"config says {hidden_size}"
            )


class Fusion(nnx.Module):
    """The learnable scalars of the mixing, each present only when learnable: alpha = sigmoid(alpha_logit)
    (learnable_alpha) and the retrieval temperature = exp(log_temperature) (learnable_temperature), starting at
    the configured alpha and retriever_temperature; None = fixed (the hyperparameter's value is used)."""

    def __init__(self, alpha: float | None, temperature: float | None):
        if alpha is not None:
            self.alpha_logit = nnx.Param(jnp.asarray(jnp.log(alpha) - jnp.log1p(-alpha), jnp.float32))
        if temperature is not None:
            self.log_temperature = nnx.Param(jnp.asarray(jnp.log(temperature), jnp.float32))

    def alpha(self, fixed: float):
        return jax.nn.sigmoid(self.alpha_logit[...]) if hasattr(self, "alpha_logit") else fixed

    def temperature(self, fixed: float):
        return jnp.exp(self.log_temperature[...]) if hasattr(self, "log_temperature") else fixed


class FTragrec(nnx.Module):
    """Parameter tree: encoder.* (frozen DuoRec), retriever.* (g), with value_rerank reranker.kernel (W) and,
    with learnable_alpha or learnable_temperature, fusion.alpha_logit / fusion.log_temperature; only
    retriever.*, reranker.* and fusion.* train (optim.TRAINABLE)."""

    def __init__(self, encoder, hp: FTragrecHParams, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.retriever = Retriever(
            encoder.config.hidden_size,
            hp.retriever_inner_size,
            hp.retriever_layers,
            encoder.config.initializer_range,
            rngs=rngs,
        )
        alpha = hp.alpha if hp.learnable_alpha else None
        temperature = hp.retriever_temperature if hp.learnable_temperature else None
        self.fusion = None if alpha is None and temperature is None else Fusion(alpha, temperature)
        self.reranker = ValueReranker(encoder.config.hidden_size) if hp.value_rerank else None

    def alpha(self, hp: FTragrecHParams):
        return hp.alpha if self.fusion is None else self.fusion.alpha(hp.alpha)

    def temperature(self, hp: FTragrecHParams):
        """The retrieval temperature: a traced scalar with learnable_temperature, else hp.retriever_temperature."""
        t = hp.retriever_temperature
        return t if self.fusion is None else self.fusion.temperature(t)


def build_ftragrec(encoder, hp: FTragrecHParams, seed: int = 0) -> FTragrec:
    return FTragrec(encoder, hp, rngs=nnx.Rngs(params=seed))


def _masked_softmax(logits, valid):
    """softmax over valid entries of the last axis; all-zero rows where nothing is valid (no NaN, no grad leak)."""
    m = jnp.max(jnp.where(valid, logits, -jnp.inf), axis=-1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.where(valid, jnp.exp(jnp.where(valid, logits, 0.0) - m), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)


def _masked_logsumexp(logits, valid):
    """log Σ exp over valid entries of the last axis; 0 where nothing is valid (finite values and gradients)."""
    m = jnp.max(jnp.where(valid, logits, -jnp.inf), axis=-1)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    total = jnp.where(valid, jnp.exp(jnp.where(valid, logits, 0.0) - m[:, None]), 0.0).sum(-1)
    return jnp.where(total > 0, jnp.log(jnp.where(total > 0, total, 1.0)) + m, 0.0)


def objective_rows(
    retriever,
    query,
    seq_output,
    pool_ids,
    h,
    kb_target,
    item_table,
    target,
    hp: FTragrecHParams,
    item_chunk_size=0,
    temperature=None,
    pool_values=None,
    reranker=None,
):
    """(loss [B], counted [B] bool) of hp.retriever_objective over the search pool pool_ids [B, P] (-1 = none);
    the formulas are in the module docstring. Everything but g (and W) is frozen here, a learned temperature
    included. reranker: value_rerank's W (models/value_rerank.py), whose u_j joins the pool's cosines; None = none.
    temperature: the retrieval temperature (traced with learnable_temperature); None = hp.retriever_temperature.
    pool_values: (items, weights) [B, P, m] of the pool's entries (`neighbour_values`), for "knn_likelihood";
    None = each entry's target, weight 1 (refused with knn_value_window > 1)."""
    temperature = hp.retriever_temperature if temperature is None else jax.lax.stop_gradient(temperature)
    valid = pool_ids >= 0
    safe = jnp.where(valid, pool_ids, 0)
    pool_target = kb_target[safe]
    logits = pool_scores(retriever, reranker, query, seq_output, pool_ids, h, kb_target, item_table) / temperature
    log_z = _masked_logsumexp(logits, valid)
    if hp.retriever_objective in ("contrastive", "knn_likelihood"):
        # v_j(y) [B, P], the share of entry j's vote that goes to y; contrastive: its own target alone, whatever
        # knn_value_window is (log v_j = 0 on its positives, so its term is log_z - logsumexp over them)
        if hp.retriever_objective == "contrastive":
            vote = (pool_target == target[:, None]).astype(logits.dtype)
        else:
            if pool_values is None:
                caller = "objective_rows(pool_values=...), or ftragrec_terms(values=...) of all search_k ids,"
                pool_values = _target_values(pool_ids, kb_target, hp, caller)
            items, weights = pool_values
            vote = jnp.where(items == target[:, None, None], weights, 0.0).sum(-1)
        positive = valid & (vote > 0)
        counted = positive.any(-1)
        rows = log_z - _masked_logsumexp(logits + jnp.log(jnp.where(positive, vote, 1.0)), positive)
    elif hp.retriever_objective == "usefulness":
        direction = item_table[target] - softmax_mean(seq_output, item_table, item_chunk_size)  # ∇_s log p[target]
        u = jnp.einsum("bh,bph->bp", direction, item_table[pool_target]) / hp.usefulness_temperature
        log_q = u - _masked_logsumexp(u, valid)[:, None]
        q = jnp.where(valid, jnp.exp(jnp.where(valid, log_q, 0.0)), 0.0)
        counted = valid.any(-1)
        rows = jnp.where(valid, q * (log_q - (logits - log_z[:, None])), 0.0).sum(-1)
    else:
        raise ConfigError(f"config key 'retriever_objective': no pool term for {hp.retriever_objective!r}")
    return jnp.where(counted, rows, 0.0), counted


def pool_scores(retriever, reranker, query, seq_output, ids, h, kb_target, item_table):
    """[B, P]: the retrieval score of entries ids [B, P] (-1 rows hold entry 0's score): the cosine of the query
    with keys recomputed from h by the current g, plus value_rerank's u_j when reranker is given (None = none)."""
    safe = jnp.where(ids >= 0, ids, 0)
    keys = embed(retriever, h[safe].astype(query.dtype))  # [B, P, H]: the pool's keys from the current g
    score = jnp.einsum("bh,bph->bp", query, keys)
    if reranker is not None:
        score = score + reranker(seq_output, item_table[kb_target[safe]])
    return score


def neighbours(
    retriever,
    query,
    seq_output,
    ids,
    h,
    target,
    item_table,
    hp: FTragrecHParams,
    alpha=None,
    temperature=None,
    reranker=None,
) -> dict:
    """Attention over retrieved ids and fusion (everything after the search). ids int [B, k], -1 = none.
    alpha: the mixing ratio (a traced scalar with learnable_alpha); None = hp.alpha. temperature: the retrieval
    temperature (traced with learnable_temperature); None = hp.retriever_temperature. reranker: value_rerank's
    W; P_ret = softmax((cos + u)/temperature) with it, softmax(cos/temperature) without."""
    temperature = hp.retriever_temperature if temperature is None else temperature
    valid = ids >= 0
    safe = jnp.where(valid, ids, 0)
    keys = embed(retriever, h[safe].astype(query.dtype))  # [B, k, H], fresh keys from the current g
    cos = jnp.einsum("bh,bkh->bk", query, keys)
    valid = valid & (cos >= hp.quality_threshold)
    target_emb = item_table[target[safe]]  # [B, k, H]
    score = cos if reranker is None else cos + reranker(seq_output, target_emb)
    p_ret = _masked_softmax(score / temperature, valid)
    has = valid.any(axis=-1)
    knowledge = jnp.einsum("bk,bkh->bh", p_ret, target_emb)
    a = jnp.where(has, hp.alpha if alpha is None else alpha, 0.0)[:, None].astype(seq_output.dtype)
    enhanced = (1.0 - a) * seq_output + a * knowledge
    return {
        "valid": valid,
        "cos": cos,
        "p_ret": p_ret,
        "has": has,
        "target_emb": target_emb,
        "knowledge": knowledge,
        "enhanced": enhanced,
        "alpha": a,
    }


def neighbour_values(ids, kb_target, window, kb_user, kb_prefix, q_user, q_prefix, hp: FTragrecHParams):
    """(items [B, k, m], weights [B, k, m]): what each retrieved entry (ids [B, k], -1 = none) votes for under
    kNN-LM, and the share of its P_ret each item gets (each entry's weights sum to 1).
    knn_value_window m = 1: the entry's target, weight 1. m > 1: its value window (Memory.window;
    knowledge_base.value_windows), the w-th item weighing knn_value_decay**w, renormalised over the items the
    query may see: an item of the query's own user at or after the query's target (prefix_j + w >= the query's
    prefix) is that target or its future, and is dropped. Only training queries meet such items (a validation or
    test query comes after all of its user's training items); q_prefix is the search's (0 with
    exclude_same_user, whose queries retrieve no entry of their user)."""
    safe = jnp.where(ids >= 0, ids, 0)
    m = hp.knn_value_window
    if m == 1:
        return kb_target[safe][..., None], jnp.ones((*ids.shape, 1), jnp.float32)
    if window is None or window.shape[-1] < m:
        held = 1 if window is None else window.shape[-1]
        raise ConfigError(
            f"config key 'knn_value_window': {m}, but the knowledge base holds windows of {held} item(s) "
            "(build it with knowledge_base.kb_options of the same settings)"
        )
    items = window[safe][..., :m]
    offset = jnp.arange(items.shape[-1], dtype=jnp.int32)
    same_user = (kb_user[safe] == q_user[:, None])[..., None]
    before = kb_prefix[safe][..., None] + offset < q_prefix[:, None, None]
    keep = (items > 0) & (~same_user | before)
    w = jnp.where(keep, jnp.float32(hp.knn_value_decay) ** offset.astype(jnp.float32), 0.0)
    return items, w / jnp.maximum(w.sum(-1, keepdims=True), 1e-30)


def _target_values(ids, kb_target, hp: FTragrecHParams, caller: str):
    """`neighbour_values` with a window of 1 (each entry's target, weight 1), which needs no query data; a
    window > 1 needs the queries' users and prefixes, so it is refused, naming the call that must pass them."""
    if hp.knn_value_window > 1:
        raise ConfigError(f"config key 'knn_value_window': > 1 needs {caller} from neighbour_values(...)")
    return kb_target[jnp.where(ids >= 0, ids, 0)][..., None], jnp.ones((*ids.shape, 1), jnp.float32)


def _knn_mass(nb: dict, weights):
    """[B, k·m]: P_ret_j · weight of each (entry, window item), 0 for invalid neighbours."""
    mass = jnp.where(nb["valid"], nb["p_ret"], 0.0)[..., None] * weights
    return mass.reshape(mass.shape[0], -1)


def knn_lm_scores(seq_output, item_table, nb: dict, items, weights):
    """log((1-a)·softmax(s·Eᵀ) + a·p_knn) over all items, p_knn[t] = Σ_j P_ret_j·Σ_w weight_jw·[items_jw = t]
    (evaluation; items, weights from `neighbour_values`, [B, k, m]).

    Worked example: a = 0.2, neighbours' targets (7, 7, 3) with P_ret (0.5, 0.3, 0.2) give p_knn[7] = 0.8 and
    p_knn[3] = 0.2; an item no neighbour points to keeps 0.8·softmax, so the backbone still ranks the rest.
    With value windows (7, 9), (7, 0), (3, 4) and decay 0.5, the first entry gives 7 two thirds of its 0.5 and 9
    one third; the second has no next item, so 7 keeps all of its 0.3."""
    base = jax.nn.log_softmax(seq_output @ item_table.T, axis=-1)
    rows = jnp.arange(base.shape[0])[:, None]
    p_knn = jnp.zeros_like(base).at[rows, items.reshape(items.shape[0], -1)].add(_knn_mass(nb, weights))
    return _knn_lm_mix(base, p_knn, nb["alpha"])


def _knn_lm_mix(base, p_knn, a):
    """log((1-a)·exp(base) + a·p_knn) for log-softmax scores `base` and kNN mass p_knn of the same items;
    `base` where a = 0 (a row without neighbours)."""
    log_knn = jnp.log(p_knn)  # -inf for items no neighbour points to; logaddexp handles it (no gradient here)
    mixed = jnp.logaddexp(jnp.log1p(-a) + base, jnp.log(jnp.maximum(a, 1e-30)) + log_knn)
    return jnp.where(a > 0, mixed, base)


def knn_lm_chunk_scores(state: dict, part, start):
    """`knn_lm_scores` of the items start..start+C-1 (part: their rows [C, H]) from `ftragrec_chunk_state`'s
    state: the backbone's log-softmax is s·part.T minus the whole catalogue's logsumexp, and p_knn holds the
    weights of the neighbours whose target falls in the chunk."""
    base = state["s"] @ part.T - state["lse"][:, None]
    col = state["target"] - start
    inside = (col >= 0) & (col < part.shape[0])
    rows = jnp.arange(base.shape[0])[:, None]
    p_knn = jnp.zeros_like(base).at[rows, jnp.where(inside, col, part.shape[0])].add(state["weight"], mode="drop")
    return _knn_lm_mix(base, p_knn, state["alpha"])


def _knn_lm_nll(rec_rows, nb: dict, items, weights, target):
    """-log p(target) of the kNN-LM mixture without materialising p_knn (so gradients stay finite);
    rec_rows [B]: the backbone's CE, -log softmax(s·Eᵀ)[target]; items, weights [B, k, m] (`neighbour_values`)."""
    p_base = jnp.exp(-rec_rows)
    hit = (items == target[:, None, None]) & nb["valid"][..., None]
    p_knn = jnp.where(hit, nb["p_ret"][..., None] * weights, 0.0).sum((-2, -1))
    a = nb["alpha"][:, 0]
    return -jnp.log((1.0 - a) * p_base + a * p_knn)


def ftragrec_terms(
    retriever,
    seq_output,
    ids,
    h,
    kb_target,
    item_table,
    target,
    mask,
    hp: FTragrecHParams,
    alpha=None,
    rec_ce=None,
    item_chunk_size: int = 0,
    temperature=None,
    values=None,
    reranker=None,
):
    """(total, aux) given retrieved ids [B, hp.search_k] (the first top_k are fused; with an objective, all of
    them are its pool): the part of the loss shared with the PyTorch reference's parity tests.
    reranker: value_rerank's W, None without it; the ids must then be the pool in `order_pool` order (_query_side).
    values: (items, weights) [B, search_k or top_k, m] under kNN-LM (`neighbour_values` of ids, which needs the
    queries' users and prefixes; the first top_k rows are the fused neighbours', the whole pool's are what
    "knn_likelihood" scores); None = each entry's target, weight 1.
    rec_ce [B]: the backbone's per-row CE if known (cached, Memory.rec_ce); it has no gradient either way.
    item_chunk_size: whole-catalogue terms over item chunks of this size (module docstring; 0 = whole).
    alpha, temperature: traced scalars when learnable; None = hp.alpha, hp.retriever_temperature."""
    seq_output = jax.lax.stop_gradient(seq_output)
    item_table = jax.lax.stop_gradient(item_table)
    h = jax.lax.stop_gradient(h)
    mask = jnp.asarray(mask, seq_output.dtype)
    query = embed(retriever, seq_output)
    pool_ids, ids = ids, ids[:, : hp.top_k]
    nb = neighbours(retriever, query, seq_output, ids, h, kb_target, item_table, hp, alpha, temperature, reranker)
    n_real = jnp.maximum(mask.sum(), 1.0)
    if rec_ce is None:
        rec_rows = cross_entropy_rows(seq_output, item_table, target, item_chunk_size)
    else:
        rec_rows = jax.lax.stop_gradient(rec_ce)
    rec = (rec_rows * mask).sum() / n_real
    if hp.fusion == "knn_lm":
        if values is None:
            values = _target_values(pool_ids, kb_target, hp, "ftragrec_terms(values=...)")
        nll = _knn_lm_nll(rec_rows, nb, *(v[:, : hp.top_k] for v in values), target)
    else:
        nll = cross_entropy_rows(nb["enhanced"], item_table, target, item_chunk_size)
    enhanced = (nll * mask).sum() / n_real
    p_rec = _masked_softmax(jnp.einsum("bh,bkh->bk", seq_output, nb["target_emb"]), nb["valid"])
    p_ret = nb["p_ret"]
    kl_rows = jnp.where(nb["valid"], p_ret * (jnp.log(p_ret + KL_EPS) - jnp.log(p_rec + KL_EPS)), 0.0).sum(-1)
    with_nb = mask * nb["has"].astype(mask.dtype)
    kl = (kl_rows * with_nb).sum() / jnp.maximum(with_nb.sum(), 1.0)
    total = rec + hp.enhanced_rec_weight * enhanced + hp.kl_small_weight * kl
    objective = {}
    if hp.retriever_objective != "design":
        rows, counted = objective_rows(
            retriever,
            query,
            seq_output,
            pool_ids,
            h,
            kb_target,
            item_table,
            target,
            hp,
            item_chunk_size,
            temperature,
            values if values is not None and values[0].shape[1] == pool_ids.shape[1] else None,
            reranker,
        )
        counted = mask * counted.astype(mask.dtype)
        term = (rows * counted).sum() / jnp.maximum(counted.sum(), 1.0)
        total = total + hp.retriever_loss_weight * term
        # the share of real rows the term counts (contrastive: those with their own target in the pool)
        objective = {"objective_loss": term, "objective_rows": counted.sum() / n_real}
    aux = {
        "loss": total,
        "rec_loss": rec,
        "enhanced_rec_loss": enhanced,
        "kl_loss": kl,
        "fallback_fraction": 1.0 - with_nb.sum() / n_real,
        "neighbours": (nb["valid"].sum(-1) * mask).sum() / n_real,
        # queries the search returned fewer than top_k ids for (threshold masking aside): a tiny base, a user
        # whose own samples are most of it, or an approximate index that ran out (search.py)
        "short_fraction": ((ids < 0).any(-1).astype(mask.dtype) * mask).sum() / n_real,
        **objective,
    }
    if hp.learnable_alpha:
        aux["alpha"] = jnp.asarray(alpha, jnp.float32)
    if hp.learnable_temperature:
        aux["temperature"] = jnp.asarray(temperature, jnp.float32)
    return total, aux


def _search_prefix(batch, hp):
    """The query prefix the exclusion rule uses. The rule forbids same-user entries whose prefix is not shorter
    than the query's: a query prefix of 0 makes that every same-user entry (all have prefix >= 1), with no change
    to the search backends (exclude_same_user)."""
    return jnp.zeros_like(batch["prefix_len"]) if hp.exclude_same_user else batch["prefix_len"]


def _values(memory: Memory, ids, batch, hp):
    """`neighbour_values` of retrieved ids [B, w] of a batch's queries."""
    return neighbour_values(
        ids, memory.target, memory.window, memory.user, memory.prefix_len, batch["user"], _search_prefix(batch, hp), hp
    )


def _query_side(model, batch, memory: Memory, hp, seq_output, searcher, mesh=None, width=None):
    """(seq_output, query, ids [B, >= width]); width None = hp.search_k (training). A FAISS searcher always
    answers its own top_k (KnowledgeBase built it for search_k), of which the caller keeps what it needs. With
    value_rerank the first `width` ids, the pool, come back in `order_pool` order (the fused top_k first)."""
    if seq_output is None:  # uncached: the frozen encoder, dropout off (length-bucketed: same outputs, faster)
        seq_output = encode_bucketed(model.encoder, batch["item_seq"], batch["item_seq_len"], mesh=mesh)
    seq_output = jax.lax.stop_gradient(seq_output)
    query = embed(model.retriever, seq_output)
    q_prefix = _search_prefix(batch, hp)
    width = want = hp.search_k if width is None else width
    if hp.retrieval_backend == "faiss" and searcher is not None:
        width = searcher.top_k
    ids = retrieve(
        query,
        batch["user"],
        q_prefix,
        memory,
        backend=hp.retrieval_backend,
        top_k=width,
        chunk_size=hp.retrieval_chunk_size,
        searcher=searcher,
    )
    if model.reranker is not None:
        if ids.shape[1] < want:
            raise ConfigError(
                f"config key 'retriever_pool': value_rerank reranks {want} entries, the FAISS searcher answers "
                f"{ids.shape[1]} (build the knowledge base with kb_options(hp))"
            )
        ids = _rerank_pool(model, seq_output, query, ids[:, :want], memory)
    return seq_output, query, ids


def _rerank_pool(model, seq_output, query, ids, memory: Memory):
    """The pool ids [B, P] in `order_pool` order of cos + u under the current g and W."""
    table = model.encoder.item_table()
    score = pool_scores(model.retriever, model.reranker, query, seq_output, ids, memory.h, memory.target, table)
    return order_pool(score, ids)


def ftragrec_loss(
    model: FTragrec,
    batch: dict,
    memory: Memory,
    *,
    hp: FTragrecHParams,
    seq_output=None,
    searcher: FaissSearcher | None = None,
    rec_ce=None,
    item_chunk_size: int = 0,
):
    """(total, aux) for one batch. `seq_output` [B, H]: the cached frozen encoder output of the batch rows
    (e.g. memory.h[batch["index"]] for training samples), or None to run the frozen encoder here."""
    seq_output, _, ids = _query_side(model, batch, memory, hp, seq_output, searcher)
    mask = batch.get("mask", jnp.ones(ids.shape[0], seq_output.dtype))
    # the pool's values only when the objective scores them (the fused part reads the first top_k rows)
    width = ids.shape[1] if hp.retriever_objective == "knn_likelihood" else hp.top_k
    values = _values(memory, ids[:, :width], batch, hp) if hp.fusion == "knn_lm" else None
    return ftragrec_terms(
        model.retriever,
        seq_output,
        ids,
        memory.h,
        memory.target,
        model.encoder.item_table(),
        batch["target"],
        mask,
        hp,
        model.alpha(hp),
        rec_ce,
        item_chunk_size,
        model.temperature(hp),
        values,
        model.reranker,
    )


def _fused(model: FTragrec, batch: dict, memory: Memory, hp: FTragrecHParams, searcher, mesh):
    """(seq_output, the neighbours' (items, weights) [B, k, m] (`neighbour_values`), item table, neighbours dict)
    of an evaluation batch."""
    seq_output, query, ids = _query_side(model, batch, memory, hp, None, searcher, mesh, width=hp.eval_search_k)
    ids = ids[:, : hp.top_k]
    table = model.encoder.item_table()
    nb = neighbours(
        model.retriever,
        query,
        seq_output,
        ids,
        memory.h,
        memory.target,
        table,
        hp,
        model.alpha(hp),
        model.temperature(hp),
        model.reranker,
    )
    return seq_output, _values(memory, ids, batch, hp), table, nb


def ftragrec_scores(
    model: FTragrec,
    batch: dict,
    memory: Memory,
    *,
    hp: FTragrecHParams,
    searcher: FaissSearcher | None = None,
    mesh=None,
):
    """Full-sort scores [B, n_items] from the enhanced representation (evaluation); `mesh`: the batch is
    sharded along its data axis (each device encodes its own rows)."""
    seq_output, values, table, nb = _fused(model, batch, memory, hp, searcher, mesh)
    if hp.fusion == "knn_lm":
        return knn_lm_scores(seq_output, table, nb, *values)
    return nb["enhanced"] @ table.T


def ftragrec_chunk_state(
    model: FTragrec,
    batch: dict,
    memory: Memory,
    *,
    hp: FTragrecHParams,
    searcher: FaissSearcher | None = None,
    mesh=None,
    item_chunk_size: int = 0,
):
    """What `chunk_scores(hp)` needs to score any item chunk as `ftragrec_scores` scores the catalogue, with
    nothing [B, n_items]: the enhanced vector [B, H] (representation fusion) or, for kNN-LM, the backbone's
    vector, its logsumexp over the catalogue (in chunks of item_chunk_size) and the neighbours' targets and
    weights."""
    seq_output, (items, weights), table, nb = _fused(model, batch, memory, hp, searcher, mesh)
    if hp.fusion != "knn_lm":
        return nb["enhanced"]
    return {
        "s": seq_output,
        "lse": logsumexp_rows(seq_output, table, item_chunk_size),
        "target": items.reshape(items.shape[0], -1),
        "weight": _knn_mass(nb, weights),
        "alpha": nb["alpha"],
    }


def chunk_scores(hp: FTragrecHParams):
    """The pure (state, part, start) -> [B, C] scorer of `ftragrec_chunk_state`'s states under hp's fusion."""
    return knn_lm_chunk_scores if hp.fusion == "knn_lm" else linear_chunk_scores
