"""The deck's models in PyTorch, trained and run the way a PyTorch user would: eager steps, channels-last.

Channels-last is the layout oneDNN's convolutions prefer on a CPU (and cuDNN's with tensor cores), so it
is what a user tuning for speed picks. Layers, orders and initialisation follow ours (Glorot-uniform
kernels, zero biases, BatchNorm momentum 0.01 in PyTorch's convention = Keras's 0.99, epsilon 1e-3);
the config's L2 penalty on kernels, λ·Σw², is SGD weight decay 2λ on the kernels alone. A 3x3/2 'same'
max pool is PyTorch's `padding=1`: the same output size as TensorFlow's (0, 1) padding, windows shifted
by a pixel, the same work; an explicit asymmetric pad would add a copy that neither our model nor a
PyTorch user's pays.
"""

import time

import torch
from torch import nn

from cnn_flax.bench.peers.deck import BN_EPSILON, BN_MOMENTUM, INCEPTION, MINI_GOOGLENET, MINIVGG_STAGES, MODELS


def _batch_norm(features: int, dims: int = 2) -> nn.Module:
    kind = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return kind(features, eps=BN_EPSILON, momentum=1 - BN_MOMENTUM)


def conv_module(inputs: int, features: int, kernel: int, strides: int = 1, same: bool = True,
                act_first: bool = False) -> nn.Sequential:
    conv = nn.Conv2d(inputs, features, kernel, strides, padding=kernel // 2 if same else 0)
    tail = [nn.ReLU(), _batch_norm(features)] if act_first else [_batch_norm(features), nn.ReLU()]
    return nn.Sequential(conv, *tail)


class Concat(nn.Module):
    """Branches side by side, concatenated along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


def _minivgg(classes: int) -> nn.Sequential:
    layers, channels, side = [], 3, MODELS["minivgg"].image_size // 2 ** len(MINIVGG_STAGES)
    for features in MINIVGG_STAGES:
        layers += [conv_module(channels, features, 3, act_first=True),
                   conv_module(features, features, 3, act_first=True), nn.MaxPool2d(2), nn.Dropout(0.25)]
        channels = features
    # Flatten in channels-last order, as Keras and ours do (the dense kernel's rows follow it).
    flatten = [Permute(), nn.Flatten()]
    head = [nn.Linear(side * side * channels, 512), nn.ReLU(), _batch_norm(512, dims=1), nn.Dropout(0.5)]
    return nn.Sequential(*layers, *flatten, *head, nn.Linear(512, classes))


class Permute(nn.Module):
    """NCHW to NHWC before a flatten, so the flattened order is channels-last's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


def _minigooglenet(classes: int) -> nn.Sequential:
    layers, channels = [conv_module(3, 96, 3)], 96
    for kind, *filters in MINI_GOOGLENET:
        if kind == "inc":
            layers.append(Concat(conv_module(channels, filters[0], 1), conv_module(channels, filters[1], 3)))
            channels = filters[0] + filters[1]
        else:
            layers.append(Concat(conv_module(channels, filters[0], 3, 2, same=False), nn.MaxPool2d(3, 2)))
            channels += filters[0]
    return nn.Sequential(*layers, nn.AvgPool2d(7), nn.Dropout(0.5), nn.Flatten(), nn.Linear(channels, classes))


def _inception(channels: int, filters: tuple[int, ...]) -> Concat:
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = filters
    return Concat(conv_module(channels, n1x1, 1),
                  nn.Sequential(conv_module(channels, n3x3_reduce, 1), conv_module(n3x3_reduce, n3x3, 3)),
                  nn.Sequential(conv_module(channels, n5x5_reduce, 1), conv_module(n5x5_reduce, n5x5, 5)),
                  nn.Sequential(nn.MaxPool2d(3, 1, padding=1), conv_module(channels, pool_proj, 1)))


def _deepergooglenet(classes: int) -> nn.Sequential:
    layers = [conv_module(3, 64, 5), nn.MaxPool2d(3, 2, padding=1), conv_module(64, 64, 1), conv_module(64, 192, 3),
              nn.MaxPool2d(3, 2, padding=1)]
    channels = 192
    for stage in (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e")):
        for name in stage:
            layers.append(_inception(channels, INCEPTION[name]))
            filters = INCEPTION[name]
            channels = filters[0] + filters[2] + filters[4] + filters[5]
        layers.append(nn.MaxPool2d(3, 2, padding=1))
    return nn.Sequential(*layers, nn.AvgPool2d(4), nn.Dropout(0.4), nn.Flatten(), nn.Linear(channels, classes))


def build(name: str) -> nn.Sequential:
    """The model `name` of the deck, logits out, Glorot-uniform kernels and zero biases as Keras's."""
    classes = MODELS[name].classes
    net = {"minivgg": _minivgg, "minigooglenet": _minigooglenet, "deepergooglenet": _deepergooglenet}[name](classes)
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return net


def count_params(net: nn.Module) -> int:
    """Keras's count: parameters and BatchNorm's running mean and variance (not its step counter)."""
    buffers = (b for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in buffers)


class Peer:
    """One model on one random batch: `train(steps)` and `infer(steps)` return their seconds."""

    def __init__(self, name: str, batch: int, train: bool) -> None:
        torch.manual_seed(0)
        deck = MODELS[name]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = build(name).to(self.device, memory_format=torch.channels_last)
        self.params = count_params(self.net)
        self.framework = f"torch-{torch.__version__}/{self.device.type}"
        self.xla = False
        self.x = torch.rand(batch, 3, deck.image_size, deck.image_size, device=self.device).to(
            memory_format=torch.channels_last)
        self.y = torch.randint(0, deck.classes, (batch,), device=self.device)
        if train:
            kernels = [p for n, p in self.net.named_parameters() if n.endswith("weight") and p.dim() > 1]
            others = [p for n, p in self.net.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
            self.optimizer = torch.optim.SGD([dict(params=kernels, weight_decay=2 * deck.l2), dict(params=others)],
                                             lr=deck.learning_rate, momentum=deck.momentum, nesterov=deck.nesterov)
            self.net.train()
        else:
            self.net.eval()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def train(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(self.net(self.x), self.y).backward()
            self.optimizer.step()
        self._sync()
        return time.perf_counter() - start

    def infer(self, steps: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(steps):
                self.net(self.x)
        self._sync()
        return time.perf_counter() - start
