"""Keras's own VGG16/VGG19 against ours on the same weight files and the same image files.

Weight files in the published legacy layout (and tf.keras 2's) are written here with h5py, not by Keras,
so the tests pin the layout Keras reads rather than whatever Keras writes today; Keras 3's formats are
written by Keras. Random weights are scaled so that activations keep the input's scale and the logits
spread over a few units: the softmax is not saturated, so probabilities compare meaningfully too.
"""

import shutil

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnn_flax.errors import UserError
from cnn_flax.models import create_model, init_variables
from cnn_flax.pretrained import (
    caffe_preprocess,
    imagenet_class_names,
    load_images,
    load_keras_weights,
)
from cnn_flax.run.predict import classify_images

keras = pytest.importorskip("keras")

VGG16_HEAD = (("fc1", 4096), ("fc2", 4096), ("predictions", 1000))


# ----------------------------------------------------------------------------------------------- helpers
def keras_layers(model) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(name, weight shapes) for every layer of a Keras model, weightless ones included, in model order."""
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers]


def with_head(conv_layers: list, feature_map: tuple[int, int, int]) -> list:
    """The with-top VGG16 layer list: the convolutional part, then flatten and Keras's classifier."""
    layers, fan_in = [*conv_layers, ("flatten", [])], int(np.prod(feature_map))
    for name, units in VGG16_HEAD:
        layers.append((name, [(fan_in, units), (units,)]))
        fan_in = units
    return layers


def random_weights(layers: list, seed: int) -> dict[str, list[np.ndarray]]:
    """He-scaled normal kernels (the first divided by the ~64 spread of caffe-preprocessed pixels)."""
    rng = np.random.default_rng(seed)
    weights, first = {}, True
    for name, shapes in layers:
        if not shapes:
            continue
        kernel_shape, bias_shape = shapes
        fan_in = int(np.prod(kernel_shape[:-1]))
        scale = np.sqrt(2.0 / fan_in) / (64.0 if first else 1.0)
        kernel = rng.standard_normal(kernel_shape, dtype=np.float32) * np.float32(scale)
        bias = rng.normal(0.0, 0.05, bias_shape).astype(np.float32)
        weights[name], first = [kernel, bias], False
    return weights


def write_legacy_h5(path, layers: list, weights: dict, style: str = "published") -> None:
    """The published files' layout, or tf.keras 2's full-model one (`model_weights`, `name/kernel:0`)."""
    with h5py.File(path, "w") as handle:
        root = handle if style == "published" else handle.create_group("model_weights")
        root.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.0.8" if style == "published" else b"2.15.0"
        for name, _ in layers:
            group = root.create_group(name)
            arrays = weights.get(name, [])
            suffixes = ("_W_1:0", "_b_1:0") if style == "published" else ("/kernel:0", "/bias:0")
            names = [f"{name}{suffix}".encode() for suffix in suffixes[:len(arrays)]]
            group.attrs["weight_names"] = np.array(names) if names else np.zeros(0)
            for weight_name, array in zip(names, arrays, strict=True):
                group.create_dataset(weight_name.decode(), data=array)


def write_images(directory, sizes: list[tuple[int, int]], seed: int) -> list[str]:
    """Random RGB images of the given (width, height), alternately PNG and JPEG."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, (width, height) in enumerate(sizes):
        path = str(directory / f"image{i}.{'png' if i % 2 == 0 else 'jpg'}")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def keras_inputs(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """Keras's own pipeline: load_img(target_size), img_to_array, vgg16.preprocess_input."""
    arrays = [keras.utils.img_to_array(keras.utils.load_img(p, target_size=size)) for p in paths]
    return keras.applications.vgg16.preprocess_input(np.stack(arrays))


def our_model(input_shape: tuple[int, int, int], **options):
    """Our VGG and a shapes-only template (jax.eval_shape: the loader needs no random initialisation)."""
    model = create_model(dict(name="vgg", **options))
    template = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), input_shape))
    return model, template


def load(path, model, template, **options):
    """load_keras_weights with the input size the template was built for (fc1's fan-in tells; 64 without top)."""
    params = template["params"]
    side = 32 * round((params["fc1"]["kernel"].shape[0] / 512) ** 0.5) if "fc1" in params else 64
    return load_keras_weights(path, model, template, (side, side, 3), **options)


def our_outputs(model, variables, paths: list[str], size: tuple[int, int]) -> np.ndarray:
    x = caffe_preprocess(jnp.asarray(load_images(paths, size)))
    return np.asarray(model.apply(variables, x, train=False))


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    scale = float(np.max(np.abs(theirs)))
    assert scale > 0.1, "the comparison would be vacuous"
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return write_images(tmp_path_factory.mktemp("images"), [(250, 180), (97, 131)], seed=1)


@pytest.fixture(scope="module")
def vgg16_full(tmp_path_factory):
    """vgg16_weights_tf_dim_ordering_tf_kernels.h5's layout with random weights, and Keras's VGG16 on it."""
    conv = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    layers = with_head(keras_layers(conv), tuple(conv.output.shape[1:]))
    weights = random_weights(layers, seed=16)
    path = tmp_path_factory.mktemp("weights") / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_legacy_h5(path, layers, weights)
    reference = keras.applications.VGG16(weights=str(path), classifier_activation=None)
    return str(path), weights, reference


@pytest.fixture(scope="module")
def vgg16_notop(tmp_path_factory):
    """The published _notop layout at 64x64 (Keras allows >= 32 without the top)."""
    layers = keras_layers(keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3)))
    weights = random_weights(layers, seed=17)
    path = tmp_path_factory.mktemp("weights") / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_legacy_h5(path, layers, weights)
    return str(path), layers, weights


@pytest.fixture(scope="module")
def vgg19_notop(tmp_path_factory):
    """Keras 3's own formats for VGG19 without the top: .weights.h5 and the .keras archive."""
    model = keras.applications.VGG19(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    weights = random_weights(keras_layers(model), seed=19)
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
    directory = tmp_path_factory.mktemp("vgg19")
    model.save_weights(str(directory / "vgg19.weights.h5"))
    model.save(str(directory / "vgg19.keras"))
    shutil.copy(directory / "vgg19.weights.h5", directory / "unnamed.weights.h5")
    with h5py.File(directory / "unnamed.weights.h5", "a") as handle:  # as early Keras 3 versions wrote it
        for key in handle["layers"]:
            handle[f"layers/{key}/vars"].attrs.pop("name", None)
    return directory, weights, model


# ------------------------------------------------------------------------------------------------- tests
def test_vgg16_with_top_gives_keras_logits_and_top5(vgg16_full, images):
    path, _, reference = vgg16_full
    keras_logits = np.asarray(reference(keras_inputs(images, (224, 224)), training=False))
    model, template = our_model((224, 224, 3), variant="D")
    variables = load(path, model, template)
    logits = our_outputs(model, variables, images, (224, 224))
    assert logits.shape == (2, 1000)
    assert_close(logits, keras_logits)
    probs, keras_probs = softmax(logits), softmax(keras_logits)
    assert 0.01 < keras_probs.max() < 0.99, "random weights should give a spread-out softmax"
    np.testing.assert_allclose(probs, keras_probs, atol=1e-5)

    top5 = classify_images(model, variables, images, (224, 224), imagenet_class_names())
    names = imagenet_class_names()
    for row, predictions in zip(keras_probs, top5, strict=True):
        expected = np.argsort(-row)[:5]
        assert [p["index"] for p in predictions] == expected.tolist()
        assert [p["name"] for p in predictions] == [names[i] for i in expected]
        np.testing.assert_allclose([p["prob"] for p in predictions], row[expected], atol=1e-5)


def test_full_file_loads_into_a_model_without_top(vgg16_full):
    path, weights, _ = vgg16_full
    model, template = our_model((64, 64, 3), variant="D", include_top=False)
    params = load(path, model, template)["params"]
    assert "fc1" not in params and len(params) == 13
    for name, (kernel, bias) in weights.items():
        if name.startswith("block"):
            np.testing.assert_array_equal(params[name]["kernel"], kernel)
            np.testing.assert_array_equal(params[name]["bias"], bias)
            assert params[name]["kernel"].dtype == jnp.float32


def test_full_file_into_a_smaller_model_names_fc1_and_both_shapes(vgg16_full):
    path, _, _ = vgg16_full
    model, template = our_model((64, 64, 3), variant="D")
    with pytest.raises(UserError) as error:
        load(path, model, template)
    assert str(error.value) == (f"{path}: layer fc1 has kernel (25088, 4096) in the file but (2048, 4096) in "
                                "the model; build the model at 224x224 or use include_top=False")


def test_other_class_count_names_predictions_and_skip_keeps_a_new_head(vgg16_full):
    path, weights, _ = vgg16_full
    model, template = our_model((224, 224, 3), variant="D", num_classes=10)
    with pytest.raises(UserError, match=r"layer predictions has kernel \(4096, 1000\) in the file but "
                                        r"\(4096, 10\) in the model; .*model.num_classes=1000"):
        load(path, model, template)
    head = {"kernel": jnp.ones((4096, 10)), "bias": jnp.zeros((10,))}
    template = {"params": {**template["params"], "predictions": head}}
    params = load(path, model, template, skip=("predictions",))["params"]
    assert params["predictions"]["kernel"] is head["kernel"] and params["predictions"]["bias"] is head["bias"]
    np.testing.assert_array_equal(params["fc2"]["kernel"], weights["fc2"][0])


@pytest.mark.parametrize("pooling", [None, "avg", "max"])
def test_vgg16_notop_gives_keras_features(vgg16_notop, images, pooling):
    path, _, _ = vgg16_notop
    reference = keras.applications.VGG16(include_top=False, weights=path, input_shape=(64, 64, 3),
                                         pooling=pooling)
    expected = np.asarray(reference(keras_inputs(images, (64, 64)), training=False))
    model, template = our_model((64, 64, 3), variant="D", include_top=False, pooling=pooling)
    features = our_outputs(model, load(path, model, template), images, (64, 64))
    assert features.shape == ((2, 2, 2, 512) if pooling is None else (2, 512))
    assert_close(features, expected)


def test_tf_keras2_full_model_layout(vgg16_notop, images, tmp_path):
    _, layers, weights = vgg16_notop
    path = str(tmp_path / "tf_keras2_model.h5")
    write_legacy_h5(path, layers, weights, style="tf_keras2")
    reference = keras.applications.VGG16(include_top=False, weights=path, input_shape=(64, 64, 3),
                                         pooling="avg")
    model, template = our_model((64, 64, 3), variant="D", include_top=False, pooling="avg")
    features = our_outputs(model, load(path, model, template), images, (64, 64))
    assert_close(features, np.asarray(reference(keras_inputs(images, (64, 64)), training=False)))


@pytest.mark.parametrize("filename", ["vgg19.weights.h5", "unnamed.weights.h5", "vgg19.keras"])
def test_vgg19_keras3_formats(vgg19_notop, images, filename):
    directory, weights, reference = vgg19_notop
    model, template = our_model((64, 64, 3), variant="E", include_top=False, pooling="avg")
    variables = load(directory / filename, model, template)
    for name, (kernel, bias) in weights.items():
        np.testing.assert_array_equal(variables["params"][name]["kernel"], kernel)
        np.testing.assert_array_equal(variables["params"][name]["bias"], bias)
    features = our_outputs(model, variables, images, (64, 64))
    assert_close(features, np.asarray(reference(keras_inputs(images, (64, 64)), training=False)))


def test_vgg19_files_do_not_load_into_vgg16(vgg19_notop):
    directory, _, _ = vgg19_notop
    model, template = our_model((64, 64, 3), variant="D", include_top=False)
    with pytest.raises(UserError, match=r"vgg19.weights.h5: layer block4_conv1 \(the file's block3_conv4\) has "
                                        r"kernel \(3, 3, 256, 256\) in the file but \(3, 3, 256, 512\) in the "
                                        r"model; .*VGG19 'E'\)$"):
        load(directory / "vgg19.weights.h5", model, template)
    with pytest.raises(UserError, match=r"unnamed.weights.h5: layer block4_conv1 \(the file's conv2d_7\) has "
                                        r"kernel \(3, 3, 256, 256\) in the file but \(3, 3, 256, 512\) in "
                                        r"the model"):
        load(directory / "unnamed.weights.h5", model, template)


def test_notop_file_into_a_model_with_top_names_fc1(vgg16_notop):
    path, _, _ = vgg16_notop
    model, template = our_model((64, 64, 3), variant="D")
    with pytest.raises(UserError) as error:
        load(path, model, template)
    assert str(error.value) == (f"{path}: layer fc1 of the model is not in the file; the file has no "
                                "classifier (a _notop file): build the model with include_top=False")


def test_vgg16_file_into_vgg19_names_the_missing_layer(vgg16_notop):
    path, _, _ = vgg16_notop
    model, template = our_model((64, 64, 3), variant="E", include_top=False)
    with pytest.raises(UserError, match=r"layer block3_conv4 \(the file's block4_conv1\) has kernel "
                                        r"\(3, 3, 256, 512\) in the file but \(3, 3, 256, 256\) in the model"):
        load(path, model, template)


def test_load_images_resizes_like_keras_load_img(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (131, 97, 3), dtype=np.uint8)
    files = {"rgb.png": Image.fromarray(rgb), "rgba.png": Image.fromarray(rgb).convert("RGBA"),
             "gray.jpg": Image.fromarray(rgb[..., 0]), "palette.png": Image.fromarray(rgb).convert("P"),
             "same.jpg": Image.fromarray(rgb[:40, :50])}
    paths = []
    for name, image in files.items():
        image.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    ours = load_images(paths, (40, 50))
    assert ours.dtype == np.uint8 and ours.shape == (5, 40, 50, 3)
    np.testing.assert_array_equal(ours, np.stack([keras.utils.img_to_array(
        keras.utils.load_img(p, target_size=(40, 50))) for p in paths]).astype(np.uint8))
    bilinear = load_images(paths[:1], (40, 50), interpolation="bilinear")
    np.testing.assert_array_equal(bilinear[0], keras.utils.img_to_array(
        keras.utils.load_img(paths[0], target_size=(40, 50), interpolation="bilinear")).astype(np.uint8))


def test_caffe_preprocess_is_keras_preprocess_input():
    images = np.random.default_rng(4).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    expected = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    ours = caffe_preprocess(images)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)
    jitted = jax.jit(caffe_preprocess)(jnp.asarray(images))
    assert isinstance(jitted, jax.Array) and jitted.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(jitted), expected, atol=1e-5)


def test_predict_mode_end_to_end_matches_keras(vgg16_full, images, tmp_path, capsys):
    """The whole `--mode=predict` path: config, init_from, resize, caffe preprocessing, top-5, the JSON file."""
    import json

    from cnn_flax.run import modes
    from configs import vgg16_imagenet

    path, _, reference = vgg16_full
    keras_probs = softmax(np.asarray(reference(keras_inputs(images, (224, 224)), training=False)))
    config = vgg16_imagenet.get_config()
    config.init_from, config.num_devices = path, 1
    workdir = str(tmp_path / "predict")
    modes.predict(config, workdir, images)
    written = json.load(open(f"{workdir}/predictions.json"))
    assert [entry["image"] for entry in written] == images
    names = imagenet_class_names()
    for row, entry in zip(keras_probs, written, strict=True):
        expected = np.argsort(-row)[:5]
        assert [p["index"] for p in entry["top5"]] == expected.tolist()
        assert [p["name"] for p in entry["top5"]] == [names[i] for i in expected]
        np.testing.assert_allclose([p["prob"] for p in entry["top5"]], row[expected], atol=1e-5)
    assert names[int(np.argmax(keras_probs[0]))] in capsys.readouterr().out
