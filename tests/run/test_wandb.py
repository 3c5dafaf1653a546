"""W&B: one run per workdir across resumes, read back (offline) with W&B's own reader of its run files."""

import json
import os
import subprocess
import sys
import time

import pytest
from run_configs import tiny_config

from cnn_flax.run.train import train_and_evaluate
from cnn_flax.training.progress import WANDB_RUN_ID_FILE, wandb_run_id

pytest.importorskip("wandb")


def _records(run_folder: str, timeout: float = 120.0) -> list[dict]:
    """The records of an offline run's .wandb file as `wandb leet inspect --json` decodes them, once complete.

    W&B's service process writes the file after `wandb.finish()` returns; read too early it may hold only its
    header. The run is complete when its exit record is there, so wait for that (the earlier CI race).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", run_folder],
                                capture_output=True, text=True, timeout=timeout)
        records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        if any(record["type"] == "exit" for record in records):
            return records
        assert time.monotonic() < deadline, f"no exit record in {run_folder}: {result.stderr[-2000:]}"
        time.sleep(0.5)


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    overrides = {"wandb.enabled": True, "wandb.name": "tiny"}
    train_and_evaluate(tiny_config(num_epochs=1, **overrides), str(workdir))
    train_and_evaluate(tiny_config(num_epochs=2, **overrides), str(workdir))  # the deck's "resume for more epochs"
    run_id = (workdir / WANDB_RUN_ID_FILE).read_text().strip()
    folders = sorted(p for p in (workdir / "wandb").iterdir() if p.name.startswith("offline-run-"))
    assert [p.name.rsplit("-", 1)[1] for p in folders] == [run_id, run_id]  # two starts, one W&B run
    epochs, history = [], json.load(open(workdir / "history.json"))
    for folder in folders:
        records = _records(str(folder))
        run, = [r["run"] for r in records if r["type"] == "run"]
        assert run["run_id"] == run_id and run["display_name"] == "tiny" and run["resume"] is True
        for record in records:
            item = record.get("history", {}).get("item", {})
            if "epoch" in item:
                epochs.append((item["epoch"], item["_step"], item["val_loss"]))
        summary = {k: v for r in records if r["type"] == "summary" for k, v in r["summary"]["update"].items()}
        assert 0.0 <= summary["test_rank1"] <= 1.0
    # Each epoch once, at its optimizer step (4 per epoch), with the value history.json has.
    assert epochs == [(r["epoch"], 4 * r["epoch"], pytest.approx(r["val_loss"])) for r in history]


def test_the_run_id_is_made_once_per_workdir(tmp_path):
    made = iter(["first", "second"])
    assert wandb_run_id(str(tmp_path / "w"), lambda: next(made)) == "first"
    assert wandb_run_id(str(tmp_path / "w"), lambda: next(made)) == "first"
    assert (tmp_path / "w" / WANDB_RUN_ID_FILE).read_text() == "first\n"
    assert len(wandb_run_id(str(tmp_path / "v"))) == 8 and os.path.exists(tmp_path / "v" / WANDB_RUN_ID_FILE)
