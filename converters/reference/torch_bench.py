"""The PyTorch sides of `python -m experiments.bench`: what a PyTorch user of the reference models would run.

Kept here because converters/ is the only package that imports torch. Every callable returned blocks until
the device is done (`torch.cuda.synchronize` on GPU), so the harness reads its clock on an idle device.
Models are built from the same weights as the JAX side (through converters/mapping.py), so both sides do
the same work on the same numbers.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from converters.reference.torch_duorec import TorchDuoRec


def setup(device: str | None, threads: int) -> torch.device:
    """Pick the device (None: cuda when available) and the intra-op thread count used for timing."""
    torch.set_num_threads(int(threads))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device")
    return torch.device(device)


def environment() -> dict:
    """What the PyTorch side runs on: CUDA availability, the device and its default fp32 matmul settings."""
    rec = {"torch_cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        rec["torch_device"] = torch.cuda.get_device_name(0)
        rec["torch_tf32_matmul_default"] = torch.backends.cuda.matmul.allow_tf32
        rec["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return rec


def describe_device(dev: str = "cpu") -> str:
    """The PyTorch side's device as the benchmark tables name it."""
    if str(dev).startswith("cuda"):
        return f"cuda:0 {torch.cuda.get_device_name(0)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def set_float32_matmul_precision(precision: str) -> None:
    """'highest' (full fp32, PyTorch's default) or 'high' (TF32 allowed on GPUs)."""
    torch.set_float32_matmul_precision(precision)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def to_device(batch: dict, dev: torch.device) -> dict:
    """numpy batch -> tensors; ids as int64 as RecBole's dataloader gives them, floats as float32."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        out[k] = torch.as_tensor(v.astype(np.int64) if v.dtype.kind in "iu" else v.astype(np.float32), device=dev)
    return out


def _load(model: torch.nn.Module, state: dict) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}, strict=True)


def duorec_model(enc_cfg, state: dict, dev: torch.device, *, lmd_sem: float = 0.1, tau: float = 1.0) -> TorchDuoRec:
    model = TorchDuoRec.from_encoder_config(enc_cfg, lmd_sem=lmd_sem, tau=tau)
    _load(model, state)
    return model.to(dev)


def duorec_step(model: TorchDuoRec, batches: list[dict], dev: torch.device, *, lr: float = 1e-3, compile: bool = False):
    """One DuoRec us_x step per call (3 forward passes, CE + InfoNCE, backward, Adam), cycling over batches.

    compile=True wraps the loss in torch.compile (forward and backward are compiled by AOTAutograd); the
    first call then pays the compilation, which the harness reports as compile time.
    """
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.compile(model.calculate_loss) if compile else model.calculate_loss
    feed = itertools.cycle([to_device(b, dev) for b in batches])

    def step():
        b = next(feed)
        loss, _ = loss_fn(b["item_seq"], b["item_seq_len"], b["target"], b["sem_aug"], b["sem_aug_lengths"], b["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(dev)
        return loss

    return step


def ftragrec_model(enc_cfg, state: dict, dev: torch.device, **hp):
    from converters.reference.torch_ftragrec import TorchFTragrec

    kw = {
        k: getattr(enc_cfg, k)
        for k in (
            "max_seq_length",
            "hidden_size",
            "n_layers",
            "n_heads",
            "inner_size",
            "hidden_dropout_prob",
            "attn_dropout_prob",
            "initializer_range",
        )
    }
    model = TorchFTragrec(enc_cfg.n_items, **kw, **hp)
    _load(model, state)
    return model.to(dev)


def build_knowledge(model, samples: dict, dev: torch.device, *, batch_size: int = 2048):
    """Encode every training sample with the frozen encoder, compute the keys and build the FAISS index."""
    t = to_device({k: samples[k] for k in ("item_seq", "item_seq_len", "target", "user", "prefix_len")}, dev)

    def build():
        model.build_knowledge(
            t["item_seq"], t["item_seq_len"], t["target"], t["user"].cpu(), t["prefix_len"].cpu(), batch_size=batch_size
        )
        sync(dev)

    return build


def ftragrec_trainer(model, dev: torch.device, *, lr: float = 1e-3):
    """A step function over one batch dict of tensors: frozen encoder forward, host FAISS search, loss,
    backward, Adam on the retriever (the only parameters with requires_grad)."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(b):
        loss, _ = model.calculate_loss(
            b["item_seq"], b["item_seq_len"], b["target"], b["user"], b["prefix_len"], mask=b["mask"]
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def ftragrec_step(model, batches: list[dict], dev: torch.device, *, lr: float = 1e-3):
    """One FTragrec fine-tuning step per call, cycling over pre-loaded batches."""
    train = ftragrec_trainer(model, dev, lr=lr)
    feed = itertools.cycle([to_device(b, dev) for b in batches])

    def step():
        loss = train(next(feed))
        sync(dev)
        return loss

    return step


def ftragrec_epoch(model, batch_iter, dev: torch.device, *, lr: float = 1e-3):
    """One full epoch per call: every batch of `batch_iter()` (numpy dicts) copied to the device and trained."""
    train = ftragrec_trainer(model, dev, lr=lr)

    def epoch():
        n = 0
        for b in batch_iter():
            train(to_device(b, dev))
            n += 1
        sync(dev)
        return n

    return epoch


def full_sort_eval(model, samples: dict, dev: torch.device, *, ks=(5, 10, 20, 50), batch_size: int = 1024):
    """Full-sort evaluation as RecBole does it in torch: scores over all items (padding column -inf), top-K,
    hit/MRR/NDCG of the single target, averaged over users. Returns a callable giving {name@k: value}."""
    n = len(samples["target"])
    chunks = [
        to_device({k: samples[k][s : s + batch_size] for k in ("item_seq", "item_seq_len", "target")}, dev)
        for s in range(0, n, batch_size)
    ]
    max_k = max(ks)

    @torch.no_grad()
    def evaluate():
        model.eval()
        sums = {
            f"{m}@{k}": torch.zeros((), dtype=torch.float64, device=dev) for m in ("hit", "mrr", "ndcg") for k in ks
        }
        for c in chunks:
            scores = model.full_sort_predict(c["item_seq"], c["item_seq_len"])
            scores[:, 0] = -torch.inf
            top = torch.topk(scores, min(max_k, scores.shape[1]), dim=1).indices
            found = top == c["target"][:, None]
            pos = torch.where(
                found.any(1), found.float().argmax(1) + 1, torch.full_like(c["target"], max_k + 1)
            ).double()
            for k in ks:
                hit = (pos <= k).double()
                sums[f"hit@{k}"] += hit.sum()
                sums[f"mrr@{k}"] += (hit / pos).sum()
                sums[f"ndcg@{k}"] += (hit / torch.log2(pos + 1)).sum()
        sync(dev)
        return {k: float(v) / n for k, v in sums.items()}

    return evaluate
