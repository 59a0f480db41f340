"""PyTorch reference DuoRec (RecBole 0.2 numerics), the yardstick for parity tests and benchmarks.

Written from DuoRec's description and RecBole 0.2's layer semantics; the module tree is laid out so
that `state_dict()` has exactly DuoRec's keys and shapes, hence a DuoRec checkpoint's state_dict loads
with `load_state_dict(strict=True)` once the extra modules of DuoRec-family models are dropped.

Objective (DuoRec `contrast: us_x`, `loss_type: CE`, `sim: dot`):
    CE(full-sort logits of pass 1, target)
    + lmd_sem * InfoNCE(pass 2 = the same sequences with fresh dropout, pass 3 = same-target sequences)
InfoNCE over the 2B rows z = [aug; sem]: row a's positive is its partner a +/- B, its negatives are
every other row except itself and its partner (DuoRec's mask_correlated_samples), mean CE.

`mask` (float/bool [B], 1 = real row) supports a padded last batch: padded rows drop out of CE and
out of InfoNCE as anchors, positives and negatives, so the loss equals the unpadded smaller batch's.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

MASK_VALUE = -10000.0


class MultiHeadAttention(nn.Module):
    def __init__(self, n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)

    def _split(self, x):
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x, additive_mask):
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + additive_mask
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(x.shape[0], x.shape[1], -1)
        return self.LayerNorm(self.out_dropout(self.dense(ctx)) + x)


class FeedForward(nn.Module):
    def __init__(self, hidden_size, inner_size, hidden_dropout_prob, layer_norm_eps):
        super().__init__()
        self.dense_1 = nn.Linear(hidden_size, inner_size)
        self.dense_2 = nn.Linear(inner_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)

    def forward(self, x):
        h = self.dense_1(x)
        h = h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))  # RecBole's erf GELU
        return self.LayerNorm(self.dropout(self.dense_2(h)) + x)


class TransformerLayer(nn.Module):
    def __init__(self, n_heads, hidden_size, inner_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps):
        super().__init__()
        self.multi_head_attention = MultiHeadAttention(
            n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps
        )
        self.feed_forward = FeedForward(hidden_size, inner_size, hidden_dropout_prob, layer_norm_eps)

    def forward(self, x, additive_mask):
        return self.feed_forward(self.multi_head_attention(x, additive_mask))


class TransformerEncoder(nn.Module):
    def __init__(self, n_layers, **layer_kwargs):
        super().__init__()
        self.layer = nn.ModuleList([TransformerLayer(**layer_kwargs) for _ in range(n_layers)])

    def forward(self, x, additive_mask):
        for layer in self.layer:
            x = layer(x, additive_mask)
        return x


class TorchDuoRec(nn.Module):
    def __init__(
        self,
        n_items: int,
        max_seq_length: int = 50,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int = 256,
        hidden_dropout_prob: float = 0.5,
        attn_dropout_prob: float = 0.5,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        lmd_sem: float = 0.1,
        tau: float = 1.0,
    ):
        super().__init__()
        self.n_items = n_items
        self.max_seq_length = max_seq_length
        self.initializer_range = initializer_range
        self.lmd_sem = lmd_sem
        self.tau = tau
        # padding_idx=0 as DuoRec: row 0 gets no gradient from lookups (only from the CE logits),
        # and the normal init below overwrites its zeros, so row 0 is a real row.
        self.item_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_length, hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers,
            n_heads=n_heads,
            hidden_size=hidden_size,
            inner_size=inner_size,
            hidden_dropout_prob=hidden_dropout_prob,
            attn_dropout_prob=attn_dropout_prob,
            layer_norm_eps=layer_norm_eps,
        )
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.apply(self._init_weights)

    @classmethod
    def from_encoder_config(cls, cfg, **loss_kwargs) -> "TorchDuoRec":
        """Same architecture as an `ftragrec_jax.models.encoder.EncoderConfig`."""
        return cls(
            n_items=cfg.n_items,
            max_seq_length=cfg.max_seq_length,
            hidden_size=cfg.hidden_size,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            inner_size=cfg.inner_size,
            hidden_dropout_prob=cfg.hidden_dropout_prob,
            attn_dropout_prob=cfg.attn_dropout_prob,
            initializer_range=cfg.initializer_range,
            **loss_kwargs,
        )

    def _init_weights(self, module):
        # RecBole: N(0, initializer_range) for Linear/Embedding weights (padding row too),
        # zero biases, LayerNorm (1, 0).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    @staticmethod
    def attention_mask(item_seq):
        """[B, 1, L, L] additive: 0 where key j <= query i and item_seq[j] != 0, else -10000."""
        length = item_seq.shape[1]
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=item_seq.device))
        allowed = (item_seq > 0)[:, None, None, :] & causal[None, None]
        return (1.0 - allowed.float()) * MASK_VALUE

    def forward(self, item_seq, item_seq_len):
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        x = self.item_embedding(item_seq) + self.position_embedding(positions)[None]
        x = self.dropout(self.LayerNorm(x))
        x = self.trm_encoder(x, self.attention_mask(item_seq))
        idx = (item_seq_len.long() - 1).view(-1, 1, 1).expand(-1, 1, x.shape[-1])
        return x.gather(1, idx).squeeze(1)

    def full_sort_predict(self, item_seq, item_seq_len):
        return self.forward(item_seq, item_seq_len) @ self.item_embedding.weight.T

    def calculate_loss(self, item_seq, item_seq_len, target, sem_aug=None, sem_aug_lengths=None, mask=None):
        """DuoRec us_x loss; returns (loss, {"ce": ..., "sem_nce": ...}).

        Three forward passes in DuoRec's order (CE pass, second dropout pass, same-target pass), so
        with dropout on the RNG stream is consumed as DuoRec consumes it. `lmd_sem == 0` skips the
        contrastive passes (plain SASRec CE).
        """
        seq_output = self.forward(item_seq, item_seq_len)
        logits = seq_output @ self.item_embedding.weight.T
        if mask is None:
            ce = F.cross_entropy(logits, target.long())
        else:
            w = mask.to(logits.dtype)
            ce = (F.cross_entropy(logits, target.long(), reduction="none") * w).sum() / w.sum()
        terms = {"ce": ce}
        loss = ce
        if self.lmd_sem != 0:
            aug_output = self.forward(item_seq, item_seq_len)
            sem_output = self.forward(sem_aug, sem_aug_lengths)
            nce = info_nce(aug_output, sem_output, self.tau, mask)
            terms["sem_nce"] = nce
            loss = loss + self.lmd_sem * nce
        return loss, terms


def correlated_mask(batch_size: int):
    """DuoRec's negative mask over 2B rows: False on the diagonal and on the (a, a +/- B) pairs."""
    n = 2 * batch_size
    keep = ~torch.eye(n, dtype=torch.bool)
    idx = torch.arange(batch_size)
    keep[idx, idx + batch_size] = False
    keep[idx + batch_size, idx] = False
    return keep


def info_nce(z_i, z_j, tau, mask=None):
    """InfoNCE with dot similarity. Without `mask`: DuoRec's construction (logits = [positive,
    negatives selected by correlated_mask], label 0, mean CE). With `mask`: the same loss restricted
    to the valid rows, computed with a -inf fill so shapes stay fixed."""
    b = z_i.shape[0]
    n = 2 * b
    z = torch.cat([z_i, z_j], dim=0)
    sim = z @ z.T / tau
    positives = torch.cat([torch.diag(sim, b), torch.diag(sim, -b)]).view(n, 1)
    if mask is None:
        negatives = sim[correlated_mask(b).to(sim.device)].view(n, -1)
        logits = torch.cat([positives, negatives], dim=1)
        labels = torch.zeros(n, dtype=torch.long, device=sim.device)
        return F.cross_entropy(logits, labels)
    valid = torch.cat([mask, mask]).to(torch.bool)
    partner = torch.cat([torch.arange(b, n), torch.arange(0, b)]).to(sim.device)
    is_partner = torch.zeros(n, n, dtype=torch.bool, device=sim.device)
    is_partner[torch.arange(n), partner] = True
    # every row keeps its own positive so padded anchor rows stay finite; they are weighted out below
    allowed = (valid[None, :] | is_partner) & ~torch.eye(n, dtype=torch.bool, device=sim.device)
    lse = torch.logsumexp(sim.masked_fill(~allowed, float("-inf")), dim=1)
    per_row = lse - positives[:, 0]
    w = valid.to(sim.dtype)
    return (per_row * w).sum() / w.sum()
