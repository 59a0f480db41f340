"""PyTorch reference FTragrec, written from the same spec as ftragrec_jax/models/ftragrec.py.

It is what a PyTorch user would write: a frozen TorchDuoRec encoder run every step, a retriever g of
RecBole FeedForward blocks, FAISS searched on the host, and the loss computed from the retrieved ids.
Parity tests feed both implementations the same ids and compare every loss term and g's gradients.

state_dict keys: the encoder's DuoRec keys unchanged, plus
  retriever_encoder.layer.{i}.dense_1.{weight,bias}, .dense_2.{weight,bias}, .LayerNorm.{weight,bias}
(mapped to Flax retriever.layers.{i}.* by converters/mapping.py's FTragrec retriever table).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from converters.reference.torch_duorec import FeedForward, TorchDuoRec

KL_EPS = 1e-8


class TorchRetriever(nn.Module):
    """g: LN(x + W2·gelu(W1·x)) blocks, no dropout; W2 = 0 at init so g starts as LN(x)."""

    def __init__(self, hidden_size, inner_size=256, n_layers=1, initializer_range=0.02, layer_norm_eps=1e-12):
        super().__init__()
        self.layer = nn.ModuleList([FeedForward(hidden_size, inner_size, 0.0, layer_norm_eps) for _ in range(n_layers)])
        for block in self.layer:
            block.dense_1.weight.data.normal_(0.0, initializer_range)
            block.dense_1.bias.data.zero_()
            block.dense_2.weight.data.zero_()
            block.dense_2.bias.data.zero_()

    def forward(self, x):
        for block in self.layer:
            x = block(x)
        return x

    def embed(self, x):
        return F.normalize(self(x), dim=-1, eps=1e-12)


def _masked_softmax(logits, valid):
    z = logits.masked_fill(~valid, float("-inf"))
    p = torch.softmax(z, dim=-1)
    return torch.nan_to_num(p, nan=0.0) * valid  # rows with nothing valid: all zeros


def ftragrec_terms(
    retriever: TorchRetriever,
    seq_output,
    ids,
    h,
    kb_target,
    item_table,
    target,
    mask,
    *,
    alpha=0.15,
    retriever_temperature=0.07,
    quality_threshold=0.6,
    enhanced_rec_weight=0.5,
    kl_small_weight=0.03,
    value_kernel=None,
):
    """(total, terms) given retrieved ids [B, k] (-1 = none). seq_output, h and item_table are frozen.
    retriever_temperature may be a tensor that requires grad (a learned temperature). value_kernel: value_rerank's
    W [H, H] (a tensor that may require grad): P_ret = softmax((cos_j + (s W)·E[t_j])/temperature)."""
    seq_output, h, item_table = seq_output.detach(), h.detach(), item_table.detach()
    mask = mask.to(seq_output.dtype)
    q = retriever.embed(seq_output)
    valid = ids >= 0
    safe = ids.clamp(min=0).long()
    keys = retriever.embed(h[safe])
    cos = torch.einsum("bh,bkh->bk", q, keys)
    valid = valid & (cos >= quality_threshold)
    target_emb = item_table[kb_target[safe].long()]
    score = cos if value_kernel is None else cos + torch.einsum("bh,bkh->bk", seq_output @ value_kernel, target_emb)
    p_ret = _masked_softmax(score / retriever_temperature, valid)
    has = valid.any(dim=-1)
    knowledge = torch.einsum("bk,bkh->bh", p_ret, target_emb)
    a = torch.where(has, torch.tensor(alpha, dtype=seq_output.dtype), torch.tensor(0.0, dtype=seq_output.dtype))
    a = a[:, None]
    enhanced = (1.0 - a) * seq_output + a * knowledge
    n_real = mask.sum().clamp(min=1.0)
    rec = (F.cross_entropy(seq_output @ item_table.T, target.long(), reduction="none") * mask).sum() / n_real
    enh = (F.cross_entropy(enhanced @ item_table.T, target.long(), reduction="none") * mask).sum() / n_real
    p_rec = _masked_softmax(torch.einsum("bh,bkh->bk", seq_output, target_emb), valid)
    kl_each = p_ret * (torch.log(p_ret + KL_EPS) - torch.log(p_rec + KL_EPS))
    kl_rows = torch.where(valid, kl_each, torch.zeros_like(kl_each)).sum(-1)
    with_nb = mask * has.to(mask.dtype)
    kl = (kl_rows * with_nb).sum() / with_nb.sum().clamp(min=1.0)
    total = rec + enhanced_rec_weight * enh + kl_small_weight * kl
    terms = {
        "loss": total,
        "rec_loss": rec,
        "enhanced_rec_loss": enh,
        "kl_loss": kl,
        "fallback_fraction": 1.0 - with_nb.sum() / n_real,
    }
    return total, terms, enhanced


def retriever_objective_term(
    retriever: TorchRetriever,
    seq_output,
    pool_ids,
    h,
    kb_target,
    item_table,
    target,
    mask,
    *,
    objective,
    retriever_temperature=0.07,
    usefulness_temperature=1.0,
    pool_values=None,
    value_kernel=None,
):
    """(term, counted share) of a retriever objective over a search pool [B, P] (-1 = none), from the spec in
    ftragrec_jax/models/ftragrec.py: R = softmax(cos/temperature) over the pool's valid entries;
    "contrastive": -log of R's mass on entries whose target is the row's target (rows with none count nowhere);
    "usefulness": KL(Q || R), Q = softmax(u/usefulness_temperature), u_j = (E[y] - softmax(s E^T) E) . E[t_j];
    "knn_likelihood": -log sum_j R_j v_j(y), v_j(y) = the weights of entry j's value items that equal y
    (pool_values = (items, weights) [B, P, m]; None = each entry's target, weight 1); rows with no vote count
    nowhere. value_kernel: value_rerank's W, adding (s W)·E[t_j] to each cosine before the temperature.
    The term is the mean over real rows (mask = 1) it counts. A learned temperature (a tensor) enters detached:
    it trains from the design's terms only."""
    seq_output, h, item_table = seq_output.detach(), h.detach(), item_table.detach()
    if torch.is_tensor(retriever_temperature):
        retriever_temperature = retriever_temperature.detach()
    mask = mask.to(seq_output.dtype)
    valid = pool_ids >= 0
    safe = pool_ids.clamp(min=0).long()
    q = retriever.embed(seq_output)
    keys = retriever.embed(h[safe])
    score = torch.einsum("bh,bph->bp", q, keys)
    if value_kernel is not None:
        score = score + torch.einsum("bh,bph->bp", seq_output @ value_kernel, item_table[kb_target[safe].long()])
    logits = score / retriever_temperature
    # rows with nothing valid (or no positive) keep finite values there, so no NaN reaches a gradient
    some = valid.any(dim=-1, keepdim=True)
    log_r = torch.log_softmax(logits.masked_fill(~valid & some, float("-inf")), dim=-1)
    pool_target = kb_target[safe].long()
    if objective == "contrastive":
        positive = valid & (pool_target == target[:, None].long())
        counted = positive.any(dim=-1)
        mass = torch.logsumexp(log_r.masked_fill(~positive & counted[:, None], float("-inf")), dim=-1)
        rows = torch.where(counted, -mass, torch.zeros_like(mass))
    elif objective == "usefulness":
        probs = torch.softmax(seq_output @ item_table.T, dim=-1)
        direction = item_table[target.long()] - probs @ item_table
        u = torch.einsum("bh,bph->bp", direction, item_table[pool_target]) / usefulness_temperature
        log_q = torch.log_softmax(u.masked_fill(~valid & some, float("-inf")), dim=-1)
        each = torch.exp(log_q) * (log_q - log_r)
        rows = torch.where(valid, each, torch.zeros_like(each)).sum(-1)
        counted = valid.any(dim=-1)
        rows = torch.where(counted, rows, torch.zeros_like(rows))
    elif objective == "knn_likelihood":
        if pool_values is None:
            items, weights = pool_target[..., None], torch.ones(*pool_target.shape, 1, dtype=seq_output.dtype)
        else:
            items, weights = (torch.as_tensor(np.asarray(v)) for v in pool_values)
        vote = torch.where(items.long() == target.long()[:, None, None], weights.to(seq_output.dtype), 0.0).sum(-1)
        positive = valid & (vote > 0)
        counted = positive.any(dim=-1)
        weighted = log_r + torch.log(torch.where(positive, vote, torch.ones_like(vote)))
        mass = torch.logsumexp(weighted.masked_fill(~positive & counted[:, None], float("-inf")), dim=-1)
        rows = torch.where(counted, -mass, torch.zeros_like(mass))
    else:
        raise ValueError(f"unknown objective {objective!r}")
    w = mask * counted.to(mask.dtype)
    return (rows * w).sum() / w.sum().clamp(min=1.0), w.sum() / mask.sum().clamp(min=1.0)


class TorchFTragrec(TorchDuoRec):
    """A TorchDuoRec (frozen) plus `retriever_encoder`; host FAISS over keys g(h_j)/|g(h_j)| of training samples.

    Subclassing keeps DuoRec's state_dict keys at the top level, as a DuoRec checkpoint has them.
    """

    def __init__(
        self,
        n_items,
        *,
        top_k=5,
        retriever_layers=1,
        retriever_inner_size=256,
        retriever_temperature=0.07,
        quality_threshold=0.6,
        alpha=0.15,
        enhanced_rec_weight=0.5,
        kl_small_weight=0.03,
        faiss_index="Flat",
        nprobe=16,
        overfetch=32,
        **duorec_kwargs,
    ):
        super().__init__(n_items, **duorec_kwargs)
        hidden = self.item_embedding.weight.shape[1]
        self.retriever_encoder = TorchRetriever(hidden, retriever_inner_size, retriever_layers, self.initializer_range)
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("retriever_encoder."))
        self.top_k, self.faiss_index, self.nprobe, self.overfetch = top_k, faiss_index, nprobe, overfetch
        self.hp = dict(
            alpha=alpha,
            retriever_temperature=retriever_temperature,
            quality_threshold=quality_threshold,
            enhanced_rec_weight=enhanced_rec_weight,
            kl_small_weight=kl_small_weight,
        )
        self.kb_h = self.kb_target = self.kb_user = self.kb_prefix = None
        self.index = None

    def encode(self, item_seq, item_seq_len):
        """The frozen DuoRec representation, dropout off."""
        was = self.training
        self.eval()
        with torch.no_grad():
            out = self.forward(item_seq, item_seq_len)
        self.train(was)
        return out

    @torch.no_grad()
    def build_knowledge(self, item_seq, item_seq_len, target, user, prefix_len, batch_size=1024):
        outs = [
            self.encode(item_seq[i : i + batch_size], item_seq_len[i : i + batch_size])
            for i in range(0, len(item_seq), batch_size)
        ]
        self.kb_h = torch.cat(outs)
        self.kb_target, self.kb_user, self.kb_prefix = target, user.numpy(), prefix_len.numpy()
        self.refresh_index()

    @torch.no_grad()
    def refresh_index(self):
        import faiss

        keys = self.retriever_encoder.embed(self.kb_h).numpy().astype(np.float32)
        index = faiss.index_factory(keys.shape[1], self.faiss_index, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(keys)
        index.add(keys)
        try:
            faiss.extract_index_ivf(index).nprobe = self.nprobe
        except Exception:
            pass
        self.index = index

    @torch.no_grad()
    def search(self, seq_output, user, prefix_len):
        """ids [B, top_k] by the exclusion rule (same user with prefix_len >= own is never retrieved)."""
        q = self.retriever_encoder.embed(seq_output).numpy().astype(np.float32)
        user, prefix_len = np.asarray(user), np.asarray(prefix_len)
        out = np.full((len(q), self.top_k), -1, np.int64)
        fetch = min(self.top_k + self.overfetch, self.index.ntotal)
        _, cand = self.index.search(q, fetch)
        for r in range(len(q)):
            kept = [
                c for c in cand[r] if c >= 0 and not (self.kb_user[c] == user[r] and self.kb_prefix[c] >= prefix_len[r])
            ][: self.top_k]
            if len(kept) < self.top_k and fetch < self.index.ntotal:  # rare: exhaustive fallback for this row
                _, full = self.index.search(q[r : r + 1], self.index.ntotal)
                kept = [
                    c
                    for c in full[0]
                    if c >= 0 and not (self.kb_user[c] == user[r] and self.kb_prefix[c] >= prefix_len[r])
                ][: self.top_k]
            out[r, : len(kept)] = kept
        return torch.from_numpy(out)

    def calculate_loss(self, item_seq, item_seq_len, target, user, prefix_len, mask=None, ids=None):
        seq_output = self.encode(item_seq, item_seq_len)
        if ids is None:
            ids = self.search(seq_output, user, prefix_len)
        if mask is None:
            mask = torch.ones(len(target))
        total, terms, _ = ftragrec_terms(
            self.retriever_encoder,
            seq_output,
            ids,
            self.kb_h,
            self.kb_target,
            self.item_embedding.weight,
            target,
            mask,
            **self.hp,
        )
        return total, terms

    @torch.no_grad()
    def full_sort_predict(self, item_seq, item_seq_len, user, prefix_len):
        seq_output = self.encode(item_seq, item_seq_len)
        ids = self.search(seq_output, user, prefix_len)
        _, _, enhanced = ftragrec_terms(
            self.retriever_encoder,
            seq_output,
            ids,
            self.kb_h,
            self.kb_target,
            self.item_embedding.weight,
            torch.zeros(len(ids), dtype=torch.long),
            torch.ones(len(ids)),
            **self.hp,
        )
        return enhanced @ self.item_embedding.weight.T
