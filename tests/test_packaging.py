"""The oldest CI leg installs exactly pyproject.toml's lower bounds: the two lists must not drift apart."""

import re
import tomllib

from tests.conftest import ROOT


def _requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    out = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(>=|==)\s*([0-9][0-9A-Za-z.]*)", req.strip())
        assert m, f"pyproject.toml: requirement {req!r} has no lower bound (>= or ==)"
        out[m.group(1).lower()] = m.group(3)
    return out


def _constraints() -> dict[str, str]:
    out = {}
    for n, line in enumerate((ROOT / ".ci" / "oldest-constraints.txt").read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f".ci/oldest-constraints.txt line {n}: expected NAME==VERSION, got {line!r}"
            out[name.strip().lower()] = version.strip()
    return out


def test_oldest_leg_pins_every_lower_bound():
    reqs, pins = _requirements(), _constraints()
    assert {k: pins.get(k) for k in reqs} == reqs
    assert set(pins) - set(reqs) == {"jaxlib"}  # jax's own binary, pinned with it
    assert pins["jaxlib"] == pins["jax"]
