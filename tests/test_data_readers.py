"""Readers: both formats, any column order, .gz, and bad input named by file and line."""

import gzip
import logging

import numpy as np
import pytest

from ftragrec_jax.data.readers import detect_format, read_atomic, read_interactions, read_lines
from ftragrec_jax.errors import DataError


def write(tmp_path, name, text, gz=False):
    p = tmp_path / name
    data = text.encode("utf-8")
    p.write_bytes(gzip.compress(data) if gz else data)
    return p


def test_atomic_any_column_order_extra_columns_ignored(tmp_path):
    p = write(
        tmp_path,
        "d.inter",
        "rating:float\ttimestamp:float\ttags:token_seq\titem_id:token\tuser_id:token\tw:float_seq\n"
        "5\t30\ta b\ti1\tu1\t0.5 1\n"
        "x\t10\t\ti2\tu2\t\n"  # extra columns are not parsed at all
        "\n"  # blank line: not a record
        "4\t 20 \tc\ti1\tu1\t2\n",
    )
    t = read_atomic(p)
    assert t.user.tolist() == ["u1", "u2", "u1"]
    assert t.item.tolist() == ["i1", "i2", "i1"]
    assert t.timestamp.tolist() == [30.0, 10.0, 20.0]
    assert t.line.tolist() == [2, 3, 5]


def test_lines_format_positions_and_gz(tmp_path):
    text = "7 3 1 3\n8 5\r\n\n9 1 2\n"
    for gz in (False, True):
        p = write(tmp_path, "d.txt" + (".gz" if gz else ""), text, gz=gz)
        t = read_interactions(p)
        assert t.tokens("user", t.user).tolist() == ["7", "7", "7", "8", "9", "9"]
        assert t.tokens("item", t.item).tolist() == ["3", "1", "3", "5", "1", "2"]  # duplicates kept
        # coded in order of first appearance: 4 bytes per interaction, the strings stored once
        assert t.user.tolist() == [0, 0, 0, 1, 2, 2] and t.item.tolist() == [0, 1, 0, 2, 1, 3]
        assert t.item_tokens.tolist() == ["3", "1", "5", "2"] and t.item.dtype == np.int32
        assert t.timestamp.tolist() == [0, 1, 2, 0, 0, 1]
        assert t.line.tolist() == [1, 1, 1, 2, 4, 4]


def test_atomic_gz_and_detection(tmp_path):
    p = write(tmp_path, "d.inter.gz", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\n", gz=True)
    assert detect_format(p) == "atomic" and detect_format(tmp_path / "x.txt") == "lines"
    assert read_interactions(p).item.tolist() == ["i"]


def test_rows_without_ids_dropped_with_count_in_log(tmp_path, caplog):
    p = write(tmp_path, "d.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\n\ti\t2\nu\t\t3\nu\tj\t4\n")
    with caplog.at_level(logging.WARNING, logger="ftragrec_jax"):
        t = read_atomic(p)
    assert t.item.tolist() == ["i", "j"]
    assert "dropped 2 line(s)" in caplog.text and "line 3" in caplog.text


@pytest.mark.parametrize(
    "name,text,expect",
    [
        ("a.inter", "user_id:token\titem_id:token\ttimestamp:date\nu\ti\t1\n", r"a\.inter:1: .*unknown type 'date'"),
        (
            "a.inter",
            "user_id:token\titem_id:token\trating:float\nu\ti\t1\n",
            r"a\.inter:1: missing required column\(s\) timestamp:float",
        ),
        ("a.inter", "user_id:token\titem_id\ttimestamp:float\n", r"a\.inter:1: column 2 header 'item_id': expected"),
        (
            "a.inter",
            "user_id:token\titem_id:float\ttimestamp:float\n",
            r"a\.inter:1: column 'item_id' has type 'float'",
        ),
        ("a.inter", "user_id:token\tuser_id:token\n", r"a\.inter:1: column 'user_id' appears twice"),
        ("a.inter", "", r"a\.inter:1: empty file"),
        (
            "a.inter",
            "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\ti\n",
            r"a\.inter:3: expected 3 tab-separated fields .*got 2",
        ),
        (
            "a.inter",
            "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\ti\tsoon\n",
            r"a\.inter:3: column 'timestamp': expected a finite number, got 'soon'",
        ),
        (
            "a.inter",
            "user_id:token\titem_id:token\ttimestamp:float\nu\ti\tnan\n",
            r"a\.inter:2: column 'timestamp': expected a finite number",
        ),
        (
            "a.inter",
            "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t\n",
            r"a\.inter:2: column 'timestamp': expected a finite number, got ''",
        ),
        ("b.txt", "1 2 3\n2\n", r"b\.txt:2: expected 'user item1 item2 \.\.\.'"),
        ("b.txt", "1 2 3\n2 4\n1 5\n", r"b\.txt:3: user '1' already has a line \(1\)"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, text, expect):
    p = write(tmp_path, name, text)
    with pytest.raises(DataError, match=expect) as e:
        read_interactions(p)
    assert "\n" not in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_interactions(tmp_path / "nope.txt")
    (tmp_path / "bad.txt").write_bytes(b"1 2\n3 \xff\xfe\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not valid UTF-8"):
        read_interactions(tmp_path / "bad.txt")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad\.txt\.gz: cannot read"):
        read_interactions(tmp_path / "bad.txt.gz")
    with pytest.raises(DataError, match="unknown dataset format"):
        read_interactions(tmp_path / "bad.txt", fmt="csv")


def test_tokens_are_strings_not_numbers(tmp_path):
    # RecBole reads token columns as str: "01" and "1" are different items.
    t = read_lines(write(tmp_path, "d.txt", "u 01 1 1.0\n"))
    assert t.tokens("item", t.item).tolist() == ["01", "1", "1.0"]
    assert t.item_tokens.dtype.kind == "U" and np.all(t.timestamp == [0, 1, 2])


def test_coded_tokens_build_the_same_dataset_as_strings():
    """The one-line reader codes tokens as it reads; a dataset built from those codes is the one built from the
    tokens as strings (same vocabulary order, samples and splits), on the embedded Beauty file."""
    import dataclasses

    from ftragrec_jax.data.dataset import build_dataset, default_dataset_path, load_dataset

    path = default_dataset_path()
    coded = read_interactions(path)
    assert coded.user_tokens is not None and coded.user.dtype == np.int32
    as_str = dataclasses.replace(
        coded,
        user=coded.tokens("user", coded.user),
        item=coded.tokens("item", coded.item),
        user_tokens=None,
        item_tokens=None,
    )
    a = load_dataset(path)
    b = build_dataset(as_str, a.name, a.settings)
    assert a.vocab.user_tokens == b.vocab.user_tokens and a.vocab.item_tokens == b.vocab.item_tokens
    assert np.array_equal(a.history.items, b.history.items) and np.array_equal(a.history.indptr, b.history.indptr)
    for split in ("train", "valid", "test"):
        for f in ("end", "item_seq_len", "target", "user", "prefix_len"):
            assert np.array_equal(getattr(getattr(a, split), f), getattr(getattr(b, split), f)), (split, f)
