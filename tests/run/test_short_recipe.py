"""The quickstart with the current-recipe switches for 4 epochs: plain and moving-average weights both classify.

Before the EMA warmup and precise BN this run reached 0.92 training accuracy with a test rank-1 of 0.30, and
0.096 (chance) for the moving average: BatchNorm's running statistics and the average still held their
initial values. Measured with this recipe and precise_bn_batches=20, on the digits split of before 2026-12-07
(scikit-learn's): rank-1 0.991 for both at 32x32, with the quickstart's momentum 0.9 and with Keras's 0.99
alike; at the test's 16x16 (a quarter of the work), seeds 0 and 1 gave 0.978 and 0.996 plain, 0.980 and 0.993
averaged. End to end on the real digits, so marked slow.
"""

import pytest
from run_configs import with_overrides

from cnn_flax.run.train import train_and_evaluate

RECIPE = {"num_epochs": 4, "optimizer.name": "adamw", "optimizer.learning_rate": 0.002,
          "schedule.name": "warmup_cosine", "schedule.warmup_epochs": 1.0, "loss.label_smoothing": 0.1,
          "optimizer.accum_steps": 2, "ema_decay": 0.99, "optimizer.clip_global_norm": 1.0,
          "precise_bn_batches": 20}


@pytest.mark.slow
def test_four_epochs_of_the_current_recipe_reach_ninety_percent_with_plain_and_averaged_weights(tmp_path):
    from configs import quickstart

    config = with_overrides(quickstart.get_config(), {**RECIPE, "data.image_size": 16, "num_devices": 1})
    result = train_and_evaluate(config, str(tmp_path))
    metrics = result.metrics
    assert metrics["num_examples"] == 450
    assert metrics["rank1"] >= 0.9 and metrics["ema_rank1"] >= 0.9, metrics
