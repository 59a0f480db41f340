"""Fuzz the dataset readers: any bytes end in a dataset or a one-line DataError naming the file."""

import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftragrec_jax.data.dataset import load_dataset
from ftragrec_jax.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

cell = st.one_of(
    st.sampled_from(
        [
            "u1",
            "u2",
            "i1",
            "i2",
            "1",
            "2.5",
            "-3",
            "1e30",
            "nan",
            "inf",
            "",
            " ",
            "x:y",
            "user_id:token",
            "item_id:token",
            "timestamp:float",
            "a:float_seq",
            "b:date",
            "\u00e9",
            "1 2",
        ]
    ),
    st.text(alphabet="ab12:\t .-é", max_size=6),
)
line = st.lists(cell, min_size=0, max_size=5).map("\t".join)
header = st.lists(
    st.sampled_from(
        [
            "user_id:token",
            "item_id:token",
            "timestamp:float",
            "rating:float",
            "tags:token_seq",
            "bad",
            "x:date",
            "user_id:float",
        ]
    ),
    min_size=0,
    max_size=5,
)


def check(path, fmt):
    try:
        ds = load_dataset(path, fmt=fmt, min_user_inter_num=0, min_item_inter_num=0, max_seq_length=3)
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg and path.name in msg, msg
        return
    assert ds.n_items == ds.vocab.n_items >= 2 and ds.n_users >= 1
    for s in (ds.train, ds.valid, ds.test):
        assert ((s.target >= 1) & (s.target < ds.n_items)).all()
        assert ((s.item_seq_len >= 1) & (s.item_seq_len <= 3)).all()
        assert (s.item_seq < ds.n_items).all() and (s.prefix_len >= s.item_seq_len).all()


@FUZZ
@given(head=header, body=st.lists(line, max_size=8), crlf=st.booleans())
def test_fuzz_atomic(tmp_path_factory, head, body, crlf):
    nl = "\r\n" if crlf else "\n"
    p = tmp_path_factory.mktemp("fz") / "f.inter"
    p.write_text(nl.join(["\t".join(head)] + body) + nl, encoding="utf-8")
    check(p, "atomic")


@FUZZ
@given(body=st.lists(st.text(alphabet="ab12 \t\r.é", max_size=12), max_size=8))
def test_fuzz_lines(tmp_path_factory, body):
    p = tmp_path_factory.mktemp("fz") / "f.txt"
    p.write_text("\n".join(body), encoding="utf-8")
    check(p, "lines")


@FUZZ
@given(data=st.binary(max_size=64))
def test_fuzz_raw_bytes(tmp_path_factory, data):
    for name, fmt in (("f.txt", "lines"), ("f.inter", "atomic"), ("f.txt.gz", "auto")):
        p = tmp_path_factory.mktemp("fz") / name
        p.write_bytes(data)
        check(p, fmt)


@FUZZ
@given(pos=st.integers(0, 200), junk=st.binary(min_size=1, max_size=8))
def test_fuzz_corrupt_gzip(tmp_path_factory, pos, junk):
    import gzip

    data = bytearray(gzip.compress(b"1 2 3 4\n2 3 4 5\n" * 20))
    data[pos % len(data) : pos % len(data) + len(junk)] = junk
    p = tmp_path_factory.mktemp("fz") / "f.txt.gz"
    p.write_bytes(bytes(data))
    check(p, "auto")


def test_valid_random_atomic_files_load(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(20):
        n = int(rng.integers(1, 40))
        rows = [f"u{rng.integers(0, 5)}\ti{rng.integers(0, 7)}\t{rng.integers(0, 4)}" for _ in range(n)]
        p = tmp_path / f"r{k}.inter"
        p.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
        ds = load_dataset(p, min_user_inter_num=0, min_item_inter_num=0)
        assert ds.n_interactions == n
        # every interaction after a user's first is exactly one sample
        assert len(ds.train) + len(ds.valid) + len(ds.test) == n - ds.n_users
        assert re.fullmatch(r"r\d+", ds.name)
