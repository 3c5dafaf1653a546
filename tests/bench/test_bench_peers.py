"""The Keras and PyTorch peers: our architectures exactly (tables read from our source, parameter counts), and a
tiny timed run of each prints the line the table reads, from a process that imported none of our JAX code.

A framework that is not installed skips its tests with the reason (`pip install 'cnn_flax[bench]'` adds PyTorch).
"""

import importlib.util
import math
import sys

import jax
import pytest

from cnn_flax.bench import cli
from cnn_flax.bench.peers import deck
from cnn_flax.models import DeeperGoogLeNet, MiniGoogLeNet, MiniVGG, googlenet, minivgg

OURS = {"minivgg": MiniVGG(num_classes=10), "minigooglenet": MiniGoogLeNet(num_classes=10),
        "deepergooglenet": DeeperGoogLeNet(num_classes=200)}


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install 'cnn_flax[bench]')")


def test_the_peers_read_our_models_tables_from_their_source():
    assert deck.MINI_GOOGLENET == googlenet.MINI_GOOGLENET
    assert deck.INCEPTION == {name: googlenet.INCEPTION[name] for name in ("3a", "3b", "4a", "4b", "4c", "4d", "4e")}
    assert deck.MINIVGG_STAGES == minivgg.STAGES
    with pytest.raises(LookupError, match="cnn_flax/models/googlenet.py has no constant GOOGLENET"):
        deck.model_constant("googlenet", "GOOGLENET")  # a class, not a literal constant


@pytest.mark.parametrize("name", list(deck.MODELS))
def test_the_decks_parameter_counts_are_ours(name):
    """Keras's count (weights, biases, BatchNorm's moving statistics) of our Flax model, from its shapes."""
    size = deck.MODELS[name].image_size
    shapes = jax.eval_shape(lambda: OURS[name].init(jax.random.key(0), jax.numpy.zeros((1, size, size, 3))))
    assert sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes)) == deck.MODELS[name].params


@pytest.mark.parametrize("name", list(deck.MODELS))
def test_torch_models_have_our_parameter_counts_and_outputs(name):
    _needs("torch")
    import torch

    from cnn_flax.bench.peers import torch_models

    net, spec = torch_models.build(name), deck.MODELS[name]
    assert torch_models.count_params(net) == spec.params
    assert net.eval()(torch.zeros(2, 3, spec.image_size, spec.image_size)).shape == (2, spec.classes)


def test_keras_models_have_our_parameter_counts():
    _needs("keras")
    from cnn_flax.bench.peers import keras_models

    for name, spec in deck.MODELS.items():
        model = keras_models.build(name)
        assert model.count_params() == spec.params, name
        assert tuple(model.output.shape) == (None, spec.classes)


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_a_tiny_peer_run_prints_its_line_without_our_jax_code(framework):
    _needs({"keras": "keras", "torch": "torch"}[framework])
    probe = ("import runpy, sys; sys.argv = ['peer'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('cnn_flax.bench.peers.run', run_name='__main__')\n"
             "finally:\n    print('imported', *(m for m in sys.modules if m == 'flax' or m.startswith('cnn_flax')))")
    command = [sys.executable, "-c", probe, "--framework", framework, "--model", "minivgg", "--batch", "4",
               "--seconds", "0.05"]
    code, out, err, _ = cli.run_measured(command)
    assert code == 0, err[-2000:]
    values = cli.parse_line(out, "peer=")
    assert values["model"] == "minivgg" and values["batch"] == 4 and values["params"] == 2_171_178
    assert values["framework"].startswith(framework)
    assert values["train_img_per_s"] > 0 and values["eval_img_per_s"] > 0 and values["seconds"] == 0.05
    assert values["train_steps"] % 3 == 0 and values["eval_steps"] % 3 == 0  # three timed windows each
    # Eval ran in its own process: its peak is its own, below the train process's, which imported the same.
    assert 0 < values["rss_imports_mb"] < values["train_peak_rss_mb"] and values["eval_peak_rss_mb"] > 0
    # Of cnn_flax only the command line, the phases, the tables and the defaults; no Flax. (TensorFlow 2.21
    # imports JAX itself where it is installed: the Keras peer's memory includes what its framework loads.)
    imported = set(out.strip().splitlines()[-1].split()[1:])
    assert imported == {"cnn_flax", "cnn_flax.bench", "cnn_flax.bench.cli", "cnn_flax.bench.peers",
                        "cnn_flax.bench.peers.deck", "cnn_flax.bench.phases",
                        "cnn_flax.defaults", "cnn_flax.errors", "cnn_flax.lazy",
                        f"cnn_flax.bench.peers.{framework}_models"}


def test_a_missing_framework_or_bad_flag_is_one_line(monkeypatch):
    from cnn_flax.bench.peers import run
    from cnn_flax.errors import UserError

    monkeypatch.setattr(run.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"--framework torch: torch is not installed; pip install 'cnn_flax\[bench\]'"):
        run.main(["--framework", "torch", "--model", "minivgg"])
    with pytest.raises(UserError, match="--seconds 0: must be positive"):
        run.main(["--framework", "torch", "--model", "minivgg", "--seconds", "0"])
