"""Regenerate reference.json: digests of what RecBole 0.2.1 (vendored in RuihongQiu/DuoRec) builds.

Not run by the tests, and it needs things the project does not ship. How reference.json was made:

1. a scratch folder outside the project holding DuoRec's `recbole/` and `seq.yaml`, and a venv with pandas,
   torch and scikit-learn; old numpy aliases restored before importing recbole
   (np.float = np.float64, np.bool = np.bool_, np.int = np.int_);
2. for each case: `Config(model="DuoRec", dataset=NAME, config_file_list=["seq.yaml"], config_dict={
   "data_path": ..., "SSL_AUG": "none", **CASES[NAME]})`, `create_dataset(config)`,
   `dataset.build(EvalSetting(config))`, then dump field2id_token and for each split uid_list,
   item_id[target_index], item_list_length and the item_list_index slices (see `dump`);
3. `python make_reference.py DUMP_DIR` turns the dumps into the digests below.

"ml-100k" is the shared ML-100K file under its own name (RecBole then min-max normalises timestamps);
"ml100kraw" the same file under another name (no normalisation); "Beauty" is amazon/Beauty.txt written as
an atomic file with the position in the line as timestamp. SSL_AUG is off because DuoRec's
semantic_augmentation fails on current numpy and does not change the split.

eval_case.npz / eval_case.json: 300 rows of float32 scores over 120 items (numpy default_rng(7) normal, the
targets' scores shifted up by 0, 1.5 or 3 so ranks spread; no target ties) and what RecBole 0.2.1's
TopKEvaluator returns for them with topk [1, 5, 10, 20, 50, 100], metric_decimal_place 4 and 15, in chunks of
64 rows after its trainer's full-sort step (score[:, 0] = -inf, target score swapped into column 0).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

CASES = {
    "small0": {"min_user_inter_num": 2, "min_item_inter_num": 2, "MAX_ITEM_LIST_LENGTH": 3},
    "small2": {"min_user_inter_num": 0, "min_item_inter_num": 0, "MAX_ITEM_LIST_LENGTH": 2},
    "small4": {"min_user_inter_num": 1, "min_item_inter_num": 2, "MAX_ITEM_LIST_LENGTH": 1},
    "small5": {"min_user_inter_num": 2, "min_item_inter_num": 4, "MAX_ITEM_LIST_LENGTH": 4},
    "ml-100k": {"min_user_inter_num": 5, "min_item_inter_num": 5, "MAX_ITEM_LIST_LENGTH": 50},
    "ml100kraw": {"min_user_inter_num": 5, "min_item_inter_num": 5, "MAX_ITEM_LIST_LENGTH": 50},
    "Beauty": {"min_user_inter_num": 5, "min_item_inter_num": 5, "MAX_ITEM_LIST_LENGTH": 50},
}


def digest(item_tokens, user_tokens, splits: dict, max_len: int) -> dict:
    """sha256 per part; splits[name] = (user, target, seq_len, item_seq[:, :max_len])."""
    out = {
        "items": _h("\n".join(map(str, item_tokens)).encode()),
        "users": _h("\n".join(map(str, user_tokens)).encode()),
        "sizes": {},
    }
    for name, (user, target, seq_len, seq) in splits.items():
        seq = np.asarray(seq)[:, :max_len]
        parts = [np.asarray(a, dtype="<i8").tobytes() for a in (user, target, seq_len, seq)]
        out[name] = _h(b"".join(parts))
        out["sizes"][name] = int(len(user))
    return out


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def dump(dataset_splits, field2id_token) -> dict:
    """Run inside the RecBole venv: arrays from DuoRec's train/valid/test datasets."""
    res = {
        "item_tokens": np.array(field2id_token["item_id"], dtype=str),
        "user_tokens": np.array(field2id_token["user_id"], dtype=str),
    }
    for name, d in zip(("train", "valid", "test"), dataset_splits):
        items = d.inter_feat["item_id"].numpy()
        seqs = np.zeros((len(d.uid_list), 50), dtype=np.int64)
        for r, sl in enumerate(d.item_list_index):
            v = items[sl]
            seqs[r, : len(v)] = v
        res.update(
            {
                f"{name}_user": d.uid_list,
                f"{name}_target": items[d.target_index],
                f"{name}_len": d.item_list_length,
                f"{name}_seq": seqs,
            }
        )
    return res


def main(dump_dir: str) -> None:
    ref = {}
    for name, case in CASES.items():
        z = np.load(Path(dump_dir) / f"{name}_ref.npz")
        splits = {
            s: (z[f"{s}_user"], z[f"{s}_target"], z[f"{s}_len"], z[f"{s}_seq"]) for s in ("train", "valid", "test")
        }
        ref[name] = {
            "settings": case,
            **digest(z["item_tokens"], z["user_tokens"], splits, case["MAX_ITEM_LIST_LENGTH"]),
        }
    path = Path(__file__).with_name("reference.json")
    path.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1])
