"""Ablations as config overrides: train each variant in its own workdir, then one table and one plot.

The deck's extensions (CONV→ACT→BN order, ELU) are the default list. Each variant is an ordinary run
(`<workdir>/<variant>`), so an interrupted ablation resumes variant by variant.
"""

import ast
import os
from typing import Any

import jax
import ml_collections

from cnn_flax.atomic import write_text
from cnn_flax.errors import UserError
from cnn_flax.evaluation import comparison_table, plot_comparison
from cnn_flax.run.report_page import write_run_report
from cnn_flax.run.train import train_and_evaluate
from cnn_flax.training.history import History

DECK_EXTENSIONS = "baseline:;conv_act_bn:model.bn_order=conv_act_bn;elu:model.activation=elu"


def parse_variants(text: str) -> dict[str, list[tuple[str, Any]]]:
    """'name:key=value,key=value;name2:...' → {name: [(key, value), ...]} (values as Python literals)."""
    variants = {}
    for chunk in filter(None, (part.strip() for part in text.split(";"))):
        name, _, overrides = chunk.partition(":")
        if not name or name in variants:
            raise UserError(f"--variants: {chunk!r} needs a unique name before ':' (e.g. elu:model.activation=elu)")
        pairs = []
        for item in filter(None, (o.strip() for o in overrides.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise UserError(f"--variants: {item!r} in variant {name!r} is not KEY=VALUE")
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = value
            pairs.append((key.strip(), parsed))
        variants[name] = pairs
    if not variants:
        raise UserError("--variants is empty; e.g. 'baseline:;elu:model.activation=elu'")
    return variants


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[tuple[str, Any]]) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides:
        *path, last = key.split(".")
        node = config
        for part in path:
            if part not in node:
                raise UserError(f"--variants: unknown config key {key!r}")
            node = node[part]
        if last not in node:
            raise UserError(f"--variants: unknown config key {key!r}")
        node[last] = type(node[last])(value) if isinstance(node[last], bool | int | float) else value
    return config


def run_ablation(config: ml_collections.ConfigDict, workdir: str, variants: str = DECK_EXTENSIONS) -> str:
    """Train every variant (each resuming from its own checkpoints), then ablation.txt and ablation.png."""
    results, histories = {}, {}
    for name, overrides in parse_variants(variants).items():
        run_dir = os.path.join(workdir, name)
        result = train_and_evaluate(apply_overrides(config, overrides), run_dir)
        if result.interrupted:
            raise UserError(f"the ablation stopped during variant {name!r}; run the same command to continue")
        results[name] = result.metrics or {}  # None on processes other than 0
        histories[name] = History.load(os.path.join(run_dir, "history.json")).records
    table = comparison_table(results)
    if jax.process_index() == 0:  # the others have no metrics to compare (they write no reports)
        write_text(os.path.join(workdir, "ablation.txt"), table + "\n")
        plot_comparison(histories, os.path.join(workdir, "ablation.png"))
        write_run_report(workdir, "ablate")
    return table
