"""One train step is the same computation on 1 device, on 8 devices under jit, and under pmap (on 8 and on 2);
num_devices narrows a run to the first devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_flax.errors import UserError
from cnn_flax.models.layers import ConvModule
from cnn_flax.training.metrics import EvalMetrics, TrainMetrics
from cnn_flax.training.optim import build_optimizer, build_schedule
from cnn_flax.training.parallel import JitParallel, PmapParallel, check_batch_size, make_parallel
from cnn_flax.training.state import TrainState
from cnn_flax.training.step import make_eval_step, make_train_step
from configs.common import base


class TinyNet(nn.Module):
    """Conv-BN-ReLU and a dense head: enough to exercise gradient and BatchNorm reductions."""

    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train=False):
        x = ConvModule(4, 3, bn_axis_name=self.bn_axis_name, name="conv")(x, train)
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def preprocess(images, rng):
    return images.astype(jnp.float32) / 255.0


def _batch(n=16):
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            "label": rng.integers(0, 3, n).astype(np.int32)}


def _modern():
    """Every training switch on: LARS with weight decay and clipping under warmup and cosine, label
    smoothing, two micro-batches per update (one example per device each) and a moving average.

    LARS rather than AdamW: Adam divides each gradient by its own size, so gradients that differ only by
    rounding (the sums run in another order on 8 devices; the conv bias in front of BatchNorm has a zero
    gradient up to rounding) become visibly different steps. AdamW's own formula is tested elsewhere."""
    config = base("modern")
    config.optimizer.update(dict(name="lars", learning_rate=0.5, weight_decay=0.05, clip_global_norm=0.5))
    config.schedule.update(dict(name="warmup_cosine", warmup_epochs=1, final_rate=0.001))
    tx = build_optimizer(config.optimizer, build_schedule(config.optimizer, config.schedule, 2, 2))
    return tx, dict(label_smoothing=0.1, accum_steps=2, ema_decay=0.9)


def _run(parallel, steps=2, modern=False):
    model, tx = TinyNet(bn_axis_name=parallel.axis_name), optax.sgd(0.1, momentum=0.9)
    options = {}
    if modern:
        tx, options = _modern()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=True)
    step = make_train_step(model, tx, preprocess, seed=0, axis_name=parallel.axis_name, **options)
    train = parallel.compile_step(step)
    state = parallel.put_replicated(TrainState.create(variables, tx, ema=modern))
    metrics = parallel.put_replicated(TrainMetrics.empty())
    for _ in range(steps):
        state, metrics = train(state, parallel.put_batch(_batch()), metrics)
    evaluate = parallel.compile_step(make_eval_step(model, preprocess, axis_name=parallel.axis_name), donate=())
    batch = dict(_batch(), mask=np.arange(16) < 13)
    eval_metrics = evaluate(state.variables, parallel.put_batch(batch), parallel.put_replicated(EvalMetrics.empty()))
    return parallel.fetch(state), parallel.fetch(metrics).compute(), parallel.fetch(eval_metrics).compute()


def _assert_close(a, b):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6), a, b)


@pytest.mark.parametrize("modern", [False, True], ids=["deck", "every_modern_switch"])
def test_eight_devices_under_jit_and_pmap_equal_one_device(modern):
    assert jax.device_count() == 8
    one = _run(make_parallel("jit", num_devices=1), modern=modern)
    eight = _run(JitParallel(), modern=modern)
    pmapped = _run(PmapParallel(), modern=modern)
    pmapped_on_two = _run(make_parallel("pmap", num_devices=2), modern=modern)
    for other in (eight, pmapped, pmapped_on_two):
        _assert_close(one[0].params, other[0].params)
        _assert_close(one[0].batch_stats, other[0].batch_stats)
        _assert_close(one[0].ema, other[0].ema)
        _assert_close(one[1], other[1])
        _assert_close(one[2], other[2])
    for other in (eight, pmapped):
        _assert_close(one[0].opt_state, other[0].opt_state)
    # The conv bias in front of BatchNorm has a zero gradient, so its momentum holds rounding alone: 2.5e-6 on
    # two devices (gradients and statistics summed in another order), where the other leaves agree to 1e-7.
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-5),
                           one[0].opt_state, pmapped_on_two[0].opt_state)
    assert int(one[0].step) == 2
    assert bool(one[0].ema) == modern
    assert float(one[1]["first_nonfinite_step"]) == 2**31 - 1


def test_batch_size_must_divide_over_devices():
    check_batch_size(64)
    with pytest.raises(UserError, match="batch_size=12 is not divisible by the 8 devices"):
        check_batch_size(12)
    check_batch_size(12, devices=2)
    with pytest.raises(UserError, match="parallel='shard' is not known"):
        make_parallel("shard")


def test_num_devices_narrows_a_run_to_the_first_devices(monkeypatch):
    for mode, count in (("jit", 0), ("jit", 1), ("jit", 3), ("pmap", 0), ("pmap", 2)):
        parallel = make_parallel(mode, num_devices=count)
        assert parallel.devices == jax.devices()[:count or 8] and parallel.device_count == (count or 8)
        replicated = parallel.put_replicated({"w": np.ones(2)})
        assert {d.id for d in replicated["w"].devices()} == set(range(count or 8))
    assert make_parallel("jit", num_devices=3).mesh.shape == {"data": 3}
    for count in (9, -1):
        with pytest.raises(UserError, match=rf"num_devices={count} but this process has 8 device\(s\); set "
                                            r"--config.num_devices to 1..8, or 0"):
            make_parallel("jit", num_devices=count)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(UserError, match="a run of 2 processes uses all their devices: set --config.num_devices=0"):
        make_parallel("jit", num_devices=1)


def test_a_pmap_step_refuses_a_model_whose_batch_norm_does_not_know_the_device_axis():
    with pytest.raises(ValueError, match="create the model with bn_axis_name='batch'"):
        make_train_step(TinyNet(), optax.sgd(0.1), preprocess, seed=0, axis_name="batch")
