"""Fuzz the small files of a model directory (model.json, vocab.json): any content ends in a loaded value or
the project's own one-line error naming the file, never a raw exception from json or a later consumer."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftragrec_jax.data.vocab import FORMAT as VOCAB_FORMAT
from ftragrec_jax.data.vocab import Vocab
from ftragrec_jax.errors import CheckpointError, DataError
from ftragrec_jax.model_dir import read_meta

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _meta_or_error(path):
    try:
        meta = read_meta(path)
    except CheckpointError as e:
        assert "\n" not in str(e) and "model.json" in str(e)
        return None
    for key in ("ftragrec", "dataset", "source"):  # what consumers rely on after read_meta
        assert isinstance(meta.get(key) or {}, dict)
    return meta


@FUZZ
@given(st.binary(max_size=300))
def test_model_json_bytes(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("m")
    (d / "model.json").write_bytes(data)
    _meta_or_error(d)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["format", "model", "encoder", "ftragrec", "dataset", "source", "params_sha256", "other"]),
        json_values,
        max_size=7,
    ),
    st.booleans(),
)
def test_model_json_structures(tmp_path_factory, obj, valid_head):
    if valid_head:  # get past the format/model checks so the later fields are exercised
        obj = {
            **obj,
            "format": "ftragrec-jax/model/v1",
            "model": "duorec",
            "encoder": obj.get("encoder") if isinstance(obj.get("encoder"), dict) else {},
        }
    d = tmp_path_factory.mktemp("m")
    (d / "model.json").write_text(json.dumps(obj))
    _meta_or_error(d)


def _vocab_or_error(path):
    try:
        vocab = Vocab.load(path)
    except DataError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return None
    assert vocab.item_tokens[0] == "[PAD]" and len(set(vocab.item_tokens)) == vocab.n_items
    ids, unknown = vocab.item_ids(list(vocab.item_tokens[1:]))
    assert ids == list(range(1, vocab.n_items)) and unknown == []
    return vocab


@FUZZ
@given(st.binary(max_size=300))
def test_vocab_json_bytes(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("v") / "vocab.json"
    p.write_bytes(data)
    _vocab_or_error(p)


@FUZZ
@given(json_values, json_values, st.booleans())
def test_vocab_json_structures(tmp_path_factory, items, users, pad):
    if pad:
        items = ["[PAD]", *items] if isinstance(items, list) else items
        users = ["[PAD]", *users] if isinstance(users, list) else users
    p = tmp_path_factory.mktemp("v") / "vocab.json"
    p.write_text(json.dumps({"format": VOCAB_FORMAT, "items": items, "users": users}))
    _vocab_or_error(p)


def test_vocab_duplicates_and_non_strings_are_refused(tmp_path):
    p = tmp_path / "vocab.json"
    for items, message in (
        (["[PAD]", "a", "b", "a"], "token 'a' more than once"),
        (["[PAD]", 1, "1"], "token '1' more than once"),
        (["[PAD]", {"x": 1}], "list of token strings"),
        ("[PAD]ab", "list of token strings"),
        (["a"], "items_tokens|item_tokens\\[0\\]"),
    ):
        p.write_text(json.dumps({"format": VOCAB_FORMAT, "items": items, "users": ["[PAD]"]}))
        try:
            Vocab.load(p)
        except DataError as e:
            import re

            assert re.search(message, str(e)) and str(p) in str(e), str(e)
        else:
            raise AssertionError(f"{items!r} was accepted")
    p.write_bytes(b'{"format": "\xff\xfe"}')
    try:
        Vocab.load(p)
    except DataError as e:
        assert "UnicodeDecodeError" in str(e)
    else:
        raise AssertionError("bad UTF-8 accepted")
