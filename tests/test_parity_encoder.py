"""Flax encoder vs the PyTorch reference DuoRec: forward, scores, and the weight mapping."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests compare against the PyTorch reference")

from converters.mapping import (  # noqa: E402
    ENCODER_TABLE,
    encoder_config_from_state_dict,
    encoder_to_torch_state,
    load_torch_state,
    load_torch_state_into_encoder,
)
from ftragrec_jax.errors import CheckpointError, ConfigError  # noqa: E402
from ftragrec_jax.models.encoder import EncoderConfig, build_encoder  # noqa: E402
from tests.parity_helpers import max_abs, random_batch, twin_models  # noqa: E402

N_ITEMS = 50


def _cfg(hidden, max_len, **kw):
    return EncoderConfig(
        n_items=N_ITEMS,
        max_seq_length=max_len,
        hidden_size=hidden,
        n_layers=2,
        n_heads=2,
        inner_size=2 * hidden,
        hidden_dropout_prob=0.0,
        attn_dropout_prob=0.0,
        **kw,
    )


def _sd(ref):
    return {k: v.detach().numpy() for k, v in ref.state_dict().items()}


def test_state_dict_has_duorecs_keys_and_shapes():
    from converters.reference.torch_duorec import TorchDuoRec

    ref = TorchDuoRec(n_items=N_ITEMS, max_seq_length=9, hidden_size=16, n_layers=2, inner_size=40)
    expected = {
        "item_embedding.weight": (N_ITEMS, 16),
        "position_embedding.weight": (9, 16),
        "LayerNorm.weight": (16,),
        "LayerNorm.bias": (16,),
    }
    for i in range(2):
        p = f"trm_encoder.layer.{i}."
        for name in ("query", "key", "value", "dense"):
            expected[p + f"multi_head_attention.{name}.weight"] = (16, 16)
            expected[p + f"multi_head_attention.{name}.bias"] = (16,)
        for name in ("multi_head_attention.LayerNorm", "feed_forward.LayerNorm"):
            expected[p + f"{name}.weight"] = (16,)
            expected[p + f"{name}.bias"] = (16,)
        expected[p + "feed_forward.dense_1.weight"] = (40, 16)
        expected[p + "feed_forward.dense_1.bias"] = (40,)
        expected[p + "feed_forward.dense_2.weight"] = (16, 40)
        expected[p + "feed_forward.dense_2.bias"] = (16,)
    got = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert got == expected
    assert ref.item_embedding.padding_idx == 0
    # RecBole's init overwrites the padding row: row 0 is a real, nonzero row
    assert float(ref.item_embedding.weight.detach()[0].abs().sum()) > 0


@pytest.mark.parametrize("hidden,max_len", [(16, 8), (32, 10)])
def test_encoder_output_and_full_sort_scores_match(hidden, max_len):
    cfg = _cfg(hidden, max_len)
    ref, enc = twin_models(cfg, seed=hidden)
    batch = random_batch(np.random.default_rng(hidden), 12, max_len, N_ITEMS)
    seq, seq_len = batch["item_seq"], batch["item_seq_len"]
    assert set(seq_len[:3]) == {1, max_len}  # ragged: 1, full, truncated
    with torch.no_grad():
        t_out = ref(torch.as_tensor(seq), torch.as_tensor(seq_len)).numpy()
        t_scores = ref.full_sort_predict(torch.as_tensor(seq), torch.as_tensor(seq_len)).numpy()
    j_out = np.asarray(enc(seq, seq_len))
    j_scores = np.asarray(enc.scores(enc(seq, seq_len)))
    assert j_scores.shape == (12, N_ITEMS)
    assert max_abs(j_out, t_out) <= 1e-5
    assert max_abs(j_scores, t_scores) <= 1e-5


def test_round_trip_is_bit_exact_and_keeps_item_row_0():
    cfg = _cfg(16, 8)
    ref, enc = twin_models(cfg, seed=3)
    sd = _sd(ref)
    back = encoder_to_torch_state(enc)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype == np.float32, k
        assert np.array_equal(back[k], sd[k]), k
    assert np.array_equal(np.asarray(enc.item_table())[0], sd["item_embedding.weight"][0])
    # and Flax -> torch -> Flax
    enc2 = build_encoder(cfg, seed=99)
    load_torch_state_into_encoder(back, enc2)
    again = encoder_to_torch_state(enc2)
    assert all(np.array_equal(again[k], sd[k]) for k in sd)


def test_config_inferred_from_shapes():
    ref, _ = twin_models(_cfg(32, 10), seed=0)
    sd = _sd(ref)
    cfg = encoder_config_from_state_dict(sd)
    assert (cfg.n_items, cfg.max_seq_length, cfg.hidden_size, cfg.n_layers, cfg.inner_size, cfg.n_heads) == (
        N_ITEMS,
        10,
        32,
        2,
        64,
        2,
    )
    cfg4 = encoder_config_from_state_dict(
        sd, n_heads=4, hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.1
    )
    assert cfg4.n_heads == 4 and cfg4.hidden_dropout_prob == 0.1
    with pytest.raises(ConfigError, match="n_heads"):
        encoder_config_from_state_dict(sd, n_heads=3)
    with pytest.raises(ConfigError, match="hidden_act"):
        encoder_config_from_state_dict(sd, hidden_act="relu")
    with pytest.raises(ConfigError, match="layer_norm_eps"):
        encoder_config_from_state_dict(sd, layer_norm_eps=1e-5)
    with pytest.raises(ConfigError, match="unknown override"):
        encoder_config_from_state_dict(sd, n_head=2)
    with pytest.raises(CheckpointError, match="n_items"):
        encoder_config_from_state_dict(sd, n_items=51)
    bad = dict(sd)
    bad["trm_encoder.layer.1.feed_forward.dense_2.weight"] = np.zeros((32, 63), np.float32)
    with pytest.raises(CheckpointError, match=r"dense_2\.weight.*\(32, 63\)"):
        encoder_config_from_state_dict(bad)
    gap = {k.replace("layer.1.", "layer.2."): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match="not 0..n-1"):
        encoder_config_from_state_dict(gap)


def test_loading_rejects_missing_key_bad_shape_stray_layer_and_unfilled_leaf():
    cfg = _cfg(16, 8)
    ref, _ = twin_models(cfg, seed=1)
    sd = _sd(ref)
    extras = {"seq_tar_ram": np.zeros((3, 16), np.float32), "retriever_mlp.0.weight": np.zeros((2, 2), np.float32)}
    enc = build_encoder(cfg, 5)
    assert load_torch_state_into_encoder({**sd, **extras}, enc) == sorted(extras)

    missing = {k: v for k, v in sd.items() if k != "trm_encoder.layer.1.multi_head_attention.value.bias"}
    want = r"missing key 'trm_encoder\.layer\.1\.multi_head_attention\.value\.bias'"
    with pytest.raises(CheckpointError, match=want):
        load_torch_state_into_encoder(missing, build_encoder(cfg, 5))
    wrong = {**sd, "position_embedding.weight": np.zeros((9, 16), np.float32)}
    with pytest.raises(CheckpointError, match=r"position_embedding\.weight has shape \(9, 16\), expected \(8, 16\)"):
        load_torch_state_into_encoder(wrong, build_encoder(cfg, 5))
    transposed = {
        **sd,
        "trm_encoder.layer.0.feed_forward.dense_1.weight": sd[
            "trm_encoder.layer.0.feed_forward.dense_1.weight"
        ].T.copy(),
    }
    with pytest.raises(CheckpointError, match=r"dense_1\.weight has shape \(16, 32\), expected \(32, 16\)"):
        load_torch_state_into_encoder(transposed, build_encoder(cfg, 5))
    third = {**sd, "trm_encoder.layer.2.feed_forward.dense_1.bias": np.zeros(32, np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected key 'trm_encoder\.layer\.2\."):
        load_torch_state_into_encoder(third, build_encoder(cfg, 5))
    ints = {**sd, "LayerNorm.bias": np.zeros(16, np.int64)}
    with pytest.raises(CheckpointError, match="LayerNorm.bias has dtype int64"):
        load_torch_state_into_encoder(ints, build_encoder(cfg, 5))
    partial = [e for e in ENCODER_TABLE if e.torch_key != "LayerNorm.weight"]
    with pytest.raises(CheckpointError, match="layer_norm.scale has no state_dict source"):
        load_torch_state(sd, build_encoder(cfg, 5), partial, cfg.n_layers)


def test_loaded_encoder_differs_from_fresh_init():
    """Guards against a loader that silently leaves the random init in place."""
    cfg = _cfg(16, 8)
    ref, enc = twin_models(cfg, seed=7)
    fresh = encoder_to_torch_state(build_encoder(cfg, 8))
    loaded = encoder_to_torch_state(enc)
    assert not np.array_equal(fresh["item_embedding.weight"], loaded["item_embedding.weight"])
    assert not np.array_equal(
        fresh["trm_encoder.layer.1.feed_forward.dense_2.weight"],
        loaded["trm_encoder.layer.1.feed_forward.dense_2.weight"],
    )
