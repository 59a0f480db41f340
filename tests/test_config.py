import pytest

from ftragrec_jax.config import Config, load_config, parse_override, split_cli_overrides
from ftragrec_jax.errors import ConfigError


def test_defaults_are_duorec_defaults():
    cfg = load_config()
    assert (cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.inner_size) == (64, 2, 2, 256)
    assert (cfg.learning_rate, cfg.train_batch_size, cfg.MAX_ITEM_LIST_LENGTH) == (1e-3, 256, 50)
    assert (cfg.top_k, cfg.alpha, cfg.retriever_temperature, cfg.quality_threshold) == (5, 0.15, 0.07, 0.6)
    assert cfg.topk == (5, 10, 20, 50) and cfg.valid_metric == "mrr@10"


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: ftragrec\ntop_k: 7\n")
    cfg = load_config(path, ["alpha=0.3", "topk=[10, 5]", "faiss_index=IVF64,Flat", "pretrained=2020"])
    assert cfg.model == "ftragrec" and cfg.top_k == 7 and cfg.alpha == 0.3
    assert cfg.topk == (5, 10) and cfg.faiss_index == "IVF64,Flat" and cfg.pretrained == "2020"


def test_unknown_key_lists_close_matches(tmp_path):
    with pytest.raises(ConfigError, match="did you mean.*learning_rate"):
        parse_override("learning_rat=0.1")
    path = tmp_path / "c.yaml"
    path.write_text("hiden_size: 8\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*'hiden_size'.*hidden_size"):
        load_config(path)


@pytest.mark.parametrize(
    "override,key",
    [
        ("hidden_dropout_prob=-0.1", "hidden_dropout_prob"),
        ("learning_rate=0", "learning_rate"),
        ("n_heads=3", "n_heads"),
        ("alpha=1.5", "alpha"),
        ("top_k=0", "top_k"),
        ("retriever_temperature=0", "retriever_temperature"),
        ("valid_metric=ndcg@7", "valid_metric"),
        ("retrieval_backend=gpu", "retrieval_backend"),
        ("epochs=ten", "epochs"),
        ("tau=.nan", "tau"),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("alpha: 0.1\ntop_k: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml.*line"):
        load_config(path)


def test_recbole_style_flags_are_overrides():
    rest, ov = split_cli_overrides(["--config", "x.yaml", "--lmd_sem=0.2", "--set", "a=b"])
    assert rest == ["--config", "x.yaml", "--set", "a=b"] and ov == ["lmd_sem=0.2"]


def test_every_field_has_a_comment():
    import inspect

    import ftragrec_jax.config as mod

    src = inspect.getsource(mod.Config)
    for name in Config.__dataclass_fields__:
        line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{name}:"))
        assert "#" in line, f"config field {name} has no comment"


def test_exponent_without_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; RecBole users write learning rates that way."""
    cfg = load_config(None, ["learning_rate=1e-3", "weight_decay=5e-5"])
    assert cfg.learning_rate == 1e-3 and cfg.weight_decay == 5e-5
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-3\n")
    assert load_config(path).learning_rate == 1e-3
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(None, ["learning_rate=fast"])
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(None, ["learning_rate=nan"])
