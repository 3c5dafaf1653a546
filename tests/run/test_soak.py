"""Soak: SIGKILL at seeded random moments of training (some inside a checkpoint save; early stopping and the
plateau's rate lowering on), of prepare and of export, restarting the same command each time; the finished
result must equal an uninterrupted run's, with nothing left.

Export is also killed at one fixed moment of an `--overwrite` (its new SavedModel half-written while an
export exists): the old export must stay whole until the rerun replaces it.

Each writer's uninterrupted run is timed first and the kill moments are drawn (seeded) inside that time, so
every kill lands while the run works: training's from its start, prepare's and export's from the moment
their first temporary appears (their start-up, importing libraries, takes most of their time here). What
each kill met is printed (run with -s to see it; docs/reliability.md quotes a run). Training's history must
be equal bit for bit, prepare's HDF5 files in content, the export in its files and outputs; no temporary
file, temporary checkpoint folder or empty `interrupted/` may remain.
"""

import os
import random
import re
import shutil
import time

import numpy as np
import pytest
from killing import (
    assert_same_hdf5,
    assert_same_tree,
    export_contents,
    export_outputs,
    freeze_and_kill,
    history,
    launch,
    listing,
    partials,
    prepare_args,
    saved,
    start,
    wait_for,
    write_digit_photos,
)

SEED = 26
# Training with the Keras-style controls on: lowering the rate on a plateau (it acts twice in 7 epochs) and
# early stopping (patient enough to watch every epoch) keep state a resumed run must get back exactly.
EPOCHS = 7
TRAIN = ["--config", "configs/quickstart.py", "--config.data.image_size=16", "--config.batch_size=32",
         "--config.steps_per_epoch=6", f"--config.num_epochs={EPOCHS}", "--config.log_every_steps=1",
         "--config.eval_steps=2", "--config.export.onnx=no", "--config.optimizer.learning_rate=0.02",
         "--config.schedule.name=constant", "--config.early_stopping.enabled=True",
         "--config.early_stopping.patience=4", "--config.early_stopping.min_delta=0.05",
         "--config.early_stopping.restore_best_weights=True", "--config.reduce_lr_on_plateau.enabled=True",
         "--config.reduce_lr_on_plateau.patience=1", "--config.reduce_lr_on_plateau.min_delta=0.05",
         "--config.reduce_lr_on_plateau.factor=0.5", "--config.reduce_lr_on_plateau.cooldown=1"]
LEFTOVER = re.compile(r"\.partial[@-]|orbax-checkpoint-tmp")


def leftovers(folder: str) -> list[str]:
    """Temporaries of any writer, anywhere under `folder`, and an `interrupted/` checkpoint folder."""
    return [path for path in listing(folder) if LEFTOVER.search(path) or re.search(r"(^|/)interrupted$", path)]


def timed(args: list[str], folder: str, writing: re.Pattern | None = None) -> float:
    """Runs `args` to its end; returns the span in which kills are drawn: from its start to its end, or with
    `writing`, from the first to the last moment a path under `folder` matching it was seen."""
    run = start(args, os.devnull)
    first = last = None
    started = time.monotonic()
    while run.poll() is None:
        if writing is not None and any(writing.search(p) for p in listing(folder)):
            first, last = first or time.monotonic(), time.monotonic()
        time.sleep(0.002)
    assert run.returncode == 0 and (writing is None or first is not None), f"{args} failed or never wrote"
    return last - first if writing is not None else time.monotonic() - started


def kill_at(args: list[str], log_path: str, seconds: float, folder: str, writing: re.Pattern | None = None) -> str:
    """Starts `args` and SIGKILLs it `seconds` after a new path under `folder` matching `writing` appears
    (after its start without one); returns what the kill met, in words."""
    before = set(listing(folder)) if os.path.isdir(folder) else set()  # what an earlier kill left
    run = start(args, log_path)
    launched = started = time.monotonic()
    while run.poll() is None:
        if writing is not None:
            if any(writing.search(p) for p in set(listing(folder)) - before):
                started, writing = time.monotonic(), None
        elif time.monotonic() - started >= seconds:
            break
        time.sleep(0.002)
    if run.poll() is not None:
        return f"finished on its own after {time.monotonic() - launched:.1f} s"
    now = time.monotonic()
    freeze_and_kill(run)
    left = leftovers(folder)
    outer = [p for p in left if not any(p.startswith(q + "/") for q in left)]  # a folder, not its contents
    after = f" ({now - started:.2f} s after its first temporary)" if started != launched else ""
    return f"killed {now - launched:.2f} s after its start{after}; left {', '.join(outer) or 'no temporary'}"


def report(writer: str, outcomes: list[str]) -> None:
    for number, outcome in enumerate(outcomes, 1):
        print(f"soak {writer} kill {number}: {outcome}")


@pytest.mark.slow
def test_training_prepare_and_export_survive_kills_at_random_moments(tmp_path):
    rng = random.Random(SEED)
    log_path = str(tmp_path / "soak.log")

    # Training: two kills at moments of the whole run, and one as soon as a checkpoint is being written.
    reference = str(tmp_path / "train_reference")
    duration = timed([*TRAIN, "--workdir", reference], reference)
    workdir = str(tmp_path / "train")
    outcomes = []
    for kind in rng.sample(["moment", "moment", "saving"], 3):
        saving = re.compile(r"orbax-checkpoint-tmp") if kind == "saving" else None
        moment = 0.0 if saving else rng.uniform(0.2, 0.95) * duration
        outcomes.append(kill_at([*TRAIN, "--workdir", workdir], log_path, moment, workdir, saving))
    result = launch([*TRAIN, "--workdir", workdir])
    assert result.returncode == 0, result.stderr[-3000:]
    report("training", outcomes)
    expected = history(reference)
    assert any("lr_reduced_to" in record for record in expected)  # the plateau acted: its state had to resume
    assert history(workdir) == expected
    assert_same_tree(saved(workdir, EPOCHS), saved(reference, EPOCHS))
    assert not leftovers(workdir)
    events = re.compile(r"events\.out\.tfevents\.")  # TensorBoard's files: one per start, by design
    top = sorted(n for n in os.listdir(workdir) if not events.match(n))
    assert top == sorted(n for n in os.listdir(reference) if not events.match(n))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [f"epoch_{e}" for e in range(1, EPOCHS + 1)]

    # Prepare of a photo folder: three kills.
    photos = str(tmp_path / "photos")
    write_digit_photos(photos)
    clean = str(tmp_path / "prepared_clean")
    temporary = re.compile(r"\.partial@")
    duration = timed(prepare_args(photos, clean), clean, temporary)  # from the first temporary to the end
    data_dir = str(tmp_path / "prepared")
    outcomes = [kill_at(prepare_args(photos, data_dir), log_path, rng.uniform(0.0, 0.75) * duration, data_dir,
                        temporary) for _ in range(3)]
    result = launch(prepare_args(photos, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    report("prepare", outcomes)
    assert listing(data_dir) == listing(clean) == ["skipped.txt", "test.hdf5", "train.hdf5", "val.hdf5"]
    for split in ("train", "val", "test"):
        assert_same_hdf5(os.path.join(clean, f"{split}.hdf5"), os.path.join(data_dir, f"{split}.hdf5"))

    # Export --overwrite of the trained run: two kills (the first one before any export exists).
    export_args = [*TRAIN, "--workdir", workdir, "--mode=export", "--overwrite"]
    clean_workdir = str(tmp_path / "export_clean")
    shutil.copytree(reference, clean_workdir)
    duration = timed([*TRAIN, "--workdir", clean_workdir, "--mode=export"], clean_workdir, temporary)
    export, clean_export = os.path.join(workdir, "export"), os.path.join(clean_workdir, "export")
    clean_outputs = export_outputs(clean_export)  # each runtime's probabilities, read once
    outcomes = []
    for _ in range(2):
        outcomes.append(kill_at(export_args, log_path, rng.uniform(0.0, 0.75) * duration, workdir, temporary))
        # Nothing that looks finished unless it is: an export/ there is the whole export.
        assert not os.path.exists(export) or export_contents(export) == export_contents(clean_export)
    result = launch(export_args)
    assert result.returncode == 0, result.stderr[-3000:]
    report("export", outcomes)
    assert_same_export(export, clean_export, clean_outputs)
    assert not leftovers(workdir) and not partials(workdir)

    # And at a fixed moment of --overwrite, with an export there: while the new SavedModel is being written
    # inside the temporary folder. The old export stays whole beside the killed run's one temporary.
    run = start(export_args, log_path)
    wait_for(lambda: any(os.path.exists(os.path.join(workdir, p, "saved_model")) for p in partials(workdir)),
             run, log_path, "the new export's SavedModel was being written")
    freeze_and_kill(run)
    left = partials(workdir)
    assert len(left) == 1 and left[0].startswith(".export.partial@") and f".{run.pid}." in left[0], left
    assert export_contents(export) == export_contents(clean_export)
    result = launch(export_args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_export(export, clean_export, clean_outputs)
    assert not leftovers(workdir) and not partials(workdir)


def assert_same_export(export: str, clean: str, clean_outputs: dict[str, np.ndarray]) -> None:
    """Files, export.json without timings, the JAX program, and the clean export's outputs in every runtime."""
    assert export_contents(export) == export_contents(clean)
    outputs = export_outputs(export)
    assert sorted(outputs) == sorted(clean_outputs)
    for runtime, probabilities in clean_outputs.items():
        np.testing.assert_array_equal(outputs[runtime], probabilities, err_msg=runtime)
