"""What a user touches first: recommend from a saved model, learning-curve pictures, help texts, the config
reference. Tiny random models and a tiny synthetic dataset; one tiny real pipeline run for the trainer hooks."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.test_train import write_lines_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the dataset settings the tiny models were "trained" with, as model.json records them
TINY_SETTINGS = {"data": "tiny.txt", "min_user_inter_num": 3, "min_item_inter_num": 1, "MAX_ITEM_LIST_LENGTH": 6}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from ftragrec_jax.data.dataset import load_dataset

    path = write_lines_dataset(tmp_path_factory.mktemp("data") / "tiny.txt", n_users=40, n_items=25)
    return load_dataset(path, min_user_inter_num=3, min_item_inter_num=1, max_seq_length=6)


def _encoder(dataset, seed=3):
    from ftragrec_jax.models.encoder import EncoderConfig, build_encoder

    cfg = EncoderConfig(n_items=dataset.n_items, max_seq_length=6, hidden_size=8, n_layers=1, n_heads=2, inner_size=16)
    return build_encoder(cfg, seed)


def _pure(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def duorec_dir(dataset, tmp_path_factory):
    from ftragrec_jax.model_dir import save_model

    enc = _encoder(dataset)
    meta = {"model": "duorec", "encoder": dataclasses.asdict(enc.config), "dataset": TINY_SETTINGS}
    return save_model(tmp_path_factory.mktemp("m") / "duorec", _pure(enc), meta, vocab=dataset.vocab)


@pytest.fixture(scope="module")
def ftragrec_dir(dataset, tmp_path_factory):
    from ftragrec_jax.model_dir import save_model
    from ftragrec_jax.models.ftragrec import FTragrecHParams, build_ftragrec
    from ftragrec_jax.models.knowledge_base import KnowledgeBase

    enc = _encoder(dataset)
    # threshold -1 keeps every neighbour, alpha 0.5 makes them matter: the scores differ from the backbone's
    hp = FTragrecHParams(top_k=3, retriever_inner_size=16, quality_threshold=-1.0, alpha=0.5)
    model = build_ftragrec(enc, hp, seed=1)
    kb = KnowledgeBase.build(model.encoder, model.retriever, dataset.train, backend="exact", top_k=3)
    arrays = {"h": kb.h, "target": kb.target, "user": kb.user, "prefix_len": kb.prefix_len}
    meta = {
        "model": "ftragrec",
        "encoder": dataclasses.asdict(enc.config),
        "ftragrec": dataclasses.asdict(hp),
        "dataset": TINY_SETTINGS,
    }
    return save_model(
        tmp_path_factory.mktemp("m") / "ftragrec", _pure(model), meta, vocab=dataset.vocab, knowledge_base=arrays
    )


def _evaluator_scores(path, dataset, rows):
    """Scores of test rows through the evaluate CLI's own scorer (base rebuilt from the dataset)."""
    from ftragrec_jax import scoring
    from ftragrec_jax.model_dir import load_model

    meta, params, _ = load_model(path)
    score = scoring.from_params(meta, params, source=str(path), dataset=dataset)
    t = dataset.test.take(rows)
    batch = {"user": t.user, "prefix_len": t.prefix_len}
    return np.asarray(score(t.item_seq, t.item_seq_len, batch))


@pytest.mark.parametrize("which", ["duorec", "ftragrec"])
def test_recommend_matches_the_evaluator(which, duorec_dir, ftragrec_dir, dataset):
    """A test user's history in tokens gives the evaluator's ranking: same model, vocabulary and (for FTragrec)
    stored knowledge base, with no dataset passed to load()."""
    import ftragrec_jax

    path = duorec_dir if which == "duorec" else ftragrec_dir
    rec = ftragrec_jax.load(path)
    rows = np.arange(min(8, len(dataset.test)))
    expected = _evaluator_scores(path, dataset, rows)
    t = dataset.test.take(rows)
    for i in range(len(rows)):
        tokens = [dataset.vocab.item_tokens[j] for j in t.item_seq[i, : t.item_seq_len[i]]]
        out = rec.recommend(" ".join(tokens), k=5)
        s = expected[i].astype(np.float64)
        s[0] = -np.inf
        want = np.argsort(-s, kind="stable")[:5]
        assert out.items == [dataset.vocab.item_tokens[j] for j in want]
        np.testing.assert_allclose(out.scores, s[want], rtol=1e-5, atol=1e-6)
        assert out.unknown == [] and out.used == len(tokens)
    if which == "ftragrec":  # the neighbours matter: FTragrec's scores are not the backbone's
        assert not np.allclose(expected, _evaluator_scores(duorec_dir, dataset, rows), atol=1e-4)


def test_recommend_unknown_seen_padding_and_k(duorec_dir, dataset):
    import ftragrec_jax
    from ftragrec_jax.errors import ConfigError, DataError

    rec = ftragrec_jax.load(duorec_dir)
    toks = list(dataset.vocab.item_tokens[1:5])
    out = rec.recommend(["nope", *toks, "nada"], k=dataset.n_items - 1)
    assert out.unknown == ["nope", "nada"] and out.used == 4
    assert "[PAD]" not in out.items and len(out.items) == dataset.n_items - 1  # every real item, never padding
    assert set(toks) <= set(out.items)  # seen items stay rankable by default (RecBole)
    assert out.scores == sorted(out.scores, reverse=True)
    seen = rec.recommend(toks, k=dataset.n_items - 1 - len(toks), exclude_seen=True)
    assert not set(toks) & set(seen.items)
    assert seen.items == [t for t in out.items if t not in toks]
    with pytest.raises(DataError, match="none of the 2 items"):
        rec.recommend("nope nada")
    for bad_k in (0, dataset.n_items, 2.5):
        with pytest.raises(ConfigError, match="k must be"):
            rec.recommend(toks, k=bad_k)
    long = rec.recommend(list(dataset.vocab.item_tokens[1:]), k=3)  # longer than max length: last 6 items used
    assert long.used == 6 and long.items == rec.recommend(list(dataset.vocab.item_tokens[-6:]), k=3).items


def test_recommend_cli(ftragrec_dir, dataset, capsys):
    from experiments.recommend import main

    toks = " ".join(dataset.vocab.item_tokens[3:7])
    assert main(["--checkpoint", str(ftragrec_dir), "--items", f"{toks} zzz", "--k", "4", "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["unknown"] == ["zzz"] and len(out["items"]) == 4 and "zzz" in cap.err and "warning" in cap.err
    import ftragrec_jax

    same = ftragrec_jax.load(ftragrec_dir).recommend(toks.split(), k=4)
    assert [r["item"] for r in out["items"]] == same.items
    assert main(["--checkpoint", str(ftragrec_dir), "--items", toks, "--k", "3", "--exclude-seen"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "item", "score"] and len(lines) == 4
    assert not {line.split()[1] for line in lines[1:]} & set(toks.split())
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(ftragrec_dir), "--items", "zzz yyy"])
    assert e.value.code == 2 and "none of the 2 items" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["duorec", "ftragrec"])
def test_recommend_many_gives_the_one_sequence_ranking(which, duorec_dir, ftragrec_dir, dataset):
    """The bulk path (jitted batches, top-k on the device, a padded last batch) returns, for every sequence, the
    items and scores of `recommend` on it alone: with unknown tokens, longer than the model's length, with and
    without exclude_seen, duplicated sequences (tied rows), and a row with no known item."""
    import ftragrec_jax

    rec = ftragrec_jax.load(duorec_dir if which == "duorec" else ftragrec_dir)
    toks = list(dataset.vocab.item_tokens[1:])
    t = dataset.test
    seqs = [[toks[j - 1] for j in t.item_seq[i, : t.item_seq_len[i]]] for i in range(min(7, len(t)))]
    seqs += [["zzz", *toks[2:5]], toks[:9], toks[3:4], toks[3:4], ["nope"]]
    for exclude in (False, True):
        got = list(rec.recommend_many(seqs, k=5, exclude_seen=exclude, batch_size=3))
        assert len(got) == len(seqs)
        for seq, out in zip(seqs, got):
            if seq == ["nope"]:
                assert out.items == [] and out.unknown == ["nope"]
                continue
            want = rec.recommend(seq, k=5, exclude_seen=exclude)
            assert out.items == want.items and out.unknown == want.unknown and out.used == want.used
            np.testing.assert_allclose(out.scores, want.scores, rtol=1e-6, atol=1e-6)
        # the top-k merged over item chunks (both models): the same items
        for chunk in (1, 4, 7):
            merged = list(rec.recommend_many(seqs, k=5, exclude_seen=exclude, batch_size=3, item_chunk_size=chunk))
            for out, same in zip(got, merged):
                assert same.items == out.items and same.unknown == out.unknown
                np.testing.assert_allclose(same.scores, out.scores, rtol=1e-5, atol=1e-5)
    few = list(rec.recommend_many([toks], k=dataset.n_items - 1, exclude_seen=True))[0]
    assert few.items == []  # every item seen: nothing left to recommend


def test_recommend_cli_bulk_input_and_all_users(ftragrec_dir, dataset, tmp_path, capsys):
    """--input (ids before a tab, or line numbers) to JSONL and CSV, --all-users to JSONL: one row per sequence,
    the same items as the one-sequence path, rows with no known item reported."""
    import csv

    import ftragrec_jax
    from experiments.recommend import main

    rec = ftragrec_jax.load(ftragrec_dir)
    toks = list(dataset.vocab.item_tokens[1:])
    src = tmp_path / "seqs.txt"
    src.write_text(f"u1\t{' '.join(toks[:3])}\n{' '.join(toks[4:8])} zzz\nqqq\n")
    out = tmp_path / "recs.jsonl"
    assert (
        main(["--checkpoint", str(ftragrec_dir), "--input", str(src), "--out", str(out), "--k", "4", "--no-progress"])
        == 0
    )
    err = capsys.readouterr().err
    assert "wrote 3 rows" in err and "1 sequence(s) had no item" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in rows] == ["u1", "2", "3"]
    assert rows[0]["items"] == rec.recommend(toks[:3], k=4).items
    assert rows[1]["unknown"] == ["zzz"] and rows[1]["items"] == rec.recommend(toks[4:8], k=4).items
    assert rows[2]["items"] == [] and "error" in rows[2]
    as_csv = tmp_path / "recs.csv"
    assert (
        main(
            ["--checkpoint", str(ftragrec_dir), "--input", str(src), "--out", str(as_csv), "--k", "4", "--no-progress"]
        )
        == 0
    )
    table = list(csv.reader(as_csv.open()))
    assert table[0] == ["user", "rank", "item", "score"] and len(table) == 1 + 2 * 4
    assert [r[2] for r in table[1:5]] == rows[0]["items"] and [r[1] for r in table[1:5]] == ["1", "2", "3", "4"]
    users = tmp_path / "users.jsonl"
    data = dataset.source
    assert (
        main(
            [
                "--checkpoint",
                str(ftragrec_dir),
                "--all-users",
                "--data",
                data,
                "--out",
                str(users),
                "--k",
                "3",
                "--exclude-seen",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rows = [json.loads(line) for line in users.read_text().splitlines()]
    assert [r["user"] for r in rows] == list(dataset.vocab.user_tokens[1:])
    h = dataset.history
    for u in (1, len(rows) // 2, len(rows)):
        history = [dataset.vocab.item_tokens[i] for i in h.items[h.indptr[u] : h.indptr[u + 1]]]
        assert rows[u - 1]["items"] == rec.recommend(history, k=3, exclude_seen=True).items
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ftragrec_dir), "--all-users"])  # bulk needs --out
    assert "--out" in capsys.readouterr().err


def test_recommend_without_vocab_needs_the_data_file(dataset, tmp_path, capsys):
    """A converted checkpoint has no vocab.json: the error says what to pass, and --data supplies it."""
    from experiments.recommend import main
    from ftragrec_jax.model_dir import save_model

    enc = _encoder(dataset)
    data_file = tmp_path / "tiny.txt"
    write_lines_dataset(data_file, n_users=40, n_items=25)
    settings = {"data": str(data_file), "min_user_inter_num": 3, "min_item_inter_num": 1, "MAX_ITEM_LIST_LENGTH": 6}
    path = save_model(
        tmp_path / "conv",
        _pure(enc),
        {"model": "duorec", "encoder": dataclasses.asdict(enc.config), "dataset": settings},
    )
    tok = dataset.vocab.item_tokens[2]
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(path), "--items", tok])
    assert "vocab.json" in capsys.readouterr().err
    assert main(["--checkpoint", str(path), "--items", tok, "--data", str(data_file), "--k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_ftragrec_dir_without_a_stored_base_rebuilds_it_from_the_data(ftragrec_dir, dataset, tmp_path, capsys):
    """An FTragrec dir saved before bases were stored: told to pass --data, and then the same recommendations."""
    import shutil

    import ftragrec_jax
    from ftragrec_jax.errors import CheckpointError

    data_file = write_lines_dataset(tmp_path / "tiny.txt", n_users=40, n_items=25)
    old = tmp_path / "old"
    shutil.copytree(ftragrec_dir, old)
    (old / "knowledge_base.npz").unlink()
    meta = json.loads((old / "model.json").read_text())
    meta["dataset"] = {
        "data": str(data_file),
        "min_user_inter_num": 3,
        "min_item_inter_num": 1,
        "MAX_ITEM_LIST_LENGTH": 6,
    }
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="knowledge_base.npz.*--data"):
        ftragrec_jax.load(old)
    toks = list(dataset.vocab.item_tokens[2:6])
    want = ftragrec_jax.load(ftragrec_dir).recommend(toks, k=5)
    got = ftragrec_jax.load(old, data=str(data_file)).recommend(toks, k=5)
    assert got.items == want.items
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)


def test_knowledge_base_file_is_checked_and_never_unpickled(ftragrec_dir, tmp_path):
    import shutil

    from ftragrec_jax.errors import CheckpointError
    from ftragrec_jax.model_dir import load_knowledge_base

    good = load_knowledge_base(ftragrec_dir)
    bad_cases = {
        "object array": dict(good, user=np.array([object()] * len(good["user"]), dtype=object)),
        "wrong length": dict(good, target=good["target"][:-1]),
        "wrong dtype": dict(good, h=good["h"].astype(np.float64)),
        "missing": {k: v for k, v in good.items() if k != "prefix_len"},
    }
    for name, arrays in bad_cases.items():
        d = tmp_path / name.replace(" ", "_")
        shutil.copytree(ftragrec_dir, d)
        np.savez(d / "knowledge_base.npz", **arrays)
        with pytest.raises(CheckpointError, match="knowledge_base.npz"):
            load_knowledge_base(d)
    (d / "knowledge_base.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="knowledge_base.npz"):
        load_knowledge_base(d)


def test_import_stays_light():
    code = (
        "import sys, ftragrec_jax; assert callable(ftragrec_jax.load); print(sorted(m for m in ('jax', 'flax', "
        "'orbax', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _write_run(path: Path, terms: dict, epochs=4, valid=True) -> Path:
    path.mkdir(parents=True)
    lines = []
    for e in range(epochs):
        rec = {"epoch": e, "step": 10 * e, "train_time_s": 1.0, **{k: v / (e + 1) for k, v in terms.items()}}
        if valid:
            rec["valid"] = {"mrr@10": 0.1 + 0.01 * e, "ndcg@10": 0.2 + 0.01 * e, "hit@10": 0.3}
        lines.append(json.dumps(rec))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_plot_cli_single_overlay_pipeline_and_errors(tmp_path, capsys):
    from experiments.plot import main
    from ftragrec_jax.plots import _series, stages

    a = _write_run(tmp_path / "a", {"loss": 3.0, "ce": 2.0, "grad_norm": 1.0})
    b = _write_run(tmp_path / "b", {"loss": 2.5, "ce": 1.5, "grad_norm": 0.5}, epochs=6)
    assert main([str(a)]) == 0
    assert (a / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)
    out = tmp_path / "cmp" / "both.png"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC) and str(out) in capsys.readouterr().out
    pipe = tmp_path / "pipe"
    _write_run(pipe / "duorec", {"loss": 3.0, "sem_nce": 1.0})
    _write_run(pipe / "ftragrec", {"loss": 2.0, "kl_loss": 0.1, "fallback_fraction": 0.0}, epochs=2)
    assert [s for s, _ in stages(pipe)] == ["duorec", "ftragrec"]
    panels = set(_series(stages(pipe)[1][1]))
    assert panels == {"loss", "kl_loss", "fallback_fraction", "valid mrr@10", "valid ndcg@10"}
    assert main([str(pipe)]) == 0 and (pipe / "learning_curves.png").stat().st_size > 10_000
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "cmp")])
    assert e.value.code == 2 and "not a run folder" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1}\nnot json\n')
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad")])
    assert "metrics.jsonl:2" in capsys.readouterr().err


def test_trainer_saves_the_knowledge_base_with_ftragrec_models(dataset, duorec_dir, tmp_path):
    """The trainer's model-dir writer stores the task's base, so the model recommends without the dataset."""
    import logging

    from ftragrec_jax.config import load_config
    from ftragrec_jax.model_dir import load_knowledge_base
    from ftragrec_jax.train.ftragrec_task import FTragrecTask
    from ftragrec_jax.train.loop import Trainer
    from ftragrec_jax.train.run_dir import RunDir

    cfg = load_config(
        None,
        [
            f"pretrained={duorec_dir}",
            "model=ftragrec",
            "hidden_size=8",
            "n_layers=1",
            "inner_size=16",
            "MAX_ITEM_LIST_LENGTH=6",
            "top_k=3",
            "retriever_inner_size=16",
            "retrieval_backend=exact",
            "train_batch_size=16",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    task = FTragrecTask(cfg, dataset)
    trainer = Trainer(cfg, task, dataset, RunDir(cfg.output_dir), logging.getLogger("test"))
    params, _ = task.init()
    trainer._save_model(tmp_path / "model", params, 0, None)
    kb = load_knowledge_base(tmp_path / "model")
    assert kb["h"].shape == (len(dataset.train), 8)
    np.testing.assert_array_equal(kb["target"], dataset.train.target)
    np.testing.assert_array_equal(kb["user"], dataset.train.user)
    np.testing.assert_array_equal(kb["prefix_len"], dataset.train.prefix_len)
    np.testing.assert_array_equal(kb["h"], task.kb.h)
    assert load_knowledge_base(duorec_dir) is None


def test_trainer_hook_draws_stages_and_pipeline(tmp_path):
    """write_run_plots (called by the trainer at the end of a run) draws the stage, and the pipeline folder
    once both stages have metrics; a folder it cannot draw only logs a warning."""
    import logging

    from ftragrec_jax.plots import PNG_NAME, write_run_plots

    pipe = tmp_path / "pipe"
    _write_run(pipe / "duorec", {"loss": 3.0})
    assert write_run_plots(pipe / "duorec") == [pipe / "duorec" / PNG_NAME]
    _write_run(pipe / "ftragrec", {"loss": 2.0})
    assert write_run_plots(pipe / "ftragrec") == [pipe / "ftragrec" / PNG_NAME, pipe / PNG_NAME]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("test.plots")
    log.addHandler(handler)
    assert write_run_plots(empty, log) == []
    assert any("could not draw" in r.getMessage() for r in records)


def test_config_reference_is_up_to_date():
    from experiments.config_reference import DOC, SEED_CONFIGS, SEED_DEFAULTS, render
    from ftragrec_jax.config import Config, load_config

    text = render()
    stale = "docs/config.md is stale: run python -m experiments.config_reference"
    assert DOC.read_text(encoding="utf-8") == text, stale
    defaults = Config()
    for f in dataclasses.fields(Config):
        assert text.count(f"| `{f.name}` |") == 1, f.name  # every key documented exactly once
    for key, value in SEED_DEFAULTS.items():
        assert getattr(defaults, key) == value, f"{key}: Config default differs from FTragrec's seed default"
        assert f"| `{key}` |" in text and "★" in text.split(f"| `{key}` |")[1].split("\n")[0]
    for name in SEED_CONFIGS:  # the docs say these configs use the seed defaults
        cfg = load_config(ROOT / "experiments" / "configs" / name)
        assert {k: getattr(cfg, k) for k in SEED_DEFAULTS} == SEED_DEFAULTS, name


ENTRY_POINTS = [
    "experiments.train",
    "experiments.evaluate",
    "experiments.plot",
    "experiments.recommend",
    "experiments.config_reference",
    "experiments.bench",
    "experiments.ablate",
    "experiments.memory",
    "experiments.scaling",
    "experiments.scale",
    "experiments.compare",
    "experiments.tune",
    "converters.duorec_to_flax",
    "converters.flax_to_duorec",
]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_lists_every_default(module, monkeypatch, capsys):
    """Every option with a default states it in --help."""
    parsers = []
    original = argparse.ArgumentParser.print_help

    def spy(self, file=None):
        parsers.append(self)
        return original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", spy)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    assert e.value.code == 0 and parsers
    text = capsys.readouterr().out
    parser = parsers[0]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help is argparse.SUPPRESS or not action.option_strings:
            continue
        assert action.help, f"{module} {action.option_strings[0]}: no help text"  # argparse hides its default then
        if action.default in (None, argparse.SUPPRESS) or action.required:
            continue
        assert "default" in formatter._get_help_string(action), f"{module} {action.option_strings[0]}"
    assert "usage: python -m " + module in text


def test_ftragrec_task_warns_and_scores_its_frozen_backbone(dataset, duorec_dir):
    """The trainer's start-of-run checks: a base too small for top_k once a user's own samples are excluded, and
    alpha 0; the baseline scorer is the DuoRec alone (what the log prints before fine-tuning)."""
    from ftragrec_jax import scoring
    from ftragrec_jax.config import load_config
    from ftragrec_jax.model_dir import load_model
    from ftragrec_jax.train.ftragrec_task import FTragrecTask

    n_base = len(dataset.train)
    own = int(np.bincount(np.asarray(dataset.train.user)).max())

    def task(**over):
        sets = [
            "model=ftragrec",
            f"pretrained={duorec_dir}",
            "hidden_size=8",
            "retriever_inner_size=16",
            "retrieval_backend=exact",
            *[f"{k}={v}" for k, v in over.items()],
        ]
        return FTragrecTask(load_config(None, sets), dataset)

    assert task(top_k=3).warnings() == []
    small = task(top_k=n_base - own + 1).warnings()
    assert len(small) == 1 and f"knowledge base has {n_base} entries, {own} of them one user's" in small[0]
    assert any("alpha=0" in w for w in task(top_k=3, alpha=0.0).warnings())
    t = dataset.test.take(np.arange(len(dataset.test)))
    got = np.asarray(task(top_k=3).baseline_score_fn()(t.item_seq, t.item_seq_len, {}))
    meta, params, _ = load_model(duorec_dir)
    want = np.asarray(scoring.from_params(meta, params, source="x")(t.item_seq, t.item_seq_len, {}))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
