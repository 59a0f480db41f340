"""What a trained retriever changes in what it retrieves: for FTragrec model directories (kNN-LM, top_k 50,
exact search) on the same backbone, the share of queries with at least one of their neighbours pointing to
the query's own next item, the retrieval mass on such neighbours (p_knn of the target), and the kNN-LM
mixture's NLL of the target, on the valid queries and on 20,000 training queries (each with the exclusion rule:
no own or later sample of the user).

    python experiments/results/2026-12-05_retrieval_diagnostics.py NAME=MODEL_DIR [NAME=MODEL_DIR ...] > OUT.json
"""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ftragrec_jax.data.batches import iterate_batches
from ftragrec_jax.data.dataset import dataset_from_config
from ftragrec_jax.config import Config
from ftragrec_jax.model_dir import load_model
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder
from ftragrec_jax.models.ftragrec import FTragrecHParams, _query_side, build_ftragrec, ftragrec_terms, neighbours
from ftragrec_jax.models.knowledge_base import KnowledgeBase, kb_options
from ftragrec_jax.trees import assign_params

out = {}
dataset = None
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    meta, params, _ = load_model(path)
    hp = dataclasses.replace(FTragrecHParams.from_config(meta["ftragrec"]), retriever_objective="design")
    if dataset is None:
        dataset = dataset_from_config(Config(**meta["dataset"]))
        rng = np.random.default_rng(0)
        train_rows = np.sort(rng.choice(len(dataset.train), 20000, replace=False))
    model = build_ftragrec(build_encoder(EncoderConfig(**meta["encoder"]), seed=0), hp, seed=0)
    assign_params(model, params, path)
    kb = KnowledgeBase.build(model.encoder, model.retriever, dataset.train, **kb_options(hp))

    table = jnp.asarray(model.encoder.item_table())

    @jax.jit
    def stats(batch, memory):
        seq, query, ids = _query_side(model, batch, memory, hp, None, None)
        nb = neighbours(model.retriever, query, seq, ids, memory.h, memory.target, table, hp)
        hit = (memory.target[jnp.where(ids >= 0, ids, 0)] == batch["target"][:, None]) & nb["valid"]
        _, aux = ftragrec_terms(
            model.retriever,
            seq,
            ids,
            memory.h,
            memory.target,
            table,
            batch["target"],
            batch["mask"],
            hp,
        )
        m = batch["mask"]
        return {
            "target_among_neighbours": (hit.any(-1) * m).sum(),
            "p_knn_target": (jnp.where(hit, nb["p_ret"], 0.0).sum(-1) * m).sum(),
            "knn_lm_nll": aux["enhanced_rec_loss"] * m.sum(),
            "backbone_nll": aux["rec_loss"] * m.sum(),
            "n": m.sum(),
        }

    res = {}
    for split, samples in (("valid", dataset.valid), ("train_sample", dataset.train.take(train_rows))):
        tot = None
        for b in iterate_batches(samples, 512):
            batch = dict(b)
            if split == "train_sample":  # the row of the base these queries are (their cached h)
                batch["index"] = train_rows[b["index"]]
            s = {k: float(v) for k, v in stats(batch, kb.memory).items()}
            tot = s if tot is None else {k: tot[k] + s[k] for k in s}
        res[split] = {k: round(v / tot["n"], 5) for k, v in tot.items() if k != "n"} | {"queries": int(tot["n"])}
    out[name] = res
    print(name, res, file=sys.stderr, flush=True)
print(json.dumps(out, indent=1))
