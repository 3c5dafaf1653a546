"""The on-device path gives the host path's batches, sharded over the mesh's 'data' axis."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnn_flax.data import OnDeviceBatches
from cnn_flax.data.sources.in_memory import ArraySource, build_info
from cnn_flax.errors import UserError


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    images, labels = (
        rng.integers(0, 256, (45, 4, 4, 3), dtype=np.uint8),
        rng.integers(0, 10, 45).astype(np.int32),
    )
    splits = {s: (images, labels) for s in ("train", "val", "test")}
    host = ArraySource(lambda: (build_info("t", tuple("0123456789"), splits), splits))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    return host, OnDeviceBatches(images, labels, mesh), mesh


@pytest.mark.parametrize("drop_remainder,start", [(True, 0), (False, 0), (True, 2)])
def test_on_device_batches_equal_host_batches(setup, drop_remainder, start):
    host, device, mesh = setup
    batch = 2 * mesh.size
    kw = dict(shuffle=True, seed=4, epoch=3, drop_remainder=drop_remainder, start_batch=start)
    want = list(host.batches("train", batch, **kw))
    got = list(device.batches(batch, **kw))
    assert len(got) == len(want) == device.num_batches(batch, drop_remainder) - start
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in b:
            assert a[key].sharding.is_equivalent_to(NamedSharding(mesh, P("data")), a[key].ndim)
            assert np.array_equal(np.asarray(a[key]), b[key]) and a[key].dtype == b[key].dtype


def test_on_device_refuses_bad_batches_and_several_processes(setup, monkeypatch):
    host, device, mesh = setup
    if mesh.size > 1:
        with pytest.raises(UserError, match=f"multiple of the {mesh.size} devices"):
            device.batches(mesh.size + 1, shuffle=False, seed=0, epoch=0)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(UserError, match="data.on_device supports one process; set data.on_device=False"):
        OnDeviceBatches(*host.arrays("train"), mesh)
