"""Fuzz the config parser: any input ends in a valid Config or a ConfigError naming the file/key."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftragrec_jax.config import FIELDS, Config, load_config, parse_override
from ftragrec_jax.errors import ConfigError

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 60), max_size=4),
)


def _ok_or_config_error(fn):
    try:
        cfg = fn()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert isinstance(cfg, Config)
    return cfg


@FUZZ
@given(st.text(alphabet=string.printable, max_size=200))
def test_arbitrary_yaml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fz") / "cfg.yaml"
    path.write_text(text)
    _ok_or_config_error(lambda: load_config(path))


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), yaml_scalars, max_size=6))
def test_known_keys_with_arbitrary_values(tmp_path_factory, mapping):
    import yaml

    path = tmp_path_factory.mktemp("fz") / "cfg.yaml"
    path.write_text(yaml.safe_dump(mapping))
    cfg = _ok_or_config_error(lambda: load_config(path))
    if cfg is not None:  # whatever passed validation is usable
        assert cfg.hidden_size % cfg.n_heads == 0 and 0 <= cfg.alpha <= 1 and cfg.top_k >= 1


@FUZZ
@given(st.text(max_size=40))
def test_arbitrary_override_strings(text):
    try:
        key, _ = parse_override(text)
        assert key in FIELDS
    except ConfigError as e:
        assert "\n" not in str(e)
