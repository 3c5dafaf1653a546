"""launch.py's checks of --config before ml_collections reads it: the file exists and every override's key does."""

import os

import pytest
from repo_paths import ROOT  # noqa: E402

from cnn_flax.errors import UserError
from cnn_flax.run.config_args import check_config_flags, config_flag_values, load_config

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")


def test_flag_values_in_every_spelling_absl_accepts():
    argv = ["launch.py", "--config", "c.py:x", "--config.model.name=vgg", "-config.batch_size", "8",
            "--noconfig.tta", "--mode=summary", "--workdir=/tmp/config.py"]
    assert config_flag_values(argv) == ("c.py:x", ["model.name", "batch_size", "tta"])
    assert config_flag_values(["launch.py", "--config=a.py", "--verbose"]) == ("a.py", [])
    assert config_flag_values(["launch.py", "--mode=summary"]) == (None, [])


def test_known_keys_pass_and_unknown_ones_name_the_key():
    check_config_flags(["launch.py", f"--config={QUICKSTART}", "--config.model.bn_order=conv_bn_act",
                        "--config.optimizer.learning_rate=0.1", "--config.tta"])
    with pytest.raises(UserError, match=r"^config\.model\.depth: unknown config key 'depth'; see the config file"):
        check_config_flags(["launch.py", f"--config={QUICKSTART}", "--config.model.depth=3"])
    with pytest.raises(UserError, match=r"^config\.batch_size\.x: unknown config key 'x'"):  # not a section
        check_config_flags(["launch.py", "--config", QUICKSTART, "--config.batch_size.x=3"])


def test_missing_file_lists_the_configs_next_to_it_and_arguments_reach_get_config():
    with pytest.raises(UserError, match=r"config file .*configs/nothere.py not found; use one of .*quickstart.py"):
        check_config_flags(["launch.py", "--config", os.path.join(ROOT, "configs", "nothere.py")])
    with pytest.raises(UserError, match="config file nowhere/x.py not found; use one of the files in configs/"):
        load_config("nowhere/x.py")
    demo = os.path.join(ROOT, "configs", "conv1x1_demo.py")
    assert load_config(f"{demo}:direct").to_dict() != load_config(f"{demo}:bottleneck").to_dict()
