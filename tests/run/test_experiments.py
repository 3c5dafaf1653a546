"""Experiment features around a run: ablations as overrides, W&B offline logging, test-time augmentation."""

import json
import os

import pytest
from run_configs import tiny_config

from cnn_flax.errors import UserError
from cnn_flax.run.ablation import apply_overrides, parse_variants, run_ablation
from cnn_flax.run.train import train_and_evaluate


def test_variants_parse_into_typed_overrides():
    variants = parse_variants("baseline:;elu:model.activation=elu,num_epochs=3;fast:optimizer.learning_rate=0.1")
    assert variants == {"baseline": [], "elu": [("model.activation", "elu"), ("num_epochs", 3)],
                        "fast": [("optimizer.learning_rate", 0.1)]}
    config = apply_overrides(tiny_config(), variants["elu"])
    assert config.model.activation == "elu" and config.num_epochs == 3
    with pytest.raises(UserError, match="unknown config key 'model.depth'"):
        apply_overrides(tiny_config(), [("model.depth", 3)])
    with pytest.raises(UserError, match="is not KEY=VALUE"):
        parse_variants("a:model.activation")


def test_ablation_writes_one_table_and_one_plot(tmp_path):
    table = run_ablation(tiny_config(num_epochs=1), str(tmp_path),
                         "conv_act_bn:model.bn_order=conv_act_bn;conv_bn_act:model.bn_order=conv_bn_act")
    lines = table.splitlines()
    assert lines[0].split() == ["variant", "rank-1", "rank-5", "loss"]
    assert [line.split()[0] for line in lines[-2:]] == ["conv_act_bn", "conv_bn_act"]
    for name in ("conv_act_bn", "conv_bn_act"):
        metrics = json.load(open(tmp_path / name / "metrics.json"))
        assert f"{100 * metrics['rank1']:.2f}" in table
    assert (tmp_path / "ablation.txt").read_text().strip() == table.strip()
    assert os.path.getsize(tmp_path / "ablation.png") > 1000
    config = json.load(open(tmp_path / "conv_bn_act" / "config.json"))
    assert config["model"]["bn_order"] == "conv_bn_act"


def test_wandb_offline_run_and_test_time_augmentation(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    config = tiny_config(num_epochs=2, tta=True, **{"wandb.enabled": True, "wandb.name": "tiny"})
    train_and_evaluate(config, str(workdir))
    runs = [p for p in (workdir / "wandb").iterdir() if p.name.startswith("offline-run-")]
    assert len(runs) == 1
    records = runs[0] / f"run-{runs[0].name.split('-')[-1]}.wandb"
    assert records.stat().st_size > 0
    data = records.read_bytes()
    for scalar in (b"train_loss", b"val_accuracy", b"learning_rate", b"test_rank1"):
        assert scalar in data, scalar
    plain = json.load(open(workdir / "metrics.json"))
    flipped = json.load(open(workdir / "tta_metrics.json"))
    assert plain["num_examples"] == flipped["num_examples"] == 64
    assert (workdir / "tta_report.txt").exists()
