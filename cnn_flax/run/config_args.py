"""Checks of the `--config` flag before ml_collections reads it, so each mistake is one clear line.

ml_collections loads a missing config file lazily (the error surfaces at the first use of the config,
many lines long) and reports an unknown `--config.KEY` override as a bare KeyError. Both causes are easy
to know beforehand: the file exists or not, and the config it builds has the key or not.
"""

import importlib.util
import os

import ml_collections

from cnn_flax.errors import UserError


def config_flag_values(argv: list[str], name: str = "config") -> tuple[str | None, list[str]]:
    """The value of `--config` (None when absent) and the keys of the `--config.KEY` overrides, in order."""
    value, keys = None, []
    for i, arg in enumerate(argv):
        flag, sep, rest = arg.lstrip("-").partition("=")
        if not arg.startswith("-"):
            continue
        if flag == name:
            value = rest if sep else (argv[i + 1] if i + 1 < len(argv) else None)
        elif flag.startswith(f"{name}.") or flag.startswith(f"no{name}."):  # --noconfig.key: a boolean set False
            keys.append(flag.split(".", 1)[1])
    return value, keys


def load_config(value: str) -> ml_collections.ConfigDict:
    """`get_config()` of the file, or `get_config(ARG)` for `FILE:ARG`, as ml_collections calls it."""
    path, *arg = value.split(":", 1)
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        choices = sorted(f for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_")) \
            if os.path.isdir(folder) else []
        raise UserError(f"config file {path} not found; use one of {', '.join(choices) or 'the files in configs/'}")
    spec = importlib.util.spec_from_file_location("cnn_flax_checked_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*arg)


def check_config_flags(argv: list[str]) -> None:
    """Raise a UserError for a config file that does not exist or an override of a key it does not have."""
    value, keys = config_flag_values(argv)
    if value is None:
        return  # absl reports the missing required flag itself
    config = load_config(value)
    for key in keys:
        node = config
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise UserError(f"config.{key}: unknown config key {part!r}; see the config file or --mode=summary "
                                "for the keys that exist")
            node = node[part]
