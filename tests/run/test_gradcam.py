"""Grad-CAM of our models: against an independent computation, on a trained network whose answer is known, on every
zoo architecture, and the files of --mode=predict --gradcam and of the training run's report."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image
from random_weights import random_variables
from run_configs import tiny_config

from cnn_flax.errors import UserError
from cnn_flax.evaluation.gradcam import channel_weights, upsample
from cnn_flax.models import create_model, init_variables
from cnn_flax.run import modes
from cnn_flax.run.gradcam import GradCam, feature_layers, unique_stems
from cnn_flax.run.train import train_and_evaluate


class TwoConvs(nn.Module):
    """conv → ReLU → conv → ReLU → dense on the flattened map: small enough to take apart by hand."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(6, (3, 3), name="conv2")(x))
        return nn.Dense(5, name="logits")(x.reshape(x.shape[0], -1))


def scaled(images):
    return images.astype(jnp.float32) / 255.0


def test_maps_equal_a_direct_computation_of_the_weighted_feature_map():
    model = TwoConvs()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
    params = variables["params"]
    images = np.random.default_rng(0).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    classes = np.array([4, 0, 2])

    # The network taken apart: A = the second conv's output (the layer conv2; its ReLU comes after it), the rest of
    # the network a function of A alone.
    def features(x):
        x = nn.relu(nn.Conv(4, (3, 3)).apply({"params": params["conv1"]}, x))
        return nn.Conv(6, (3, 3)).apply({"params": params["conv2"]}, x)

    def head(a):
        return nn.Dense(5).apply({"params": params["logits"]}, nn.relu(a).reshape(a.shape[0], -1))

    a = features(scaled(jnp.asarray(images)))
    expected_maps = []
    for i, c in enumerate(classes):
        grad = jax.grad(lambda a_i, i=i, c=c: head(a_i[None])[0, c])(a[i])  # [h, w, K]
        weights = grad.mean(axis=(0, 1))
        expected_maps.append(jnp.maximum(jnp.einsum("hwk,k->hw", a[i], weights), 0.0))
        if i == 0:
            expected_grad0 = grad

    cam = GradCam(model, variables, scaled, (6, 6, 3), batch_size=2)  # two batches, the second padded
    assert cam.layer == "conv2"  # the last convolution by default
    got_features, got_gradients = cam.features_and_gradients(images, classes)
    np.testing.assert_allclose(got_features, a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_gradients[0], expected_grad0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cam.maps(images, classes), np.stack(expected_maps), rtol=1e-5, atol=1e-7)
    assert np.max(expected_maps[0]) > 0  # a map with something in it, so the comparison means something
    np.testing.assert_allclose(channel_weights(got_gradients)[0], np.mean(expected_grad0, axis=(0, 1)), rtol=1e-5)


def test_a_network_trained_to_find_a_bright_patch_looks_at_the_patch():
    """The class is the quadrant holding a bright 5x5 patch on a noisy 12x12 image; a small conv net with global
    average pooling learns it (from where the patch meets the image's edges), and the peak of its Grad-CAM
    map for the true class lies inside the patch."""
    size, patch, quadrant = 12, 5, 6

    class Finder(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(16, (5, 5), name="conv1")(x))
            x = nn.relu(nn.Conv(16, (5, 5), name="conv2")(x))
            return nn.Dense(4, name="logits")(x.mean(axis=(1, 2)))

    def patches(n, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 4, n)
        images = rng.integers(80, 140, (n, size, size, 3)).astype(np.uint8)
        corners = []
        for i, label in enumerate(labels):
            qy, qx = divmod(int(label), 2)
            y, x = qy * quadrant + rng.integers(0, quadrant - patch + 1), qx * quadrant + rng.integers(
                0, quadrant - patch + 1)
            images[i, y:y + patch, x:x + patch] = 255
            corners.append((y, x))
        return images, labels, corners

    def preprocess(images):
        return images.astype(jnp.float32) / 255.0 - 0.5

    model = Finder()
    params = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            model.apply({"params": p}, preprocess(x)), y).mean()
        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    images, labels, _ = patches(4096, 0)
    for i in range(300):
        rows = slice(i * 64 % 4096, i * 64 % 4096 + 64)
        params, opt = step(params, opt, images[rows], labels[rows])
    test_images, test_labels, corners = patches(100, 1)
    variables = {"params": params}
    accuracy = np.mean(np.argmax(model.apply(variables, preprocess(test_images)), axis=1) == test_labels)
    assert accuracy >= 0.95
    maps = upsample(GradCam(model, variables, preprocess, (size, size, 3)).maps(test_images, test_labels),
                    (size, size))
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    inside = [y <= py < y + patch and x <= px < x + patch for (py, px), (y, x) in zip(peaks, corners, strict=True)]
    assert np.mean(inside) >= 0.95, np.mean(inside)  # the patch covers 17% of the image


# Every architecture of the zoo at a small input it accepts, and the layer Grad-CAM takes by default.
ZOO = [
    pytest.param(dict(name="minivgg", num_classes=10), 16, "block2_conv2", id="minivgg"),
    pytest.param(dict(name="nin", num_classes=10), 32, "mlpconv3_cccp2", id="nin"),
    pytest.param(dict(name="minigooglenet", num_classes=10), 32, "inception8", id="minigooglenet"),
    pytest.param(dict(name="deepergooglenet", num_classes=7, stage4=False), 64, "inception_3b",
                 id="deepergooglenet"),
    pytest.param(dict(name="vgg", variant="A-LRN", num_classes=4), 32, "block5_conv2", id="vgg",
                 marks=pytest.mark.slow),  # 28M parameters
    # 224: GoogLeNet's final 7x7 average pool needs 7x7 maps; its auxiliary heads exist only in training.
    pytest.param(dict(name="googlenet", num_classes=6, aux_heads=True), 224, "inception_5b", id="googlenet",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("model_config", "size", "layer"), ZOO)
def test_every_zoo_architecture_gives_a_map_at_its_last_convolution(model_config, size, layer):
    model = create_model(model_config, cpu_kernels=True)
    variables = random_variables(model, size, seed=0)  # any weights: the maps are compared with Flax's own
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    images = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    cam = GradCam(model, variables, scaled, (size, size, 3), batch_size=len(images))
    assert cam.layer == layer == feature_layers(model, (size, size, 3))[-1]
    features, gradients = cam.features_and_gradients(images, [1, 3])

    # The feature map is the layer's output as Flax itself records it.
    @jax.jit
    def recorded(variables, images):
        at_layer = lambda m, method: m.scope.path == (layer,) and method == "__call__"  # noqa: E731
        _, state = model.apply(variables, scaled(images), train=False, mutable=["intermediates"],
                               capture_intermediates=at_layer)
        return state["intermediates"][layer]["__call__"][0]

    np.testing.assert_allclose(features, recorded(variables, images), rtol=1e-5, atol=1e-6)
    assert np.abs(gradients).max() > 0
    maps = cam.maps(images, [1, 3])
    assert maps.shape == (2, *features.shape[1:3]) and np.all(np.isfinite(maps)) and np.all(maps >= 0)


def test_another_layer_by_name_and_the_errors_for_a_wrong_one():
    model = create_model(dict(name="minivgg", num_classes=10), cpu_kernels=True)
    variables = init_variables(model, jax.random.key(0), (16, 16, 3))
    variables = {k: variables[k] for k in ("params", "batch_stats")}
    images = np.zeros((1, 16, 16, 3), np.uint8)
    assert GradCam(model, variables, scaled, (16, 16, 3), "block1_conv1").maps(images, [0]).shape == (1, 16, 16)
    with pytest.raises(UserError, match=r"gradcam.layer='block9' is not a layer of MiniVGG; its layers \(as "
                                        r"--mode=summary lists them\) are block1_conv1, block1_conv2, block1_pool"):
        GradCam(model, variables, scaled, (16, 16, 3), "block9")
    with pytest.raises(UserError, match=r"gradcam.layer='fc1' gives \(1, 512\), not a feature map \[N, H, W, C\]; "
                                        r"choose a convolutional layer of MiniVGG: block1_conv1, block1_conv2, "
                                        r"block2_conv1, block2_conv2$"):
        GradCam(model, variables, scaled, (16, 16, 3), "fc1")
    demo = create_model(dict(name="conv1x1_demo"))
    demo_variables = init_variables(demo, jax.random.key(0), (28, 28, 192))
    with pytest.raises(UserError, match=r"Conv1x1Demo gives \(1, 24, 24, 32\), not class scores \[N, C\]"):
        GradCam(demo, demo_variables, scaled, (28, 28, 192))


def test_image_stems_stay_unique():
    assert unique_stems(["a/x.jpg", "b/x.jpg", "c/y.png", "x.png"]) == ["x", "x_2", "y", "x_3"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The tiny quickstart (MiniVGG on digits, 16x16), two steps: far from done, so it makes mistakes."""
    workdir = str(tmp_path_factory.mktemp("quickstart"))
    config = tiny_config(num_epochs=1, steps_per_epoch=2, eval_steps=2, **{"gradcam.mistakes": 3})
    train_and_evaluate(config, workdir)
    return config, workdir


def test_the_run_report_shows_the_worst_mistakes_with_their_maps(trained_run):
    _, workdir = trained_run
    with open(os.path.join(workdir, "mistakes.json")) as handle:
        assert len(json.load(handle)) >= 3
    with Image.open(os.path.join(workdir, "mistakes_gradcam.png")) as figure:
        assert figure.size[1] > figure.size[0]  # three rows of three panels: taller than wide
    with open(os.path.join(workdir, "report.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert 'id="gradcam"' in page and 'alt="Grad-CAM maps of the worst mistakes"' in page


def test_predict_with_gradcam_writes_an_overlay_per_image(trained_run, tmp_path):
    config, workdir = trained_run
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(3)
    paths = [str(folder / "one.png"), str(folder / "two.png"), str(folder / "more" / "one.png")]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    results = modes.predict(config, workdir, [str(folder)], gradcam=True)
    with open(os.path.join(workdir, "gradcam", "gradcam.json")) as handle:
        listed = json.load(handle)
    assert [row["image"] for row in listed] == [row["image"] for row in results]
    assert [row["class_index"] for row in listed] == [row["top5"][0]["index"] for row in results]
    assert sorted(os.path.basename(row["cam"]) for row in listed) == ["one_2_cam.png", "one_cam.png", "two_cam.png"]
    assert {row["layer"] for row in listed} == {"block2_conv2"}
    for row in listed:
        with Image.open(row["cam"]) as image:
            assert image.size == (16 * 14, 16 * 14) and image.mode == "RGB"  # 16x16 inputs shown at 224x224
    modes.predict(config, workdir, [paths[1]], gradcam=True)  # another prediction replaces the folder's overlays
    assert sorted(os.listdir(os.path.join(workdir, "gradcam"))) == ["gradcam.json", "two_cam.png"]


def test_predict_with_gradcam_refuses_a_layer_the_model_lacks(trained_run):
    config, workdir = trained_run
    config = tiny_config(num_epochs=1, steps_per_epoch=2, **{"gradcam.layer": "conv9"})
    with pytest.raises(UserError, match="gradcam.layer='conv9' is not a layer of MiniVGG"):
        modes.predict(config, workdir, [os.path.join(workdir, "mistakes_gradcam.png")], gradcam=True)


@pytest.mark.slow  # compiles the steps for pmap
def test_a_pmap_run_report_has_the_maps_of_its_mistakes(tmp_path):
    workdir = str(tmp_path)
    train_and_evaluate(tiny_config(num_epochs=1, steps_per_epoch=2, parallel="pmap", num_devices=0,
                                   **{"gradcam.mistakes": 2}),
                       workdir)
    with Image.open(os.path.join(workdir, "mistakes_gradcam.png")) as figure:
        assert figure.size[1] > figure.size[0] / 2  # two rows of three panels
