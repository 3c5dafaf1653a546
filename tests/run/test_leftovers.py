"""What a killed writer leaves: temporaries that say who wrote them, removed by the next run once their writer is dead.

The helpers of `cnn_flax.atomic` are checked against real processes (one that ended, one that still runs,
a pid taken over by another process, another machine's file); then `--mode=prepare` of a photo folder is
killed with SIGKILL while it writes each split, and the same command run again must leave exactly the files
of a run never killed, with the same content. `--mode=export`, killed at random moments and at a fixed one
while it replaces an export, is checked in the soak (test_soak.py), which trains the run it exports anyway.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from killing import (
    assert_same_hdf5,
    freeze_and_kill,
    launch,
    listing,
    partials,
    prepare_args,
    running,
    start,
    wait_for,
    write_digit_photos,
)

from cnn_flax import atomic

SPLITS = ("train", "val", "test")


# --- the helpers, on real processes ---------------------------------------------------------------------------

def _ended_process() -> tuple[int, int]:
    """The pid and start time of a process that has run and ended."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    start = atomic.process_start(child.pid)
    child.communicate(b"")
    return child.pid, start


def _touch(path: str, folder: bool = False, age: float = 0.0) -> str:
    if folder:
        os.makedirs(os.path.join(path, "inside"))
        open(os.path.join(path, "inside", "part"), "wb").close()
    else:
        with open(path, "wb") as handle:
            handle.write(b"half")
    if age:
        stamp = time.time() - age
        inside = [os.path.join(base, name) for base, folders, files in os.walk(path) for name in folders + files]
        for entry in [*inside, path]:
            os.utime(entry, (stamp, stamp))
    return os.path.basename(path)


def test_process_start_is_the_kernels_and_tells_a_reused_pid():
    with open(f"/proc/{os.getpid()}/stat") as handle:
        field_22 = int(handle.read().rsplit(")", 1)[1].split()[19])
    assert atomic.process_start(os.getpid()) == field_22 > 0
    assert atomic.process_alive(os.getpid(), field_22)
    assert not atomic.process_alive(os.getpid(), field_22 - 1)  # this pid, but another process's start time
    assert atomic.process_alive(os.getpid(), 0)  # start unknown: a running pid counts as the writer
    pid, start = _ended_process()
    assert start > 0 and not atomic.process_alive(pid, start)


def test_partial_path_names_host_pid_and_start(tmp_path):
    target = tmp_path / "train.hdf5"
    path = atomic.partial_path(target)
    name = os.path.basename(path)
    assert os.path.dirname(path) == str(tmp_path)
    assert name.startswith(f".train.hdf5.partial@{atomic.host_name()}.{os.getpid()}."
                           f"{atomic.process_start(os.getpid())}.")
    assert len(name.rsplit(".", 1)[1]) == 8 and atomic.partial_path(target) != path  # two temporaries may coexist


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path, caplog):
    here, me = atomic.host_name(), f"{os.getpid()}.{atomic.process_start(os.getpid())}"
    dead_pid, dead_start = _ended_process()
    dead = f"{dead_pid}.{dead_start}"
    reused = f"{os.getpid()}.{atomic.process_start(os.getpid()) + 7}"  # a live pid, but not the writer
    folder = str(tmp_path)
    removed = {_touch(f"{folder}/.train.hdf5.partial@{here}.{dead}.0123abcd"),
               _touch(f"{folder}/.train.hdf5.partial@{here}.{reused}.0123abcd"),
               _touch(f"{folder}/.train.hdf5.partial@{here}.{dead}.89abcdef", folder=True),
               _touch(f"{folder}/.train.hdf5.partial@node-7.cluster.1234.99.0123abcd", age=3 * 24 * 3600),
               _touch(f"{folder}/train.hdf5.partial-{dead_pid}", age=7200),  # names of earlier versions
               _touch(f"{folder}/.train.hdf5.partial-{dead_pid}.old", folder=True, age=7200),
               _touch(f"{folder}/.train.hdf5.{dead_pid}.0123abcd.tmp", age=7200)}
    kept = {_touch(f"{folder}/.train.hdf5.partial@{here}.{me}.0123abcd"),  # this process: writing now
            _touch(f"{folder}/.train.hdf5.partial@node-7.cluster.1234.99.456789ab"),  # elsewhere, recent
            _touch(f"{folder}/.val.hdf5.partial@{here}.{dead}.0123abcd"),  # another target's
            _touch(f"{folder}/train.hdf5.partial-{dead_pid}.x"),
            _touch(f"{folder}/.train.hdf5.partial-{dead_pid}", age=60),  # of an earlier version, but recent
            _touch(f"{folder}/train.hdf5")}
    caplog.set_level("INFO", logger="cnn_flax")
    gone = atomic.remove_stale_partials(os.path.join(folder, "train.hdf5"))
    assert sorted(os.path.basename(p) for p in gone) == sorted(removed)
    assert sorted(os.listdir(folder)) == sorted(kept)
    assert "written on node-7.cluster (pid 1234), which this machine cannot check" in caplog.text
    assert atomic.remove_stale_partials(os.path.join(folder, "nowhere", "x")) == []


def test_atomic_file_removes_what_a_killed_write_left(tmp_path):
    target = tmp_path / "history.json"
    pid, start = _ended_process()
    stale = tmp_path / f".history.json.partial@{atomic.host_name()}.{pid}.{start}.0123abcd"
    stale.write_text("[{")
    atomic.write_json(target, [1])
    assert sorted(os.listdir(tmp_path)) == ["history.json"] and json.loads(target.read_text()) == [1]


# --- prepare, killed ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("photos"))
    write_digit_photos(root)
    return root


@pytest.fixture(scope="module")
def clean_prepare(photos, tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("clean") / "prepared")
    result = launch(prepare_args(photos, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert listing(data_dir) == ["skipped.txt", "test.hdf5", "train.hdf5", "val.hdf5"]
    return data_dir


def writing(data_dir: str, split: str):
    """The moment `split` is being written: its temporary is there, the splits before it are done."""
    before = SPLITS[:SPLITS.index(split)]
    return lambda: (any(name.startswith(f".{split}.hdf5.partial@") for name in partials(data_dir))
                    and all(os.path.isfile(os.path.join(data_dir, f"{s}.hdf5")) for s in before))


def assert_same_prepare(data_dir: str, clean: str) -> None:
    assert listing(data_dir) == listing(clean)
    for split in SPLITS:
        assert_same_hdf5(os.path.join(clean, f"{split}.hdf5"), os.path.join(data_dir, f"{split}.hdf5"))
    assert open(os.path.join(data_dir, "skipped.txt")).read() == open(os.path.join(clean, "skipped.txt")).read()


@pytest.mark.slow
def test_prepare_killed_while_writing_each_split_then_rerun_equals_a_clean_prepare(photos, clean_prepare, tmp_path):
    data_dir, log_path = str(tmp_path / "prepared"), str(tmp_path / "prepare.log")
    for split in SPLITS:
        run = start(prepare_args(photos, data_dir), log_path)
        wait_for(writing(data_dir, split), run, log_path, f"{split}.hdf5 was being written")
        freeze_and_kill(run)
        # Exactly one temporary: the killed run's own. The run before it left one too, removed on the way.
        left = partials(data_dir)
        assert len(left) == 1 and left[0].startswith(f".{split}.hdf5.partial@") and f".{run.pid}." in left[0], left
    result = launch(prepare_args(photos, data_dir), log_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_prepare(data_dir, clean_prepare)


@pytest.mark.slow
def test_a_prepare_beside_a_live_one_leaves_its_temporary_alone(photos, clean_prepare, tmp_path):
    data_dir, log_path = str(tmp_path / "prepared"), str(tmp_path / "prepare.log")
    first = start(prepare_args(photos, data_dir), log_path)
    try:
        wait_for(writing(data_dir, "train"), first, log_path, "train.hdf5 was being written")
        first.send_signal(signal.SIGSTOP)  # alive, its temporary half-written
        theirs = partials(data_dir)
        result = launch(["--overwrite", *prepare_args(photos, data_dir)], log_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert partials(data_dir) == theirs  # still there: its writer runs
    finally:
        freeze_and_kill(first)
    assert not running(first.pid) and partials(data_dir) == theirs
    result = launch(prepare_args(photos, data_dir), log_path)  # nothing to write, but the dead one's file goes
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_prepare(data_dir, clean_prepare)
