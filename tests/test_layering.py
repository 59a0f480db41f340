"""The layering rules, read from every import statement (module top and function bodies alike):
- models/ holds modules and losses: it imports nothing from ftragrec_jax.train or ftragrec_jax.optim;
- the library (ftragrec_jax/) imports nothing from experiments/ or converters/;
- scoring.py (the one inference path) imports nothing from ftragrec_jax.train, and recommend.py serves a query
  without the trainer;
- an entry point (experiments/*.py) takes library logic from the library, not from another entry point
  (experiments/cli_common.py, the benchmark helpers in experiments/benchlib.py and the benchmarks of
  experiments/benches/ are shared on purpose);
- torch is imported only in converters/ (the checkpoint converters, the PyTorch reference models and the
  PyTorch benchmark sides) and in tests.
"""

import ast

from tests.conftest import ROOT


def _imports(path):
    """(line, imported module) for every import in a file; relative imports resolved against its package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield node.lineno, ".".join([*base, node.module or ""]).rstrip(".")
            else:
                yield node.lineno, node.module


def _violations(folder, forbidden) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return out


def test_models_import_no_training_code():
    assert _violations("ftragrec_jax/models", ("ftragrec_jax.train", "ftragrec_jax.optim")) == []


def test_library_imports_no_entry_points_or_converters():
    assert _violations("ftragrec_jax", ("experiments", "converters")) == []


def test_scoring_and_recommend_import_no_training_code():
    out = [
        v
        for v in _violations("ftragrec_jax", ("ftragrec_jax.train",))
        if v.startswith(("ftragrec_jax/scoring.py", "ftragrec_jax/recommend.py", "ftragrec_jax/evaluation.py"))
    ]
    assert out == []


def test_entry_points_do_not_import_each_other():
    shared = ("experiments.cli_common", "experiments.benchlib")
    out = [
        v
        for v in _violations("experiments", ("experiments",))
        if not v.endswith(shared)
        and " imports experiments.benches" not in v
        # results/ holds the scripts that produced a results file: records that drive entry points, not ones
        and not v.startswith("experiments/results/")
    ]
    assert out == []


def test_converters_never_run_the_reference_models():
    """The checkpoint converters read and write files; the PyTorch reference models (converters/reference/) are for
    parity tests and benchmarks only."""
    out = [v for v in _violations("converters", ("converters.reference",)) if not v.startswith("converters/reference/")]
    assert out == []


def test_torch_only_in_converters():
    assert _violations("ftragrec_jax", ("torch",)) + _violations("experiments", ("torch",)) == []


def test_the_rules_see_imports_inside_functions(tmp_path, monkeypatch):
    """A function-level import counts as much as one at the top (the check would be blind otherwise)."""
    import tests.test_layering as layering

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("def f():\n    import torch.nn\n    from experiments import bench\n")
    monkeypatch.setattr(layering, "ROOT", tmp_path)
    assert _violations("pkg", ("torch", "experiments")) == [
        "pkg/m.py:2 imports torch.nn",
        "pkg/m.py:3 imports experiments",
    ]
