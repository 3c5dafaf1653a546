"""The pretrained package without Keras: class names, image and file errors, top-k, and odd file layouts.

Weight files here are tiny hand-written HDF5 files for a two-layer conv+dense template, enough to pin
the rarer layout details (chunked attributes, bfloat16 datasets, damaged files) and every error message.
"""

import json
import zipfile

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from cnn_flax.errors import UserError
from cnn_flax.pretrained import (
    caffe_preprocess,
    imagenet_class_names,
    load_images,
    load_keras_weights,
)
from cnn_flax.run.predict import classify_images, format_predictions, top_k_predictions

SHAPES = {"block1_conv1": [(3, 3, 3, 4), (4,)], "predictions": [(16, 5), (5,)]}


class TinyNet(nn.Module):
    """A conv and a dense layer named as keras.applications names them: the SHAPES above on 2x2 inputs."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), padding="SAME", name="block1_conv1")(x)
        return nn.Dense(5, name="predictions")(x.reshape((x.shape[0], -1)))


def tiny_template() -> dict:
    return {"params": {name: {"kernel": jax.ShapeDtypeStruct(kernel, jnp.float32),
                              "bias": jax.ShapeDtypeStruct(bias, jnp.float32)}
                       for name, (kernel, bias) in SHAPES.items()},
            "batch_stats": {"unrelated": jnp.arange(3.0)}}


def load_tiny(path, template, **options):
    return load_keras_weights(path, TinyNet(), template, (2, 2, 3), **options)


def tiny_weights(seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {name: [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
            for name, shapes in SHAPES.items()}


def test_imagenet_class_names_are_kerass_1000_in_index_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and names is imagenet_class_names()
    assert names[:3] == ("tench", "goldfish", "great_white_shark")
    assert names[-1] == "toilet_tissue" and names[281] == "tabby" and names[207] == "golden_retriever"
    assert len(set(names)) == 998 and names[134] == names[517] == "crane" and names[638] == names[639]
    assert all(name and name == name.strip() and " " not in name for name in names)


def test_load_images_reports_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match=r"nope.jpg: no such image file"):
        load_images([str(tmp_path / "nope.jpg")], (8, 8))
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(UserError, match=r"text.jpg: cannot be read as an image \(.*\); give a JPEG, PNG"):
        load_images([tmp_path / "text.jpg"], (8, 8))
    Image.new("RGB", (30, 30), (10, 20, 30)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    with pytest.raises(UserError, match=r"cut.png: cannot be read as an image"):
        load_images([tmp_path / "cut.png"], (8, 8))
    with pytest.raises(UserError, match=r"interpolation='cubic' is not known"):
        load_images([], (8, 8), interpolation="cubic")
    assert load_images([], (8, 6)).shape == (0, 8, 6, 3)


def test_caffe_preprocess_flips_to_bgr_and_subtracts_the_means():
    pixel = np.array([[[[10, 20, 30]]]], np.uint8)
    expected = np.array([30 - 103.939, 20 - 116.779, 10 - 123.68], np.float32)
    np.testing.assert_allclose(caffe_preprocess(pixel)[0, 0, 0], expected, rtol=1e-6)
    traced = jax.jit(lambda x: caffe_preprocess(x) * 2)(jnp.asarray(pixel, jnp.float32))
    np.testing.assert_allclose(np.asarray(traced)[0, 0, 0], 2 * expected, rtol=1e-6)


def test_top_k_ranks_with_ties_by_index_and_is_json_ready():
    probs = np.array([[0.1, 0.4, 0.1, 0.4], [0.7, 0.1, 0.15, 0.05]], np.float32)
    top = top_k_predictions(probs, ["a", "b", "c", "d"], k=3)
    assert [[p["index"] for p in row] for row in top] == [[1, 3, 0], [0, 2, 1]]
    assert top[1][0] == {"index": 0, "name": "a", "prob": pytest.approx(0.7)}
    assert isinstance(top[0][0]["prob"], float) and isinstance(top[0][0]["index"], int)
    json.dumps(top)
    assert len(top_k_predictions(probs, "abcd", k=10)[0]) == 4
    with pytest.raises(UserError, match=r"the model gives 4 classes but 1000 class names"):
        top_k_predictions(probs, imagenet_class_names())


def test_format_predictions_prints_one_block_per_image():
    top = top_k_predictions(np.array([[0.2, 0.8], [0.6, 0.4]]), ["cat", "dog"], k=2)
    text = format_predictions(["photos/a.jpg", "b.png"], top)
    lines = text.splitlines()
    assert lines[0].split() == ["image", "rank", "prob", "class"]
    assert lines[1].split() == ["photos/a.jpg", "1", "0.8000", "1", "dog"]
    assert lines[2].split() == ["2", "0.2000", "0", "cat"]
    assert lines[3].split() == ["b.png", "1", "0.6000", "0", "cat"] and len(lines) == 5
    digits = format_predictions(["7.png"], top_k_predictions(np.array([[0.1, 0.9]]), ["0", "1"], k=1))
    assert digits.splitlines()[1].split() == ["7.png", "1", "0.9000", "1"]  # a name that is its index: once


class MeanColour(nn.Module):
    """A stand-in classifier: logits from the mean BGR colour, enough to follow images through batches."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.Dense(4)(x.mean(axis=(1, 2)) / 64.0)


def test_classify_images_batches_and_pads_without_changing_results(tmp_path):
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    paths = []
    for i, colour in enumerate(colours):
        Image.new("RGB", (20 + i, 10), colour).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    model = MeanColour()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    x = caffe_preprocess(jnp.asarray(load_images(paths, (8, 8))))
    expected = top_k_predictions(np.asarray(jax.nn.softmax(model.apply(variables, x))), "wxyz", k=2)
    for batch_size in (1, 2, 16):
        top = classify_images(model, variables, paths, (8, 8), "wxyz", k=2, batch_size=batch_size)
        assert [[(p["index"], p["name"]) for p in row] for row in top] == \
            [[(p["index"], p["name"]) for p in row] for row in expected]
        np.testing.assert_allclose([[p["prob"] for p in row] for row in top],
                                   [[p["prob"] for p in row] for row in expected], rtol=1e-6)
    assert len({row[0]["index"] for row in expected}) > 1, "the colours should rank differently"


def test_chunked_string_attributes_and_other_collections(tmp_path):
    """Keras splits attributes past 64 KB into layer_names0, layer_names1, …; h5py may give str or bytes."""
    weights, path = tiny_weights(), tmp_path / "chunked.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names0"] = np.array([b"input_1", b"block1_conv1"])
        handle.attrs["layer_names1"] = ["flatten", "predictions"]
        for name in ("input_1", "flatten"):
            handle.create_group(name).attrs["weight_names"] = np.zeros(0)
        for name, arrays in weights.items():
            group = handle.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel:0", f"{name}/bias:0"]
            for suffix, array in zip(("kernel:0", "bias:0"), arrays, strict=True):
                group.create_dataset(f"{name}/{suffix}", data=array)
    template = tiny_template()
    variables = load_tiny(str(path), template)
    assert variables["batch_stats"]["unrelated"] is template["batch_stats"]["unrelated"]
    for name, (kernel, bias) in weights.items():
        np.testing.assert_array_equal(variables["params"][name]["kernel"], kernel)
        np.testing.assert_array_equal(variables["params"][name]["bias"], bias)
    with pytest.raises(UserError, match=r"chunked.h5: cannot skip fc9: the model has no such layer; its "
                                        r"layers are block1_conv1, predictions"):
        load_tiny(str(path), template, skip=("predictions", "fc9"))


def test_keras3_bfloat16_weights_are_cast_to_the_templates_dtype(tmp_path):
    weights, path = tiny_weights(), tmp_path / "bf16.weights.h5"
    with h5py.File(path, "w") as handle:
        for key, (name, arrays) in zip(("conv2d", "dense"), weights.items(), strict=True):
            group = handle.create_group(f"layers/{key}/vars")
            group.attrs["name"] = name
            for index, array in enumerate(arrays):
                dataset = group.create_dataset(str(index), data=array.astype(ml_dtypes.bfloat16))
                dataset.attrs["dtype"] = "bfloat16"
        handle.create_group("layers/input_layer/vars")
        handle.create_group("vars")
    params = load_tiny(path, tiny_template())["params"]
    kernel = params["block1_conv1"]["kernel"]
    assert kernel.dtype == jnp.float32
    expected = weights["block1_conv1"][0].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(kernel, expected)


def test_files_that_are_not_keras_weights(tmp_path):
    with pytest.raises(UserError, match=r"missing.h5: no such file"):
        load_tiny(tmp_path / "missing.h5", tiny_template())
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(UserError, match=r"text.h5: not an HDF5 file; Keras weights come as"):
        load_tiny(tmp_path / "text.h5", tiny_template())
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["data"] = np.zeros(3)
    with pytest.raises(UserError, match=r"other.h5: an HDF5 file without Keras weights"):
        load_tiny(tmp_path / "other.h5", tiny_template())
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(UserError, match=r"other.keras: a zip archive without model.weights.h5"):
        load_tiny(tmp_path / "other.keras", tiny_template())


def test_damaged_files_and_weight_counts(tmp_path):
    weights = tiny_weights()
    with h5py.File(tmp_path / "damaged.h5", "w") as handle:
        handle.attrs["layer_names"] = [b"block1_conv1", b"predictions"]
        handle.create_group("block1_conv1").attrs["weight_names"] = [b"block1_conv1_W_1:0"]
    with pytest.raises(UserError, match=r"damaged.h5: layer block1_conv1 is listed in layer_names but its "
                                        r"weights are missing; the file is damaged"):
        load_tiny(tmp_path / "damaged.h5", tiny_template())
    with h5py.File(tmp_path / "nobias.h5", "w") as handle:
        handle.attrs["layer_names"] = [b"block1_conv1", b"predictions"]
        for name, arrays in weights.items():
            group = handle.create_group(name)
            group.attrs["weight_names"] = [f"{name}_W_1:0".encode()]
            group[f"{name}_W_1:0"] = arrays[0]
    with pytest.raises(UserError, match=r"nobias.h5: layer block1_conv1 has 1 weights in the file but 2 "
                                        r"\(kernel, bias\) in the model"):
        load_tiny(tmp_path / "nobias.h5", tiny_template())


def test_layer_order_of_a_module_with_an_unhashable_field():
    """A research module with a list field cannot be a cache key; its layers are still found, in call order."""
    from cnn_flax.models import init_traced
    from cnn_flax.pretrained.model_layers import model_layers

    class Widths(nn.Module):
        widths: list

        @nn.compact
        def __call__(self, x, train=False):
            for width in self.widths:
                x = nn.relu(nn.Conv(width, (3, 3))(x))
            return nn.Dense(3)(x.mean(axis=(1, 2)))

    model = Widths([4, 8])
    with pytest.raises(TypeError):
        hash(model)
    variables = jax.eval_shape(lambda: init_traced(model, (8, 8, 3), jax.random.key(0)))
    layers = model_layers(model, (8, 8, 3), variables)
    assert [(layer.label, layer.kind) for layer in layers] == [("Conv_0", "conv"), ("Conv_1", "conv"),
                                                               ("Dense_0", "dense")]
