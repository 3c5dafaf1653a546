"""The batch contract: epoch order, process shards, resume, evaluation padding, prefetching, digits."""

import gc
import math
import threading

import numpy as np
import pytest
from ml_collections import ConfigDict

from cnn_flax.bench.input import measure_input
from cnn_flax.data import epoch_order, make_source
from cnn_flax.data.sources.in_memory import ArraySource, build_info
from cnn_flax.errors import UserError


def synthetic_source(n: int = 37, size: int = 4, prefetch: int = 2) -> ArraySource:
    """Image i is filled with i % 251 and has label i, so every row names the example it came from."""
    images = (np.arange(n) % 251).astype(np.uint8)[:, None, None, None] * np.ones((1, size, size, 3), np.uint8)
    labels = np.arange(n, dtype=np.int32)
    splits = {s: (images, labels) for s in ("train", "val", "test")}
    return ArraySource(lambda: (build_info("synthetic", tuple(map(str, range(n))), splits), splits), prefetch)


def epoch(source, batch, **kw):
    args = dict(shuffle=True, seed=3, epoch=0, drop_remainder=False) | kw
    return list(source.batches("train", batch, **args))


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(1, 0, 100)
    assert sorted(a.tolist()) == list(range(100))
    assert np.array_equal(a, epoch_order(1, 0, 100))
    assert not np.array_equal(a, epoch_order(1, 1, 100))
    assert not np.array_equal(a, epoch_order(2, 0, 100))


def test_every_example_once_per_epoch_in_a_new_order():
    source = synthetic_source()
    orders = []
    for e in range(3):
        batches = epoch(source, 8, epoch=e)
        assert len(batches) == 5 == source.num_batches("train", 8, drop_remainder=False)
        labels = np.concatenate([b["label"][b["mask"]] for b in batches])
        assert sorted(labels.tolist()) == list(range(37))
        assert np.array_equal(labels, epoch_order(3, e, 37))
        orders.append(labels)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    plain = epoch(source, 8, shuffle=False)
    assert np.array_equal(np.concatenate([b["label"][b["mask"]] for b in plain]), np.arange(37))


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_process_shards_are_disjoint_cover_and_rebuild_the_global_batches(drop_remainder):
    source = synthetic_source()
    whole = epoch(source, 8, drop_remainder=drop_remainder)
    shards = [epoch(source, 8, drop_remainder=drop_remainder, process_index=p, process_count=4) for p in range(4)]
    assert all(len(s) == len(whole) for s in shards)
    seen = []
    for i, global_batch in enumerate(whole):
        for key in global_batch:
            assert np.array_equal(np.concatenate([s[i][key] for s in shards]), global_batch[key])
        for s in shards:
            assert s[i]["image"].shape == (2, 4, 4, 3) and s[i]["image"].dtype == np.uint8
            assert s[i]["label"].dtype == np.int32
            seen.extend(s[i]["label"][s[i]["mask"]] if not drop_remainder else s[i]["label"])
    expected = 32 if drop_remainder else 37
    assert len(seen) == len(set(seen)) == expected
    assert ("mask" in whole[0]) is not drop_remainder


def test_start_batch_resumes_with_the_tail_of_the_epoch():
    source = synthetic_source()
    full = epoch(source, 4, epoch=2, process_index=1, process_count=2)
    for k in (0, 3, len(full)):
        tail = epoch(source, 4, epoch=2, process_index=1, process_count=2, start_batch=k)
        assert len(tail) == len(full) - k
        for a, b in zip(tail, full[k:], strict=True):
            assert all(np.array_equal(a[key], b[key]) for key in b)


def test_evaluation_pads_with_zeros_and_masks():
    source = synthetic_source()
    last = epoch(source, 16, shuffle=False, process_index=0, process_count=2)[-1]
    assert last["mask"].tolist() == [True] * 5 + [False] * 3
    assert last["label"].tolist() == [32, 33, 34, 35, 36, 0, 0, 0]
    assert not last["image"][5:].any() and (last["image"][4] == 36).all()
    empty = epoch(source, 16, shuffle=False, process_index=1, process_count=2)[-1]
    assert not empty["mask"].any() and not empty["image"].any() and empty["image"].shape == (8, 4, 4, 3)
    dropped = epoch(source, 16, drop_remainder=True)
    assert len(dropped) == 2 and "mask" not in dropped[0]


def test_prefetch_thread_ends_when_the_iterator_is_abandoned_or_fails():
    def prefetchers():
        return [t for t in threading.enumerate() if t.name == "cnn_flax-data-prefetch"]

    source = synthetic_source(n=500, prefetch=2)
    it = source.batches("train", 2, shuffle=True, seed=0, epoch=0, drop_remainder=True)
    next(it)
    assert len(prefetchers()) == 1
    del it
    gc.collect()
    assert prefetchers() == []

    def broken(split, plan):
        yield {"label": np.zeros(1)}
        raise RuntimeError("disk gone")

    source._stream = broken
    with pytest.raises(RuntimeError, match="disk gone"):
        list(source.batches("train", 2, shuffle=False, seed=0, epoch=0, drop_remainder=True))
    assert prefetchers() == []


def test_bad_batch_arguments_raise_user_errors():
    source = synthetic_source()
    with pytest.raises(UserError, match="batch_size=6 must be a positive multiple of the number of processes"):
        source.batches("train", 6, shuffle=True, seed=0, epoch=0, drop_remainder=True, process_count=4)
    with pytest.raises(UserError, match="unknown split 'dev'"):
        source.batches("dev", 4, shuffle=True, seed=0, epoch=0, drop_remainder=True)
    with pytest.raises(UserError, match=r"start_batch=10 is outside \[0, 9\]"):
        source.batches("train", 4, shuffle=True, seed=0, epoch=0, drop_remainder=True, start_batch=10)


def test_make_source_rejects_unknown_names_and_foreign_sizes():
    with pytest.raises(UserError, match="data.name='mnist' is unknown; use one of digits, cifar10, tiny_imagenet"):
        make_source(ConfigDict({"name": "mnist"}))
    with pytest.raises(UserError, match="data.image_size=64 but cifar10 images are 32x32"):
        make_source(ConfigDict({"name": "cifar10", "image_size": 64}))
    with pytest.raises(UserError, match="data.dir is empty"):
        _ = make_source(ConfigDict({"name": "tiny_imagenet", "image_size": 64, "dir": "", "root": ""})).info


def test_a_data_key_the_dataset_does_not_read_is_an_error_unless_left_at_its_default():
    with pytest.raises(UserError, match=r"^data.manual_dir does not apply to data.name='cifar10'; its keys are "
                                        r"image_size, normalize, augment, on_device, prefetch, dir$"):
        make_source(ConfigDict({"name": "cifar10", "manual_dir": "/tars"}))
    with pytest.raises(UserError, match=r"data.color does not apply to data.name='digits'; its keys are .*"
                                        r"split_seed, digits_test_fraction"):
        make_source(ConfigDict({"name": "digits", "color": True}))
    make_source(ConfigDict({"name": "cifar10", "manual_dir": "", "test_per_class": 50}))  # base()'s defaults


def test_digits_split_resize_and_channels():
    from sklearn.datasets import load_digits

    source = make_source(ConfigDict({"name": "digits", "image_size": 8, "split_seed": 0}))
    info = source.info
    assert info.split_sizes == {"train": 1347, "val": 450, "test": 450}
    assert info.class_names == tuple("0123456789") and info.image_shape == (8, 8, 3)
    (train_x, train_y), (test_x, test_y) = source.arrays("train"), source.arrays("test")
    assert source.arrays("val")[0] is test_x
    raw = load_digits()
    grey = np.round(raw.images * 255 / 16).astype(np.uint8)
    # Read from scikit-learn's file without importing scikit-learn: exactly its loader's digits, every one once.
    assert sorted(zip((im.tobytes() for im in grey), raw.target, strict=True)) == sorted(
        zip((im[..., 0].tobytes() for im in np.concatenate([train_x, test_x])), np.concatenate([train_y, test_y]),
            strict=True))
    assert (train_x == train_x[..., :1]).all()
    per_class = np.bincount(test_y, minlength=10)
    assert np.all(np.abs(per_class - 0.25 * np.bincount(raw.target)) < 1)
    assert len(set(test_y[:20].tolist())) > 5  # in random order, not class by class
    assert np.allclose(info.mean_rgb, train_x.reshape(-1, 3).mean(0), atol=1e-3)
    assert np.allclose(info.mean_image, train_x.mean(0), atol=1e-3)
    big = make_source(ConfigDict({"name": "digits"}))
    assert big.info.image_shape == (32, 32, 3) and big.arrays("train")[0].dtype == np.uint8


def test_digits_resized_once_per_size_give_every_source_its_own_arrays():
    first = make_source(ConfigDict({"name": "digits", "image_size": 12})).arrays("train")[0]
    kept = first.copy()
    first[:] = 0  # a source's arrays are its own: writing into them changes no later source's
    again = make_source(ConfigDict({"name": "digits", "image_size": 12})).arrays("train")[0]
    np.testing.assert_array_equal(again, kept)
    assert again.flags.writeable and not np.shares_memory(again, first)


def test_digits_come_from_scikit_learns_own_loader_where_its_file_is_elsewhere(monkeypatch):
    from cnn_flax.data.sources import digits

    from_file = digits.read_digits()
    monkeypatch.setattr(digits, "_digits_file", lambda: None)
    from_loader = digits.read_digits()
    for a, b in zip(from_file, from_loader, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fraction", [0.25, 0.1, 0.5, 0.9])
def test_stratified_split_gives_each_class_its_share_and_depends_only_on_the_seed(fraction):
    from cnn_flax.data.sources.digits import stratified_split

    labels = np.repeat(np.arange(7), [3, 50, 51, 9, 120, 1, 17])  # uneven classes, one of a single item
    train, test = stratified_split(labels, fraction, seed=5)
    num_test = math.ceil(fraction * len(labels))
    assert len(test) == num_test and len(train) + len(test) == len(labels)
    assert sorted([*train, *test]) == list(range(len(labels)))
    shares = np.bincount(labels[test], minlength=7) - np.bincount(labels) * num_test / len(labels)
    assert np.all(np.abs(shares) < 1), shares
    again, other = stratified_split(labels, fraction, seed=5), stratified_split(labels, fraction, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again, strict=True))
    assert not np.array_equal(test, other[1])


def test_digits_data_and_their_report_import_neither_scikit_learn_nor_scipy():
    import subprocess
    import sys

    code = ("import sys; from cnn_flax.data import make_source; from ml_collections import ConfigDict; "
            "from cnn_flax.evaluation.classification import classification_report_text, plot_confusion_matrix; "
            "import tempfile, os; s = make_source(ConfigDict({'name': 'digits', 'image_size': 8})); "
            "x, y = s.arrays('test'); classification_report_text(y, y, s.info.class_names); "
            "plot_confusion_matrix(y, y, s.info.class_names, os.path.join(tempfile.mkdtemp(), 'cm.png')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_measure_input_reports_a_rate():
    assert measure_input(make_source(ConfigDict({"name": "digits"})), "train", 64, 0.2) > 0
