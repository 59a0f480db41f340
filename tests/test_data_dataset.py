"""RecBole 0.2.1 preprocessing: k-core, id order, time order, prefix samples, leave-one-out split."""

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ftragrec_jax.data.batches import epoch_permutation, iterate_batches, num_batches
from ftragrec_jax.data.dataset import (
    default_dataset_path,
    kcore_filter,
    load_dataset,
    min_count_interval,
    parse_intervals,
)
from ftragrec_jax.data.readers import Interactions
from ftragrec_jax.errors import DataError

REF_DIR = Path(__file__).parent / "data" / "recbole021"
HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def atomic(tmp_path, rows, name="d.inter"):
    p = tmp_path / name
    p.write_text(HEADER + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    return p


def rows_of(s, i):
    return s.item_seq[i, : s.item_seq_len[i]].tolist(), int(s.target[i]), int(s.user[i]), int(s.prefix_len[i])


def test_split_and_prefix_samples_on_hand_made_file(tmp_path):
    rows = [  # file order decides ids; timestamps decide the sequence order
        ("A", "x", 5),
        ("B", "y", 1),
        ("A", "y", 1),
        ("A", "z", 2),
        ("C", "x", 3),
        ("A", "x", 3),
        ("A", "w", 4),
        ("A", "v", 6),
        ("B", "z", 2),
        ("B", "x", 3),
        ("C", "y", 9),
        ("D", "z", 1),
        ("A", "u", 4),  # ties with ("A","w",4): file order kept
    ]
    ds = load_dataset(atomic(tmp_path, rows), min_user_inter_num=0, min_item_inter_num=0, max_seq_length=3)
    assert ds.vocab.user_tokens == ("[PAD]", "A", "B", "C", "D")
    assert ds.vocab.item_tokens == ("[PAD]", "x", "y", "z", "w", "v", "u")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (4, 7, 13)
    x, y, z, w, v, u = 1, 2, 3, 4, 5, 6
    # A: y z x w u x v (7 items -> 6 samples: 4 train, 1 valid, 1 test), prefix truncated to the last 3
    assert [rows_of(ds.train, i) for i in range(4)] == [
        ([y], z, 1, 1),
        ([y, z], x, 1, 2),
        ([y, z, x], w, 1, 3),
        ([z, x, w], u, 1, 4),
    ]
    assert rows_of(ds.valid, 0) == ([x, w, u], x, 1, 5)
    assert rows_of(ds.test, 0) == ([w, u, x], v, 1, 6)
    # B: y z x (2 samples -> RecBole: 1 train, NO valid, 1 test); C: x y (1 sample -> train only); D: none
    assert rows_of(ds.train, 4) == ([y], z, 2, 1)
    assert rows_of(ds.test, 1) == ([y, z], x, 2, 2)
    assert rows_of(ds.train, 5) == ([x], y, 3, 1)
    assert len(ds.train) == 6 and len(ds.valid) == 1 and len(ds.test) == 2
    assert ds.train.item_seq.shape == (6, 3) and ds.train.item_seq.dtype == np.int32
    assert not ds.train.item_seq[0, 1:].any()  # right padding with 0
    # history: every user's items, chronological, by user id
    h = ds.history
    assert h.items[h.indptr[1] : h.indptr[2]].tolist() == [y, z, x, w, u, x, v]
    assert h.prefix_matrix(ds.test.user, ds.test.prefix_len, 8).tolist() == [
        [y, z, x, w, u, x, 0, 0],
        [y, z, 0, 0, 0, 0, 0, 0],
    ]


def test_float32_time_ties_keep_file_order(tmp_path):
    # 881250949 and 881250950 are the same float32: RecBole sorts torch.FloatTensor timestamps
    rows = [("u", "a", 881250950), ("u", "b", 881250949), ("u", "c", 881250900), ("u", "d", 881251100)]
    ds = load_dataset(atomic(tmp_path, rows), min_user_inter_num=0, min_item_inter_num=0)
    assert ds.history.items.tolist() == [3, 1, 2, 4]  # c (earlier by > 64 s), then a, b in file order, then d


def test_normalize_time_moves_float32_ties_and_a_file_name_decides_nothing(tmp_path):
    """RecBole normalises timestamps when its config says so (normalize_all; its bundled settings say so for a
    dataset named ml-100k). Here it is the normalize_time setting: the file's name never decides."""
    rows = [("u", "a", 881250950), ("u", "b", 881250949), ("u", "c", 881250000), ("u", "d", 881251100)]
    plain = load_dataset(atomic(tmp_path, rows), min_user_inter_num=0, min_item_inter_num=0)
    named = load_dataset(atomic(tmp_path, rows, "ml-100k.inter"), min_user_inter_num=0, min_item_inter_num=0)
    scaled = load_dataset(atomic(tmp_path, rows), min_user_inter_num=0, min_item_inter_num=0, normalize_time=True)
    assert plain.settings["normalize_time"] is False and named.settings["normalize_time"] is False
    assert plain.settings["format"] == "atomic"
    assert plain.history.items.tolist() == named.history.items.tolist() == [3, 1, 2, 4]
    assert scaled.history.items.tolist() == [3, 2, 1, 4]  # after min-max scaling b < a survives float32


def recbole_kcore_reference(users, items, user_ok, item_ok):
    """Straight transcription of the algorithm's definition with Counters (slow, obviously right);
    user_ok(count) / item_ok(count) say whether a count is allowed."""
    alive = list(range(len(users)))
    while True:
        cu = Counter(users[k] for k in alive)
        ci = Counter(items[k] for k in alive)
        ban_u = {x for x, c in cu.items() if not user_ok(c)}
        ban_i = {x for x, c in ci.items() if not item_ok(c)}
        if not ban_u and not ban_i:
            return alive
        alive = [k for k in alive if users[k] not in ban_u and items[k] not in ban_i]


@pytest.mark.parametrize("seed", range(6))
def test_kcore_matches_reference_definition(seed):
    """RecBole 0.2's min counts (`min_num or -1`) and 1.x's intervals, lower and upper bounds, open and closed."""
    rng = np.random.default_rng(seed)
    n = 400
    users = rng.integers(0, 60, n).astype(str)
    items = (rng.zipf(1.4, n) % 50).astype(str)
    min_u, min_i = int(rng.integers(0, 6)), int(rng.integers(0, 6))
    inter = Interactions("r", users, items, np.zeros(n), np.arange(n))
    kept = kcore_filter(
        inter, parse_intervals(min_count_interval(min_u), "u"), parse_intervals(min_count_interval(min_i), "i")
    )
    assert np.flatnonzero(kept).tolist() == recbole_kcore_reference(
        users, items, lambda c: c >= (min_u or -1), lambda c: c >= (min_i or -1)
    )
    lo, hi = int(rng.integers(0, 4)), int(rng.integers(8, 20))
    user_text, item_text = f"({lo},{hi}]", f"[{min_i},{hi});[30,inf)"
    kept = kcore_filter(inter, parse_intervals(user_text, "u"), parse_intervals(item_text, "i"))
    assert np.flatnonzero(kept).tolist() == recbole_kcore_reference(
        users, items, lambda c: lo < c <= hi, lambda c: min_i <= c < hi or c >= 30
    )


def test_interval_settings_replace_min_counts_and_bad_intervals_name_the_key(tmp_path):
    rows = [("A", "x", 1), ("A", "y", 2), ("A", "z", 3), ("B", "x", 1), ("B", "y", 2), ("C", "x", 5)]
    path = atomic(tmp_path, rows)
    capped = load_dataset(path, user_inter_num_interval="[2,2]", item_inter_num_interval="(0,inf)", max_seq_length=3)
    assert capped.vocab.user_tokens == ("[PAD]", "B")  # A has 3, C has 1: outside [2,2]; the 5-core is replaced
    assert capped.settings["user_inter_num_interval"] == "[2,2]"
    assert capped.settings["item_inter_num_interval"] == "(0,inf)"
    default = load_dataset(path, min_user_inter_num=2, min_item_inter_num=0)
    assert default.settings["user_inter_num_interval"] == "" and default.settings["min_user_inter_num"] == 2
    for bad in ("5,inf", "[5;inf)", "[a,b]", "[9,2]", "[1,2,3]"):
        with pytest.raises(DataError, match=r"user_inter_num_interval=.*is not an interval"):
            load_dataset(path, user_inter_num_interval=bad)


def test_rm_dup_inter_sorts_by_time_then_keeps_first_or_last(tmp_path):
    # RecBole: sort the table by time, drop repeated (user, item) pairs keeping the first or last, and assign ids
    # in that sorted order
    rows = [("u", "b", 5), ("u", "a", 2), ("v", "a", 1), ("u", "a", 9), ("u", "c", 7), ("v", "c", 3)]
    path = atomic(tmp_path, rows)
    first = load_dataset(path, min_user_inter_num=0, min_item_inter_num=0, rm_dup_inter="first")
    last = load_dataset(path, min_user_inter_num=0, min_item_inter_num=0, rm_dup_inter="last")
    kept = load_dataset(path, min_user_inter_num=0, min_item_inter_num=0)
    assert first.vocab.item_tokens == ("[PAD]", "a", "c", "b") and first.vocab.user_tokens == ("[PAD]", "v", "u")
    assert [first.vocab.item_tokens[i] for i in first.history.items] == ["a", "c", "a", "b", "c"]
    assert [last.vocab.item_tokens[i] for i in last.history.items] == ["a", "c", "b", "c", "a"]
    assert kept.n_interactions == 6 and first.n_interactions == last.n_interactions == 5
    assert first.settings["rm_dup_inter"] == "first"


def test_rm_dup_inter_with_tied_timestamps_is_refused(tmp_path):
    """RecBole sorts with pandas' unstable quicksort before dropping duplicates: with ties its result is not
    reproducible, so refuse rather than guess."""
    path = atomic(tmp_path, [("u", "a", 1), ("u", "b", 1), ("u", "a", 2)])
    with pytest.raises(DataError, match=r"rm_dup_inter='first' with 1 interaction\(s\) sharing a timestamp"):
        load_dataset(path, min_user_inter_num=0, min_item_inter_num=0, rm_dup_inter="first")


def test_other_field_names(tmp_path):
    path = tmp_path / "renamed.inter"
    path.write_text("session:token\tts:float\tsku:token\nu\t1\ta\nu\t2\tb\nu\t3\tc\n")
    ds = load_dataset(path, min_user_inter_num=0, min_item_inter_num=0, fields=("session", "sku", "ts"))
    assert ds.vocab.item_tokens == ("[PAD]", "a", "b", "c") and ds.settings["fields"] == ["session", "sku", "ts"]
    with pytest.raises(DataError, match=r"missing required column\(s\) user_id:token"):
        load_dataset(path, min_user_inter_num=0, min_item_inter_num=0)


def test_kcore_cascade_and_log(tmp_path, caplog):
    # item q has 1 interaction -> dropped; then user B has 1 left -> dropped; then item p falls to 1 -> dropped
    rows = [("A", "x", 1), ("A", "y", 2), ("B", "q", 1), ("B", "p", 2), ("C", "x", 1), ("C", "y", 2), ("A", "p", 3)]
    with caplog.at_level(logging.INFO, logger="ftragrec_jax"):
        ds = load_dataset(atomic(tmp_path, rows), min_user_inter_num=2, min_item_inter_num=2)
    assert ds.vocab.user_tokens == ("[PAD]", "A", "C") and ds.vocab.item_tokens == ("[PAD]", "x", "y")
    assert "dropped 3 of 7 interactions (1 users, 2 items) in 3 rounds" in caplog.text


def test_duplicates_are_kept(tmp_path):
    rows = [("u", "a", 1), ("u", "a", 1), ("u", "b", 2), ("u", "a", 3)]
    ds = load_dataset(atomic(tmp_path, rows), min_user_inter_num=0, min_item_inter_num=0)
    assert ds.n_interactions == 4 and ds.history.items.tolist() == [1, 1, 2, 1]
    assert rows_of(ds.test, 0) == ([1, 1, 2], 1, 1, 3)


def test_edge_cases_single_user_single_item_and_valid_only_items(tmp_path):
    one_item = load_dataset(
        atomic(tmp_path, [("u", "a", t) for t in range(4)]), min_user_inter_num=0, min_item_inter_num=0
    )
    assert one_item.n_items == 2 and one_item.n_users == 1
    assert (len(one_item.train), len(one_item.valid), len(one_item.test)) == (1, 1, 1)
    # item "z" only ever appears as a test target: it still gets an id, never a training target
    ds = load_dataset(
        atomic(tmp_path, [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "z", 4)]),
        min_user_inter_num=0,
        min_item_inter_num=0,
    )
    assert ds.vocab.item_tokens[-1] == "z" and ds.test.target.tolist() == [4] and 4 not in ds.train.target
    # users with a single interaction give no sample at all
    ds = load_dataset(atomic(tmp_path, [("u", "a", 1), ("v", "a", 1)]), min_user_inter_num=0, min_item_inter_num=0)
    assert len(ds.train) == len(ds.valid) == len(ds.test) == 0 and ds.n_users == 2


def test_empty_after_filtering_is_a_clear_error(tmp_path):
    p = atomic(tmp_path, [("u", "a", 1), ("u", "b", 2)])
    with pytest.raises(DataError, match=r"d\.inter: empty after k-core filtering \(min_user_inter_num=5"):
        load_dataset(p)
    with pytest.raises(DataError, match=r"d\.inter: no interactions"):
        load_dataset(atomic(tmp_path, []))
    with pytest.raises(DataError, match="max_seq_length"):
        load_dataset(p, max_seq_length=0)


def digest_of(ds, max_len):
    h = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    out = {
        "items": h("\n".join(ds.vocab.item_tokens).encode()),
        "users": h("\n".join(ds.vocab.user_tokens).encode()),
        "sizes": {},
    }
    for name in ("train", "valid", "test"):
        s = getattr(ds, name)
        parts = [np.asarray(a, "<i8").tobytes() for a in (s.user, s.target, s.item_seq_len, s.item_seq[:, :max_len])]
        out[name] = h(b"".join(parts))
        out["sizes"][name] = len(s)
    return out


REFERENCE = json.loads((REF_DIR / "reference.json").read_text())


@pytest.mark.parametrize("case", ["small0", "small2", "small4", "small5"])
def test_same_samples_as_recbole_on_edge_case_files(case):
    """RecBole 0.2.1's own output (see tests/data/recbole021/make_reference.py) on files with heavy
    timestamp ties, duplicates, short users, cascading k-core and short max lengths."""
    ref = REFERENCE[case]
    st = ref["settings"]
    ds = load_dataset(
        REF_DIR / f"{case}.inter",
        min_user_inter_num=st["min_user_inter_num"],
        min_item_inter_num=st["min_item_inter_num"],
        max_seq_length=st["MAX_ITEM_LIST_LENGTH"],
    )
    got = digest_of(ds, st["MAX_ITEM_LIST_LENGTH"])
    assert got == {k: ref[k] for k in got}


def test_ml100k_statistics_and_recbole_samples(shared_dir):
    path = shared_dir / "data" / "ml-100k" / "ml-100k.inter"
    ds = load_dataset(path, normalize_time=True)  # RecBole's ml-100k settings: normalize_all
    assert (ds.n_users, ds.n_items - 1, ds.n_interactions) == (943, 1349, 99287)
    assert ds.n_items == 1350  # RecBole's count, padding included
    assert digest_of(ds, 50) == {k: REFERENCE["ml-100k"][k] for k in digest_of(ds, 50)}
    # without normalisation (RecBole's defaults for any other dataset name): other float32 ties, other samples
    raw = load_dataset(path)
    assert digest_of(raw, 50) == {k: REFERENCE["ml100kraw"][k] for k in digest_of(raw, 50)}
    assert REFERENCE["ml100kraw"]["test"] != REFERENCE["ml-100k"]["test"]


def test_beauty_statistics_speed_and_recbole_samples(shared_dir):
    t0 = time.perf_counter()
    ds = load_dataset(shared_dir / "data" / "amazon" / "Beauty.txt")
    elapsed = time.perf_counter() - t0
    assert (ds.n_users, ds.n_items - 1, ds.n_interactions) == (22363, 12101, 198502)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (198502 - 3 * 22363, 22363, 22363)
    assert digest_of(ds, 50) == {k: REFERENCE["Beauty"][k] for k in digest_of(ds, 50)}
    assert elapsed < 10, f"loading Beauty took {elapsed:.1f} s"
    # truncation: the longest prefixes are cut to the last 50 items, prefix_len stays untruncated
    long = np.flatnonzero(ds.train.prefix_len > 50)
    assert len(long) and (ds.train.item_seq_len[long] == 50).all()
    i = long[0]
    u = ds.train.user[i]
    hist = ds.history.items[ds.history.indptr[u] : ds.history.indptr[u + 1]]
    p = ds.train.prefix_len[i]
    assert ds.train.item_seq[i].tolist() == hist[p - 50 : p].tolist() and ds.train.target[i] == hist[p]


def test_embedded_default_is_beauty(shared_dir):
    ds = load_dataset(default_dataset_path())
    assert ds.name == "Beauty"
    assert digest_of(ds, 50) == {k: REFERENCE["Beauty"][k] for k in digest_of(ds, 50)}


def test_batches_static_shapes_padding_and_shuffle(tmp_path):
    rows = [(f"u{k % 3}", f"i{k % 4}", k) for k in range(20)]
    ds = load_dataset(atomic(tmp_path, rows), min_user_inter_num=0, min_item_inter_num=0, max_seq_length=4)
    s = ds.train
    n = len(s)
    assert n == 11 and num_batches(n, 4) == 3 and num_batches(n, 4, drop_last=True) == 2
    batches = list(iterate_batches(s, 4))
    assert [b["item_seq"].shape for b in batches] == [(4, 4)] * 3
    last = batches[-1]
    assert last["mask"].tolist() == [1, 1, 1, 0] and last["index"].tolist() == [8, 9, 10, 8]
    assert (last["item_seq"][3] == last["item_seq"][0]).all() and last["mask"].dtype == np.float32
    assert np.concatenate([b["index"][b["mask"] > 0] for b in batches]).tolist() == list(range(n))
    assert set(batches[0]) == {"item_seq", "item_seq_len", "target", "user", "prefix_len", "index", "mask"}
    # shuffled: a permutation, reproducible from (seed, epoch), different across epochs
    a = [b["index"].tolist() for b in iterate_batches(s, 4, seed=3, epoch=1)]
    b = [b["index"].tolist() for b in iterate_batches(s, 4, seed=3, epoch=1)]
    c = [b["index"].tolist() for b in iterate_batches(s, 4, seed=3, epoch=2)]
    assert a == b and a != c
    assert sorted(np.concatenate([np.asarray(x)[: 4 if k < 2 else 3] for k, x in enumerate(a)])) == list(range(n))
    assert len(list(iterate_batches(s, 4, drop_last=True))) == 2
    assert epoch_permutation(5, 0, 0).tolist() == epoch_permutation(5, 0, 0).tolist()
    assert len(list(iterate_batches(s.take(np.arange(0)), 4))) == 0
