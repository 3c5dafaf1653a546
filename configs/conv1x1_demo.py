"""The deck's 1x1-convolution demo on a 28x28x192 input: pass `direct` or `bottleneck`.

    python launch.py --config configs/conv1x1_demo.py:direct --mode=summary       # 153,632 parameters
    python launch.py --config configs/conv1x1_demo.py:bottleneck --mode=summary   # 15,920 parameters

A summary-only model (it has no classifier); runs in a second, no data needed.
"""

from configs.common import base


def get_config(variant: str = "direct"):
    config = base(f"conv1x1_demo_{variant}")
    config.model.update(dict(name="conv1x1_demo", variant=variant, input_shape=(28, 28, 192)))
    return config
