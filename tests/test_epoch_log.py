"""The console's epoch line and setting warnings, from metrics.jsonl-shaped records."""

from __future__ import annotations

from ftragrec_jax.config import Config
from ftragrec_jax.train.epoch_log import epoch_line, fallback_warning, setting_warnings, valid_shown

VALID = {"recall@10": 0.05, "mrr@10": 0.0213, "ndcg@10": 0.0301, "hit@10": 0.05, "mrr@5": 0.02}


def test_duorec_line_has_terms_valid_and_times_but_not_bookkeeping():
    rec = {
        "epoch": 3,
        "step": 40,
        "train_time_s": 41.23,
        "compile_time_s": 60.0,
        "loss": 9.5,
        "ce": 9.25,
        "sem_nce": 2.5,
        "grad_norm": 1.5,
        "valid": VALID,
        "valid_time_s": 3.14,
        "best": True,
    }
    line = epoch_line(rec, epochs=50, valid_metric="mrr@10", patience=0, stopping_step=10)
    assert line.startswith("epoch  3  loss 9.5000 (ce 9.2500, sem_nce 2.5000)")
    assert "valid mrr@10 0.0213 ndcg@10 0.0301 hit@10 0.0500 best" in line
    assert line.endswith("train 41.2s eval 3.1s")
    assert "grad_norm" not in line and "step" not in line and "compile" not in line and "fallback" not in line


def test_ftragrec_line_shows_fallback_and_index_refresh_and_patience():
    rec = {
        "epoch": 1,
        "step": 4,
        "train_time_s": 2.0,
        "loss": 8.0,
        "rec_loss": 7.0,
        "enhanced_rec_loss": 1.5,
        "kl_loss": 0.25,
        "fallback_fraction": 0.031,
        "neighbours": 4.8,
        "grad_norm": 0.1,
        "index_refresh_time_s": 1.234,
        "valid": VALID,
        "valid_time_s": 1.0,
    }
    line = epoch_line(rec, epochs=2, valid_metric="mrr@10", patience=2, stopping_step=10)
    assert "loss 8.0000 (rec_loss 7.0000, enhanced_rec_loss 1.5000, kl_loss 0.2500)" in line
    assert "fallback 3.1% (4.8 nb)" in line and "index refreshed 1.2s" in line and "patience 2/10" in line
    del rec["index_refresh_time_s"], rec["valid"], rec["valid_time_s"]
    line = epoch_line(rec, epochs=2, valid_metric="mrr@10", patience=2, stopping_step=10)
    assert "index kept" in line and "valid" not in line and line.endswith("train 2.0s")


def test_valid_metrics_follow_the_selection_metric():
    assert valid_shown("mrr@10") == ("mrr@10", "ndcg@10", "hit@10")
    assert valid_shown("recall@20") == ("recall@20", "mrr@20", "ndcg@20", "hit@20")


def test_warnings_for_suspicious_settings():
    assert setting_warnings(Config()) == []
    got = setting_warnings(Config(mask_history=True, eval_step=5, epochs=2))
    assert len(got) == 2 and "mask_history" in got[0] and "eval_step=5 > epochs=2" in got[1]
    assert fallback_warning({"epoch": 0, "fallback_fraction": 0.1}, 0.6) is None
    assert "quality_threshold=0.9" in fallback_warning({"epoch": 0, "fallback_fraction": 0.8}, 0.9)
    assert fallback_warning({"epoch": 0, "loss": 1.0}, 0.6) is None
