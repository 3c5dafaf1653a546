"""The modern training switches against independent computations: schedules in closed form, the
label-smoothed loss, AdamW and LARS with their masks, clipping, the moving average, accumulation."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_flax.data.augment.mixing import Mixing
from cnn_flax.errors import UserError
from cnn_flax.models.layers import ConvModule
from cnn_flax.run.ablation import apply_overrides, parse_variants
from cnn_flax.training.metrics import TrainMetrics
from cnn_flax.training.optim import (
    build_optimizer,
    build_schedule,
    check_accum_steps,
    describe_optimizer,
    learning_rate_plan,
)
from cnn_flax.training.state import TrainState, ema_update
from cnn_flax.training.step import make_train_step, micro_batches_unrolled, split_micro_batches, training_loss
from configs import googlenet_imagenet
from configs.common import base

SPE = 7


def _sections(optimizer=None, schedule=None):
    config = base("test")
    config.optimizer.update(optimizer or {})
    config.schedule.update(schedule or {})
    return config.optimizer, config.schedule


def _rates(optimizer, schedule, num_epochs, steps):
    lr = build_schedule(*_sections(optimizer, schedule), num_epochs, SPE)
    return [float(lr(step)) for step in steps]


# -- schedules --------------------------------------------------------------------------------------

def test_warmup_cosine_at_its_boundary_steps():
    base_rate, final, warm, epochs = 0.1, 0.001, 2 * SPE, 10
    cosine = epochs * SPE - warm
    expected = {0: base_rate / warm, warm - 1: base_rate, warm: base_rate,
                warm + cosine // 2: (base_rate + final) / 2,
                epochs * SPE - 1: final + (base_rate - final) * 0.5 * (1 + math.cos(math.pi * (cosine - 1) / cosine)),
                epochs * SPE: final}
    rates = _rates(dict(learning_rate=base_rate), dict(name="warmup_cosine", warmup_epochs=2, final_rate=final),
                   epochs, expected)
    np.testing.assert_allclose(rates, list(expected.values()), rtol=1e-5)  # float32 rates


def test_exponential_staircase_is_the_googlenet_table():
    config = googlenet_imagenet.get_config()
    lr = build_schedule(config.optimizer, config.schedule, config.num_epochs, SPE)
    for epoch in range(config.num_epochs):  # first and last step of every epoch: 0.01 · 0.96^(epoch // 8)
        for step in (epoch * SPE, (epoch + 1) * SPE - 1):
            assert float(lr(step)) == pytest.approx(0.01 * 0.96 ** (epoch // 8), rel=1e-6)
    plan = learning_rate_plan(config.optimizer, config.schedule, config.num_epochs, SPE)
    assert plan[:3] == ["epochs 1-8: lr 0.01", "epochs 9-16: lr 0.0096", "epochs 17-24: lr 0.009216"]
    assert len(plan) == 15 and plan[-1].startswith("epochs 113-120: lr ")


def test_exponential_without_staircase_decays_every_step():
    steps = (0, 1, 2 * SPE, 5 * SPE + 3)
    rates = _rates(dict(learning_rate=0.5), dict(name="exponential", decay_rate=0.9, decay_epochs=2), 10, steps)
    np.testing.assert_allclose(rates, [0.5 * 0.9 ** (s / (2 * SPE)) for s in steps], rtol=1e-6)


def test_warmup_goes_in_front_of_any_schedule_and_keeps_its_epochs():
    schedule = dict(name="piecewise", boundaries=(3,), values=(0.1, 0.01), warmup_epochs=1)
    steps = (0, 3, SPE - 1, SPE, 3 * SPE - 1, 3 * SPE)
    rates = _rates(dict(learning_rate=0.1), schedule, 5, steps)
    np.testing.assert_allclose(rates, [0.1 / SPE, 0.4 / SPE, 0.1, 0.1, 0.1, 0.01], rtol=1e-6)
    plan = learning_rate_plan(*_sections(dict(learning_rate=0.1), schedule), 5, SPE)
    assert plan == [f"epoch 1: lr {0.1 / SPE:.6g}", "epochs 2-3: lr 0.1", "epochs 4-5: lr 0.01"]


def test_schedule_mistakes_are_one_line_errors():
    with pytest.raises(UserError, match="schedule.decay_rate=0 must be in"):
        _rates({}, dict(name="exponential", decay_rate=0.0), 3, [0])
    with pytest.raises(UserError, match="leaves no epochs for the cosine"):
        _rates({}, dict(name="warmup_cosine", warmup_epochs=3), 3, [0])
    with pytest.raises(UserError, match="warmup_epochs=-1 must be 0"):
        _rates({}, dict(warmup_epochs=-1), 3, [0])


# -- loss ---------------------------------------------------------------------------------------------

def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_label_smoothed_loss_is_the_formula():
    rng = np.random.default_rng(1)
    logits, labels, eps = rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 5, 6), 0.1
    targets = (1 - eps) * np.eye(5)[labels] + eps / 5
    expected = -(targets * _log_softmax(logits.astype(np.float64))).sum(axis=1)
    np.testing.assert_allclose(training_loss(jnp.asarray(logits), jnp.asarray(labels), eps), expected, rtol=1e-5)
    # A [B, C] distribution (mixed images) is taken as it is, then smoothed the same way.
    mixed = 0.7 * np.eye(5)[labels] + 0.3 * np.eye(5)[labels[::-1]]
    expected = -(((1 - eps) * mixed + eps / 5) * _log_softmax(logits.astype(np.float64))).sum(axis=1)
    np.testing.assert_allclose(training_loss(jnp.asarray(logits), jnp.asarray(mixed), eps), expected, rtol=1e-5)
    one_hot = training_loss(jnp.asarray(logits), jnp.asarray(np.eye(5)[labels]))
    np.testing.assert_allclose(training_loss(jnp.asarray(logits), jnp.asarray(labels)), one_hot, rtol=1e-6)


# -- optimizers ---------------------------------------------------------------------------------------

PARAMS = {"conv": {"kernel": np.asarray([[1.0, -2.0], [0.5, 3.0]]), "bias": np.asarray([0.5, -0.5])},
          "bn": {"scale": np.asarray([1.0, 2.0]), "bias": np.asarray([0.1, 0.2])}}
GRADS = [{"conv": {"kernel": np.asarray([[0.3, -0.1], [0.2, 0.4]]), "bias": np.asarray([0.1, 0.2])},
          "bn": {"scale": np.asarray([-0.2, 0.1]), "bias": np.asarray([0.05, -0.3])}},
         {"conv": {"kernel": np.asarray([[-0.1, 0.2], [0.0, 0.1]]), "bias": np.asarray([0.3, -0.1])},
          "bn": {"scale": np.asarray([0.4, 0.0]), "bias": np.asarray([0.1, 0.1])}}]


def _updates(optimizer, steps=2):
    """The optimizer's updates for GRADS, applied to PARAMS in turn: [(params before, update), ...]."""
    opt, sched = _sections(optimizer)
    tx = build_optimizer(opt, build_schedule(opt, sched, 1, 1))
    params = jax.tree_util.tree_map(jnp.asarray, PARAMS)
    state, out = tx.init(params), []
    for grads in GRADS[:steps]:
        update, state = tx.update(jax.tree_util.tree_map(jnp.asarray, grads), state, params)
        out.append((jax.tree_util.tree_map(np.asarray, params), jax.tree_util.tree_map(np.asarray, update)))
        params = optax.apply_updates(params, update)
    return out


def _leaves(tree):
    return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_adamw_is_the_formula_with_decay_on_kernels_only():
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-7, 0.05
    got = _updates(dict(name="adamw", learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=wd))
    for name in _leaves(PARAMS):
        m = v = 0.0
        for t, (grads, (params, update)) in enumerate(zip(GRADS, got, strict=True), start=1):
            g, w = _leaves(grads)[name], _leaves(params)[name]
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            direction = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            decay = wd * w if name.endswith("kernel") else 0.0
            np.testing.assert_allclose(_leaves(update)[name], -lr * (direction + decay), rtol=1e-4,
                                       err_msg=name)  # float32 arithmetic; the decay term is ~5% of it


def test_lars_is_the_formula_with_trust_ratio_on_kernels_only():
    lr, momentum, wd, trust = 0.5, 0.9, 1e-3, 0.01
    got = _updates(dict(name="lars", learning_rate=lr, momentum=momentum, weight_decay=wd, trust_coefficient=trust))
    for name in _leaves(PARAMS):
        velocity = 0.0
        for grads, (params, update) in zip(GRADS, got, strict=True):
            g, w = _leaves(grads)[name], _leaves(params)[name]
            if name.endswith("kernel"):
                g = g + wd * w
                g = g * trust * np.linalg.norm(w) / np.linalg.norm(g)
            velocity = lr * g + momentum * velocity
            np.testing.assert_allclose(_leaves(update)[name], -velocity, rtol=1e-5, err_msg=name)


def test_clipping_scales_gradients_to_the_global_norm():
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in _leaves(GRADS[0]).values()))
    for clip in (0.1, norm * 2):  # below the norm: scaled; above it: untouched
        (_, update), = _updates(dict(name="sgd", momentum=0.0, learning_rate=1.0, clip_global_norm=clip), steps=1)
        for name, g in _leaves(GRADS[0]).items():
            np.testing.assert_allclose(_leaves(update)[name], -g * min(1.0, clip / norm), rtol=1e-5)


def test_optimizer_mistakes_are_one_line_errors():
    with pytest.raises(UserError, match="optimizer.weight_decay=0.1 is decoupled weight decay.*optimizer.l2"):
        _updates(dict(name="sgd", weight_decay=0.1))
    with pytest.raises(UserError, match="clip_global_norm=-1 must be 0"):
        _updates(dict(clip_global_norm=-1.0))
    with pytest.raises(UserError, match="accum_steps=3: batch_size=64 must split .* multiple of 24"):
        check_accum_steps(3, 64, 8)
    check_accum_steps(4, 64, 8)
    opt, _ = _sections(dict(name="adamw", weight_decay=0.05, clip_global_norm=1.0, accum_steps=4))
    assert describe_optimizer(opt) == ("adamw (lr 0.01, weight decay 0.05 on kernels, gradients clipped to "
                                       "global norm 1, 4 micro-batches per update)")


# -- moving average -----------------------------------------------------------------------------------

def test_ema_update_is_the_closed_form():
    decay, thetas = 0.8, [np.asarray([1.0, -2.0]), np.asarray([3.0, 0.5]), np.asarray([-1.0, 4.0]),
                          np.asarray([0.0, 2.0])]
    average = {"w": jnp.asarray(thetas[0])}
    for theta in thetas[1:]:
        average = ema_update(average, {"w": jnp.asarray(theta)}, decay)
    n = len(thetas) - 1
    closed = decay**n * thetas[0] + (1 - decay) * sum(decay ** (n - i) * thetas[i] for i in range(1, n + 1))
    np.testing.assert_allclose(average["w"], closed, rtol=1e-6)


# -- the train step: accumulation, BatchNorm, moving average --------------------------------------------

class PlainNet(nn.Module):
    """No BatchNorm, no dropout: accumulation must give the full batch's gradient."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


class NormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = ConvModule(4, 3, name="conv")(x, train)
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def _preprocess(images, rng):
    return images.astype(jnp.float32) / 255.0


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, 3, n).astype(np.int32))}


def _train(model, tx, steps=1, **options):
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=True)
    state = TrainState.create(variables, tx, ema=bool(options.get("ema_decay")))
    step = jax.jit(make_train_step(model, tx, _preprocess, seed=0, **options))
    metrics, states = TrainMetrics.empty(), [state]
    for i in range(steps):
        state, metrics = step(state, _batch(seed=i), metrics)
        states.append(state)
    return states, metrics.compute()


# The micro-batches in a loop (GPU and TPU) and written out one after the other (the CPU backend's default).
UNROLLED = pytest.mark.parametrize("unrolled", [False, True], ids=["loop", "unrolled"])


@UNROLLED
def test_accumulation_equals_the_full_batch_without_batchnorm(unrolled):
    """With label smoothing and mixup/CutMix too: the batch is mixed whole, then split."""
    tx, mixing = optax.adamw(0.01, weight_decay=0.01), Mixing(mixup_alpha=0.4, cutmix_alpha=1.0)
    (_, full), full_metrics = _train(PlainNet(), tx, label_smoothing=0.1, l2=1e-3, mixing=mixing)
    (_, micro), micro_metrics = _train(PlainNet(), tx, label_smoothing=0.1, l2=1e-3, mixing=mixing, accum_steps=4,
                                       unroll_micro_batches=unrolled)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), full.params, micro.params)
    for key in ("loss", "accuracy"):
        assert float(micro_metrics[key]) == pytest.approx(float(full_metrics[key]), abs=1e-6)


@UNROLLED
def test_accumulation_with_batchnorm_normalises_and_updates_per_micro_batch(unrolled):
    """Documented behaviour: micro-batch j (rows j, j+k, …) is normalised by its own statistics, the running
    statistics move once per micro-batch in turn, and the update uses the mean of the micro-batch gradients."""
    model, k, lr = NormNet(), 2, 0.1
    (start, after), _ = _train(model, optax.sgd(lr), accum_steps=k, unroll_micro_batches=unrolled)
    images, labels = _preprocess(_batch()["image"], None), _batch()["label"]
    batch_stats, grads = start.batch_stats, []
    for j in range(k):
        def loss(params, stats, x=images[j::k], y=labels[j::k]):
            logits, updates = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                          mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["batch_stats"]
        (_, batch_stats), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(start.params, batch_stats)
        grads.append(g)
    expected = jax.tree_util.tree_map(lambda p, *g: p - lr * sum(g) / k, start.params, *grads)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), after.params, expected)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), after.batch_stats, batch_stats)
    np.testing.assert_array_equal(split_micro_batches(jnp.arange(6), 2), [[0, 2, 4], [1, 3, 5]])


def test_the_micro_batches_are_unrolled_on_the_cpu_backend_unless_told():
    assert jax.default_backend() == "cpu" and micro_batches_unrolled() is True
    assert micro_batches_unrolled(False) is False and micro_batches_unrolled(True) is True


def test_ema_in_the_train_step_follows_every_update():
    decay, n = 0.7, 3
    states, _ = _train(NormNet(), optax.sgd(0.1, momentum=0.9), steps=n, ema_decay=decay)
    for field in ("params", "batch_stats"):
        trees = [getattr(s, field) for s in states]
        closed = jax.tree_util.tree_map(
            lambda first, *later: decay**n * first + (1 - decay) * sum(decay ** (n - i) * t
                                                                      for i, t in enumerate(later, start=1)),
            *trees)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                               states[-1].ema[field], closed)
    assert states[-1].averaged().params is states[-1].ema["params"]


def test_ablation_variants_set_the_modern_keys():
    config = base("test")
    variants = parse_variants("deck:;modern:optimizer.name=adamw,optimizer.weight_decay=0.05,"
                              "schedule.name=warmup_cosine,schedule.warmup_epochs=5,loss.label_smoothing=0.1,"
                              "ema_decay=0.999,optimizer.accum_steps=2,optimizer.clip_global_norm=1")
    modern = apply_overrides(config, variants["modern"])
    assert (modern.optimizer.name, modern.schedule.name) == ("adamw", "warmup_cosine")
    assert modern.schedule.warmup_epochs == 5.0 and isinstance(modern.schedule.warmup_epochs, float)
    assert (modern.loss.label_smoothing, modern.ema_decay, modern.optimizer.accum_steps) == (0.1, 0.999, 2)
    assert modern.optimizer.clip_global_norm == 1.0 and apply_overrides(config, variants["deck"]) == config


def test_checkpoints_without_a_moving_average_keep_their_old_layout():
    from flax import serialization

    tx = optax.sgd(0.1)
    variables = {"params": {"w": jnp.ones(2)}, "batch_stats": {"mean": jnp.zeros(2)}}
    plain, averaged = TrainState.create(variables, tx), TrainState.create(variables, tx, ema=True)
    assert set(serialization.to_state_dict(plain)) == {"step", "params", "batch_stats", "opt_state"}
    saved = serialization.to_state_dict(averaged)
    assert set(saved) == {"step", "params", "batch_stats", "opt_state", "ema"}
    saved["ema"]["params"]["w"] = np.full(2, 3.0)
    restored = serialization.from_state_dict(averaged, saved)
    np.testing.assert_array_equal(restored.averaged().params["w"], [3.0, 3.0])
    with pytest.raises(ValueError, match="lacks ema"):
        serialization.from_state_dict(averaged, serialization.to_state_dict(plain))
