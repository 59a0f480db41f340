"""Full-sort evaluation: each sample's target is ranked against every item (padding excluded).

Tie rule (explicit, deterministic): items with a strictly higher score rank above the target; among items
with the SAME score as the target, lower item ids rank first. So
    rank = 1 + #{i != target: s_i > s_t} + #{i < target: s_i == s_t},   i over real items (1..n_items-1),
which is the target's position in `np.argsort(-scores[1:], kind="stable")`. RecBole 0.2.1 instead moves the
target's score to column 0, flips the columns and calls torch.topk, which defines no order among equal values
(on CPU, torch 2.13, its order differed from index order in 68 of 90 random tie cases we tried), so RecBole's
result under ties depends on the torch build and device. Without ties involving the target, both agree.

Memory: scores exist for one chunk of `batch_size` rows at a time, never users x items at once; the rank is
computed on the device by one jitted function per chunk and only [batch_size] ints come back.

Data parallel (`mesh=`): each chunk is sharded along the mesh's `data` axis like a training batch
(`parallel.put_batch`; with several processes each feeds only its own rows), the scorer runs on the sharded
chunk with replicated parameters, and only the [batch_size] ranks are gathered, onto every process. The
chunk size must divide by the device count (`eval_batch_size`), checked before anything is scored.
"""

from __future__ import annotations

import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ftragrec_jax import parallel
from ftragrec_jax.config import Config
from ftragrec_jax.data.batches import iterate_batches
from ftragrec_jax.data.samples import SequenceSamples, UserHistory
from ftragrec_jax.errors import FtragrecError
from ftragrec_jax.metrics import single_target_metrics, summarize
from ftragrec_jax.models.softmax_ce import item_chunks, linear_chunk_scores
from ftragrec_jax.scoring import ChunkedScoreFn, Scorer, load_model_dir

PROTOCOL = "full_sort"  # RecBole's: rank among all items, history not masked
PROTOCOL_MASKED = "full_sort_mask_history"  # S3-Rec/ICLRec-style: the user's earlier items are not ranked
TIE_RULE = "lower_id_first"


class EvalResult(dict):
    """RecBole-named metrics (`recall@10`: float, ...) that also carry how they were obtained."""

    def __init__(self, metrics: dict, *, protocol: str, n_samples: int, ks: tuple):
        super().__init__(metrics)
        self.protocol = protocol
        self.n_samples = n_samples
        self.ks = ks
        self.ties = TIE_RULE

    def to_json(self) -> dict:
        return {"protocol": self.protocol, "ties": self.ties, "n_samples": self.n_samples, "metrics": dict(self)}


def split_history(dataset, split: str) -> UserHistory:
    """The history to mask for `split` ("valid"/"test"): every user's chronological items; each sample
    masks only the items before its own target (its untruncated prefix), so one table serves both splits."""
    if split not in ("train", "valid", "test"):
        raise FtragrecError(f"split={split!r}: expected 'valid' or 'test'")
    return dataset.history


def _target_ranks(scores, target, history, *, mask_history: bool):
    """1-based rank of each row's target under the tie rule above, and whether the row had a NaN score.
    history: int32 [B, H] item ids to exclude (0 = none), ignored unless mask_history."""
    n_items = scores.shape[1]
    ids = jnp.arange(n_items, dtype=jnp.int32)[None, :]
    target = target.astype(jnp.int32)[:, None]
    s_t = jnp.take_along_axis(scores, target, axis=1)
    rival = (ids != 0) & (ids != target)
    if mask_history:
        rows = jnp.arange(scores.shape[0])[:, None]
        hidden = jnp.zeros(scores.shape, dtype=bool).at[rows, history].set(True)
        rival &= ~hidden  # the target itself stays rankable even if it was seen before
    above = rival & ((scores > s_t) | ((scores == s_t) & (ids < target)))
    rank = 1 + jnp.sum(above, axis=1, dtype=jnp.int32)
    bad = jnp.any(jnp.isnan(scores) & (rival | (ids == target)), axis=1)
    return rank, bad


target_ranks = jax.jit(_target_ranks, static_argnames=("mask_history",))


def _chunked_target_ranks(
    state, table, target, history, *, chunk: int, mask_history: bool, chunk_scores=linear_chunk_scores
):
    """_target_ranks of the scores chunk_scores(state, part, start) gives item chunk by item chunk of `chunk`
    rows (scoring.ChunkedScoreFn; default: state @ table.T): no [B, n_items] array. Pass 1 reads each row's
    target score from its chunk, pass 2 counts the rivals above it chunk by chunk; both passes compute a
    chunk's scores with the same operation, so the target's score is compared with itself."""
    parts, real = item_chunks(table, chunk)
    starts = jnp.arange(parts.shape[0], dtype=jnp.int32) * chunk
    target = target.astype(jnp.int32)
    b = target.shape[0]
    rows = jnp.arange(b)[:, None]

    def target_score(s_t, xs):
        start, t = xs
        col = target - start
        inside = (col >= 0) & (col < chunk)
        s = jnp.take_along_axis(chunk_scores(state, t, start), jnp.clip(col, 0, chunk - 1)[:, None], axis=1)[:, 0]
        return jnp.where(inside, s, s_t), None

    s_t, _ = jax.lax.scan(target_score, jnp.zeros((b,), table.dtype), (starts, parts))

    def count(carry, xs):
        above, bad = carry
        start, t, ok = xs
        scores = chunk_scores(state, t, start)
        ids = start + jnp.arange(chunk, dtype=jnp.int32)[None, :]
        rival = ok[None, :] & (ids != 0) & (ids != target[:, None])
        if mask_history:
            col = history - start
            inside = (history > 0) & (col >= 0) & (col < chunk)
            hidden = jnp.zeros(scores.shape, bool).at[rows, jnp.where(inside, col, chunk)].set(True, mode="drop")
            rival &= ~hidden
        beats = (scores > s_t[:, None]) | ((scores == s_t[:, None]) & (ids < target[:, None]))
        above = above + jnp.sum(rival & beats, axis=1, dtype=jnp.int32)
        bad = bad | jnp.any(jnp.isnan(scores) & (rival | (ids == target[:, None])), axis=1)
        return (above, bad), None

    init = (jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
    (above, bad), _ = jax.lax.scan(count, init, (starts, parts, real))
    return 1 + above, bad


CHUNKED_STATIC = ("chunk", "mask_history", "chunk_scores")
chunked_target_ranks = jax.jit(_chunked_target_ranks, static_argnames=CHUNKED_STATIC)


@functools.lru_cache(maxsize=8)
def _gathered_ranks(mesh):
    """target_ranks whose [B] outputs come back replicated: every process holds all ranks of the chunk
    (an all-gather of B ints; the [B, n_items] scores never leave their devices)."""
    return jax.jit(_target_ranks, static_argnames=("mask_history",), out_shardings=parallel.replicated(mesh))


@functools.lru_cache(maxsize=8)
def _gathered_chunked_ranks(mesh):
    """chunked_target_ranks with replicated [B] outputs (see _gathered_ranks)."""
    return jax.jit(_chunked_target_ranks, static_argnames=CHUNKED_STATIC, out_shardings=parallel.replicated(mesh))


def full_sort_evaluate(
    score_fn,
    samples: SequenceSamples,
    n_items: int,
    *,
    ks=(5, 10, 20, 50),
    batch_size: int = 1024,
    history: UserHistory | None = None,
    mesh=None,
    item_chunk_size: int = 0,
) -> EvalResult:
    """RecBole metrics at every K in ks over `samples`.

    score_fn(item_seq, item_seq_len, batch) -> [B, n_items] scores (jax or numpy); column 0 is padding and
    never ranked. Batches have a fixed size (the last one padded, its extra rows ignored).
    history: a UserHistory (dataset.history) to hide each sample's earlier items from the ranking.
    mesh: shard each batch over this device mesh (see the module docstring); None = numpy batches as given.
    """
    ranks = sample_ranks(
        score_fn, samples, n_items, batch_size=batch_size, history=history, mesh=mesh, item_chunk_size=item_chunk_size
    )
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise FtragrecError(f"ks={ks}: expected positive cut-offs")
    metrics = summarize(single_target_metrics(ranks, ks), ks, columns=range(len(ks)))
    return EvalResult(metrics, protocol=PROTOCOL if history is None else PROTOCOL_MASKED, n_samples=len(samples), ks=ks)


def sample_ranks(
    score_fn,
    samples: SequenceSamples,
    n_items: int,
    *,
    batch_size: int = 1024,
    history: UserHistory | None = None,
    mesh=None,
    item_chunk_size: int = 0,
) -> np.ndarray:
    """int64 [N]: every sample's target rank (1 = top) among the real items.

    item_chunk_size > 0 and < n_items, with a scoring.ChunkedScoreFn (every model's: DuoRec, SASRec,
    FTragrec): the rank is counted over item chunks and no [B, n_items] scores exist. A plain function is
    scored whole, as without it.

    With `mesh`, score_fn receives the chunk's fields as device arrays sharded along the data axis (the batch
    dict holds item_seq, item_seq_len, target, user, prefix_len, mask, index, each [B]-leading)."""
    if mesh is not None:
        parallel.check_batch_divides(batch_size, mesh, "eval_batch_size")
    if len(samples) == 0:
        raise FtragrecError(
            "nothing to evaluate: 0 samples (users need at least 3 interactions for a test "
            "sample and 4 for a valid one)"
        )
    if n_items < 2:
        raise FtragrecError(f"n_items={n_items}: expected padding plus at least one item")
    if int(samples.target.max()) >= n_items or int(samples.target.min()) < 1:
        raise FtragrecError(f"targets outside 1..{n_items - 1}: the samples do not belong to this catalogue")
    width = 1
    if history is not None:
        width = max(1, int(samples.prefix_len.max()))
        width = 32 * math.ceil(width / 32)  # few distinct shapes across splits, so few compilations
    out = np.empty(len(samples), dtype=np.int64)
    ranker = target_ranks if mesh is None else _gathered_ranks(mesh)
    if isinstance(score_fn, Scorer):  # a saved model passed directly: its ScoreFn, which may score by item chunks
        score_fn = score_fn.score
    chunked = 0 < item_chunk_size < n_items and isinstance(score_fn, ChunkedScoreFn)
    if chunked:
        ranker = chunked_target_ranks if mesh is None else _gathered_chunked_ranks(mesh)
        table = score_fn.item_table
        if tuple(table.shape[:1]) != (n_items,):
            raise FtragrecError(f"score_fn's item table has {table.shape[0]} rows, expected {n_items}")
    # multi-process: every process walks the same chunks (no shuffle) and feeds its own rows of each
    local = parallel.process_slice(batch_size) if mesh is not None and jax.process_count() > 1 else slice(None)
    pending = None  # one chunk in flight: the next chunk is dispatched before this one's ranks are fetched
    for batch in iterate_batches(samples, batch_size):
        hist = (
            np.zeros((batch_size, 1), np.int32)
            if history is None
            else history.prefix_matrix(batch["user"], batch["prefix_len"], width)
        )
        fed = batch
        if mesh is not None:
            fed = parallel.put_batch(
                {k: parallel.int32_host(v[local]) for k, v in {**batch, "history": hist}.items()}, mesh
            )
            hist = fed.pop("history")
        if chunked:
            state = score_fn.prepare(fed["item_seq"], fed["item_seq_len"], fed, int(item_chunk_size))
            result = ranker(
                state,
                table,
                fed["target"],
                hist,
                chunk=int(item_chunk_size),
                mask_history=history is not None,
                chunk_scores=score_fn.chunk_scores,
            )
        else:
            scores = score_fn(fed["item_seq"], fed["item_seq_len"], fed)
            if tuple(scores.shape) != (batch_size, n_items):
                raise FtragrecError(
                    f"score_fn returned shape {tuple(scores.shape)}, expected ({batch_size}, {n_items})"
                )
            result = ranker(scores, fed["target"], hist, mask_history=history is not None)
        if pending is not None:
            _collect(out, *pending)
        pending = (batch, result)
    _collect(out, *pending)
    return out


def _host(x) -> np.ndarray:
    """A chunk's result on this host: a replicated array across processes is read from a local copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))


def _collect(out: np.ndarray, batch: dict, result) -> None:
    rank, bad = (_host(x) for x in result)
    real = batch["mask"] > 0
    if bad[real].any():
        row = int(batch["index"][real][np.argmax(bad[real])])
        raise FtragrecError(
            f"score_fn returned NaN scores (sample {row}); a model with non-finite parameters cannot be evaluated"
        )
    out[batch["index"][real]] = rank[real]


# --- one split of a dataset, with a progress bar, and the protocol record stored with results ---


def evaluate_split(score_fn, dataset, split: str, cfg: Config, *, show_progress: bool | None = None, mesh=None) -> dict:
    """RecBole-named metrics at every K in cfg.topk for `split` ("valid" or "test"), data-parallel over `mesh`
    (None = the mesh of config key `mesh`); score_fn gets batches sharded along its data axis."""
    return dict(_over_split(full_sort_evaluate, score_fn, dataset, split, cfg, show_progress, mesh, ks=tuple(cfg.topk)))


def split_ranks(score_fn, dataset, split: str, cfg: Config, *, show_progress: bool | None = None, mesh=None):
    """int64 [N]: every sample's target rank in `split`, batched and masked as evaluate_split ranks them
    (for paired comparisons of two models on the same users)."""
    return _over_split(sample_ranks, score_fn, dataset, split, cfg, show_progress, mesh)


def _over_split(run, score_fn, dataset, split: str, cfg: Config, show_progress: bool | None, mesh, **kw):
    """run(score_fn, samples, n_items, ...) over `split` with the configured batch size, history masking and
    mesh, behind an "Evaluate <split>" progress bar that advances one batch per score_fn call."""
    mesh = parallel.make_mesh(cfg.mesh) if mesh is None else mesh
    samples = getattr(dataset, split)
    show = cfg.show_progress if show_progress is None else show_progress
    total = math.ceil(len(samples) / cfg.eval_batch_size)
    with tqdm(
        total=total, desc=f"Evaluate {split}", disable=not show, leave=False, dynamic_ncols=True, file=sys.stderr
    ) as bar:

        def counted(fn):
            def call(*args):
                out = fn(*args)
                bar.update(1)
                return out

            return call

        if isinstance(score_fn, Scorer):  # unwrapped here too: the re-wrap below must see the ChunkedScoreFn
            score_fn = score_fn.score
        if isinstance(score_fn, ChunkedScoreFn):  # keep it chunkable, so item chunking stays possible
            fn = ChunkedScoreFn(
                counted(score_fn), counted(score_fn.prepare), score_fn.chunk_scores, score_fn.item_table
            )
        else:
            fn = counted(score_fn)
        return run(
            fn,
            samples,
            dataset.n_items,
            batch_size=cfg.eval_batch_size,
            history=history_for(dataset, split, cfg),
            mesh=mesh,
            item_chunk_size=cfg.item_chunk_size,
            **kw,
        )


def history_for(dataset, split: str, cfg: Config):
    """The items to hide per evaluated user when mask_history is on (None = RecBole's protocol)."""
    if not cfg.mask_history:
        return None
    return split_history(dataset, split)


def format_metrics(metrics: dict) -> str:
    """RecBole's `recall@10 : 0.0512    mrr@10 : 0.0213` layout on one line."""
    return "    ".join(f"{k} : {v:.4f}" for k, v in metrics.items())


def protocol_info(dataset, cfg: Config) -> dict:
    """How the numbers were obtained, stored beside them so they are never compared blindly."""
    return {
        "ranking": "full sort over all items (padding excluded)",
        "ties": TIE_RULE,
        "split": "leave-one-out (last item test, second-to-last valid)",
        "mask_history": cfg.mask_history,
        "topk": list(cfg.topk),
        "dataset": {
            "name": dataset.name,
            "n_users": int(dataset.n_users),
            "n_items": int(dataset.n_items),
            "n_interactions": int(dataset.n_interactions),
            "settings": dict(dataset.settings),
            "train_samples": len(dataset.train),
            "valid_samples": len(dataset.valid),
            "test_samples": len(dataset.test),
        },
        **_fitted_on(dataset, cfg),
    }


def _fitted_on(dataset, cfg: Config) -> dict:
    """What train_samples are when they are not the whole training split."""
    if cfg.model == "ftragrec" and cfg.retriever_queries == "valid":
        return {
            "retriever_queries": "valid: g was fitted on train_samples validation queries (one per user); the "
            f"valid figures are the other {len(dataset.valid)} validation users (retriever_valid_holdout "
            f"{cfg.retriever_valid_holdout}); the knowledge base is the training split; test is every user"
        }
    if cfg.model == "ftragrec" and cfg.retriever_queries == "held_out":
        return {
            "retriever_queries": "held_out: g was fitted on train_samples training samples that the frozen "
            "backbone was pretrained without (each user's last pretrain_holdout_last, in the backbone's "
            "model.json); the knowledge base is the whole training split; valid and test are every user"
        }
    if cfg.model == "duorec" and cfg.pretrain_holdout_last:
        return {
            "pretrain_holdout_last": f"{cfg.pretrain_holdout_last}: train_samples excludes each user's last "
            f"{cfg.pretrain_holdout_last} training samples, kept out of sample for a retriever"
        }
    return {}


def metrics_table(results: dict) -> str:
    """valid/test side by side, one metric per row, for the terminal."""
    splits = [s for s in ("valid", "test") if s in results]
    names = list(results[splits[0]]) if splits else []
    width = max([len(n) for n in names] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>8}" for s in splits)]
    for name in names:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{results[s][name]:>8.4f}" for s in splits))
    return "\n".join(lines)


# The side-by-side table of a backbone and its FTragrec: HR@5/10, NDCG@5/10, MRR@10.
COMPARED = ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10")

# Test figures other code published for Amazon Beauty under this protocol (RecBole's 5-core split of the same
# file, leave-one-out, full ranking over all items), printed under a run on that exact dataset for reference.
# Other code and other runs: they are not reproduced here. None = not published in the source.
PUBLISHED_BEAUTY = {
    # Qiu et al., "Contrastive Learning for Representation Degeneration Problem in Sequential Recommendation"
    # (WSDM 2022): only the @10 figures are quoted in this project's sources
    "DuoRec": {"hit@5": None, "hit@10": 0.0845, "ndcg@5": None, "ndcg@10": 0.0443, "mrr@10": None},
    # Zhao et al., "RaSeRec: Retrieval-Augmented Sequential Recommendation" (arXiv 2412.18378), its Beauty result
    "RaSeRec": {"hit@5": 0.0569, "hit@10": 0.0860, "ndcg@5": 0.0369, "ndcg@10": 0.0463, "mrr@10": None},
}
BEAUTY_SHAPE = {"n_users": 22363, "n_interactions": 198502}  # the published split (users, interactions; length 50)


def relative_change(base: dict, new: dict) -> dict:
    """(new - base) / base per metric present in both (None where base is 0)."""
    return {k: (new[k] - base[k]) / base[k] if base.get(k) else None for k in new if k in base}


def published_for(protocol: dict) -> dict:
    """The published rows that apply to a run's protocol record: Beauty's, on exactly that split and protocol."""
    ds = protocol.get("dataset") or {}
    same = (
        not protocol.get("mask_history")
        and all(ds.get(k) == v for k, v in BEAUTY_SHAPE.items())
        and (ds.get("settings") or {}).get("max_seq_length") == 50
    )
    return PUBLISHED_BEAUTY if same else {}


def comparison_table(backbone: dict, tuned: dict, published: dict | None = None) -> str:
    """Backbone vs FTragrec test metrics, one metric per row, with the relative change; `published` rows
    ({label: metrics}) follow, labelled as published."""
    rel = relative_change(backbone, tuned)
    lines = [f"{'test':<10}{'DuoRec':>10}{'FTragrec':>10}{'change':>10}"]
    for k in COMPARED:
        change = f"{100 * rel[k]:+.1f}%" if rel.get(k) is not None else "n/a"
        lines.append(f"{k:<10}{backbone[k]:>10.4f}{tuned[k]:>10.4f}{change:>10}")
    if published:
        names = list(published)
        lines += [
            "",
            "published (other code and runs, for reference; not reproduced here):",
            f"{'test':<10}" + "".join(f"{n:>10}" for n in names),
        ]
        for k in COMPARED:
            cells = ["—" if published[n].get(k) is None else f"{published[n][k]:.4f}" for n in names]
            lines.append(f"{k:<10}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def evaluate_model_dir(checkpoint, data=None, overrides=(), show_progress=True) -> dict:
    """{"valid": metrics, "test": metrics} of a model directory (or builtin:NAME) on the dataset its model.json
    names (or `data`), with `overrides` as `scoring.load_model_dir` takes them."""
    m = load_model_dir(checkpoint, data, overrides, show_progress)
    valid = evaluate_split(m.scorer, m.dataset, "valid", m.cfg, mesh=m.mesh)
    m.scorer.before_test()
    return {"valid": valid, "test": evaluate_split(m.scorer, m.dataset, "test", m.cfg, mesh=m.mesh)}
