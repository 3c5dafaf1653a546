"""Every `python launch.py ...` command in README.md and docs/*.md parses as launch.py would parse it.

A command a reader copies must run: its --config file exists and accepts its `:ARG`, every `--config.KEY`
names a key that config has, every other flag is one launch.py defines, and every value parses. The
`python -m cnn_flax....` commands (the benchmarks) are parsed by their own argument parsers. A command
that only looks right (a key renamed since, a flag that never existed) is the documentation bug nobody
notices until a newcomer pastes it. The README also stays short, and nothing names a path outside the
repository.
"""

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from unittest import mock

import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from repo_paths import ROOT as REPO

ROOT = Path(REPO)
if REPO not in sys.path:  # launch.py and configs/ live at the repository root
    sys.path.insert(0, REPO)

import launch  # noqa: E402 - only defines its flags; main() runs under `if __name__ == "__main__"`
from cnn_flax.errors import UserError  # noqa: E402
from cnn_flax.run.ablation import apply_overrides, parse_variants  # noqa: E402
from cnn_flax.run.config_args import load_config  # noqa: E402

README_MAX_LINES = 260
OUTSIDE_PATH = "../" + "shared"  # spelled in two pieces so that this file does not hold it
_COMMAND = re.compile(r"(?:^|&&|;|\s)python3? (?:launch\.py\b|-m cnn_flax\.)")
_INLINE = re.compile(r"`([^`]*)`")
_SEPARATORS = {"&&", "||", ";", "|"}


@dataclasses.dataclass(frozen=True)
class Command:
    source: str  # "README.md:42"
    args: tuple[str, ...]  # what follows `python launch.py` (or `python -m MODULE`)
    module: str | None = None  # `python -m MODULE`; None for launch.py


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands(text: str, name: str) -> tuple[list[Command], list[str]]:
    """The launch.py and `python -m cnn_flax....` commands of a Markdown text, and the problems found reading them.

    A code line (indented, or in a fence) is a command when it runs one, possibly after `&&`; lines
    ending in a backslash continue on the next; `# comments` end it. In prose, a command is an inline code
    span; one left open at the end of its line cannot be checked and is reported.
    """
    commands, problems = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start, line = i + 1, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        where, stripped = f"{name}:{start}", line.strip()
        found, problem = [], None
        if "`" not in stripped:
            if _COMMAND.search(stripped):
                found, problem = _split_command(stripped, where)
        else:
            for span in _INLINE.findall(stripped):
                if _COMMAND.search(span):
                    spans, problem = _split_command(span, where)
                    found += spans
            unclosed = _INLINE.sub("", stripped).partition("`")[2]
            if _COMMAND.search(unclosed):
                problem = f"{where}: an inline command is not closed on its line; keep it on one line"
        commands += found
        problems += [problem] if problem else []
    return commands, problems


def _split_command(line: str, where: str) -> tuple[list[Command], str | None]:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as error:
        return [], f"{where}: cannot split {line!r} as a shell line ({error})"
    commands, segment = [], []
    for token in [*tokens, ";"]:
        if token not in _SEPARATORS:
            segment.append(token)
            continue
        while segment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[0]):  # VAR=value before a command
            segment.pop(0)
        if len(segment) >= 2 and segment[0] in ("python", "python3") and segment[1] == "launch.py":
            commands.append(Command(where, tuple(segment[2:])))
        elif len(segment) >= 3 and segment[0] in ("python", "python3") and segment[1] == "-m" \
                and segment[2].startswith("cnn_flax."):
            commands.append(Command(where, tuple(segment[3:]), module=segment[2]))
        segment = []
    return commands, None


def _launch_flags() -> dict[str, flags.Flag]:
    """The flags launch.py itself defines (not absl's own), by name."""
    return {flag.name: flag for flag in launch.FLAGS.get_flags_for_module(launch.__name__)}


def _config_key(config: ml_collections.ConfigDict, key: str) -> str | None:
    """None when `key` (dotted) exists in `config`, else the first missing part."""
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return part
        node = node[part]
    return None


def command_problems(command: Command) -> list[str]:
    """What is wrong with one command, each problem one line naming the file and line; empty when it parses."""
    where, own = command.source, _launch_flags()
    problems, config_value, overrides, variants, args = [], None, [], None, list(command.args)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            problems.append(f"{where}: unexpected argument {arg!r} (launch.py takes flags only)")
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name == "config" or name.startswith(("config.", "noconfig.")):
            if name == "config":
                config_value = value if has_value else (args[i] if i < len(args) else None)
                i += 0 if has_value else 1
            else:
                overrides.append(name.split(".", 1)[1])
            continue
        flag = own.get(name)
        if flag is None and name.startswith("no") and getattr(own.get(name[2:]), "boolean", False):
            flag = own[name[2:]]  # --noverbose
        if flag is None:
            problems.append(f"{where}: --{name} is not a flag of launch.py; its flags are {', '.join(sorted(own))}")
            continue
        if not has_value and not flag.boolean and i < len(args):
            value, has_value, i = args[i], True, i + 1  # `--flag value`, as absl reads a non-boolean flag
        if has_value:
            try:
                flag.parser.parse(value)
            except (ValueError, flags.Error) as error:
                problems.append(f"{where}: --{name}={value!r} is not a valid value ({error})")
        if flag.name == "variants":
            variants = value
    config = None
    if config_value is not None:
        path, _, config_arg = config_value.partition(":")
        if not (ROOT / path).is_file():
            problems.append(f"{where}: --config {path} does not exist in the repository")
        else:
            try:
                config = load_config(str(ROOT / path) + (f":{config_arg}" if config_arg else ""))
            except Exception as error:  # noqa: BLE001 - whatever get_config raises, the command cannot run
                problems.append(f"{where}: {path}'s get_config({config_arg!r}) fails: {type(error).__name__}: {error}")
    elif overrides:
        problems.append(f"{where}: --config.{overrides[0]} without --config")
    if config is not None:
        for key in overrides:
            missing = _config_key(config, key)
            if missing is not None:
                problems.append(f"{where}: --config.{key}: {config_value} has no key {missing!r}")
        if variants is not None:
            try:
                for pairs in parse_variants(variants).values():
                    apply_overrides(config, pairs)
            except UserError as error:
                problems.append(f"{where}: {error} in {config_value}")
    if not problems:
        problems += _absl_problems(command, config_value)
    return problems


def _absl_problems(command: Command, config_value: str | None) -> list[str]:
    """Parse the command with launch.py's own flags and ml_collections's config flag, in flag values of its own
    (so that one command's config overrides never leak into the next): this checks every value's type."""
    args = [str(ROOT / a) if config_value and a == config_value else a for a in command.args]
    args = [f"--config={ROOT / config_value}" if config_value and a == f"--config={config_value}" else a
            for a in args]
    argv = ["launch.py", *args]
    values = flags.FlagValues()  # ml_collections finds the overrides to define in sys_argv
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    for name, flag in _launch_flags().items():
        if name != "config":
            values[name] = copy.deepcopy(flag)
    try:
        values(argv)
        if config_value is not None:
            values["config"].value  # noqa: B018 - ml_collections loads the file and applies overrides here
    except Exception as error:  # noqa: BLE001 - absl and ml_collections raise several kinds
        return [f"{command.source}: launch.py's flags reject it: {' '.join(str(error).split())}"]
    return []


class _Parsed(Exception):  # noqa: N818 - not an error: the module's parser accepted the arguments
    pass


def module_problems(command: Command) -> list[str]:
    """What is wrong with a `python -m cnn_flax....` command: the module exists and its argparse parser
    accepts the arguments. The module runs as `__main__` up to its `parse_args`, which stops it there."""
    where, module = command.source, command.module
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return [f"{where}: python -m {module}: no such module"]
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        parse_args(parser, args, namespace)
        raise _Parsed

    errors = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), \
            mock.patch.object(sys, "argv", [module, *command.args]), contextlib.redirect_stderr(errors):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        except _Parsed:
            return []
        except SystemExit as exit_:
            message = errors.getvalue().strip().splitlines() or [f"it exited ({exit_.code})"]
            return [f"{where}: python -m {module} rejects its arguments: {message[-1]}"]
    return [f"{where}: python -m {module} finished without parsing its arguments with argparse"]


def _all_commands() -> tuple[list[Command], list[str]]:
    commands, problems = [], []
    for path in doc_files():
        found, bad = documented_commands(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        commands += found
        problems += bad
    return commands, problems


DOC_COMMANDS, READING_PROBLEMS = _all_commands()


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=[f"{c.source}" for c in DOC_COMMANDS])
def test_every_documented_command_parses(command):
    assert (module_problems(command) if command.module else command_problems(command)) == []


def test_every_documented_command_was_read():
    assert READING_PROBLEMS == []
    sources = {c.source.split(":")[0] for c in DOC_COMMANDS}
    assert "README.md" in sources and any(s.startswith("docs/") for s in sources)
    first = DOC_COMMANDS[0]
    assert (first.source, first.args) == ("README.md:3", ("--config", "configs/quickstart.py"))


def test_commands_are_read_across_continuations_comments_and_inline_code():
    text = "\n".join([
        "Intro with `python launch.py --config configs/quickstart.py --mode=summary` inline.",
        "",
        "    python launch.py --config configs/vgg_imagenet.py:A --mode=prepare \\",
        "        --config.data.dir=/data/tfds   # once, hours",
        "    pip install -e . && JAX_PLATFORMS=cpu python launch.py --config configs/quickstart.py",
        "    python -m pytest   # not a launch.py command",
        "Broken `python launch.py --config",
        "configs/quickstart.py` across lines.",
    ])
    commands, problems = documented_commands(text, "x.md")
    assert commands == [
        Command("x.md:1", ("--config", "configs/quickstart.py", "--mode=summary")),
        Command("x.md:3", ("--config", "configs/vgg_imagenet.py:A", "--mode=prepare", "--config.data.dir=/data/tfds")),
        Command("x.md:5", ("--config", "configs/quickstart.py")),
    ]
    assert problems == ["x.md:7: an inline command is not closed on its line; keep it on one line"]


@pytest.mark.parametrize("line, expected", [
    ("python launch.py --config configs/quickstart.py --config.optimizer.learning_rat=0.1",
     "--config.optimizer.learning_rat: configs/quickstart.py has no key 'learning_rat'"),
    ("python launch.py --config configs/minivgg_cifar10.py --config.model.stage4=False",
     "--config.model.stage4: configs/minivgg_cifar10.py has no key 'stage4'"),
    ("python launch.py --config configs/no_such.py", "--config configs/no_such.py does not exist"),
    ("python launch.py --config configs/vgg16_finetune.py:tail --config.data.root=photos",
     "configs/vgg16_finetune.py's get_config('tail') fails: ValueError: configs/vgg16_finetune.py:tail: use :head"),
    ("python launch.py --config configs/quickstart.py:head", "configs/quickstart.py's get_config('head') fails"),
    ("python launch.py --config configs/quickstart.py --epochs=3", "--epochs is not a flag of launch.py"),
    ("python launch.py --config configs/quickstart.py --mode=trian", "--mode='trian' is not a valid value"),
    ("python launch.py --config configs/quickstart.py photos/", "unexpected argument 'photos/'"),
    ("python launch.py --config.num_epochs=3", "--config.num_epochs without --config"),
    ("python launch.py --config configs/quickstart.py --config.num_epochs=five", "launch.py's flags reject it"),
    ("python launch.py --config configs/quickstart.py --mode=ablate --variants 'a:;b:optimizer.lr=0.1'",
     "unknown config key 'optimizer.lr'"),
])
def test_a_wrong_command_is_reported_with_its_cause(line, expected):
    (command,), _ = documented_commands(f"    {line}   # a comment", "bad.md")
    problems = command_problems(command)
    assert len(problems) == 1 and problems[0].startswith("bad.md:1: ") and expected in problems[0], problems


@pytest.mark.parametrize("line, expected", [
    ("python -m cnn_flax.bench.tabel --rounds 3", "python -m cnn_flax.bench.tabel: no such module"),
    ("python -m cnn_flax.bench.table --laps 3", "error: unrecognized arguments: --laps 3"),
    ("python -m cnn_flax.bench.table --rounds three", "invalid int value: 'three'"),
])
def test_a_wrong_module_command_is_reported_with_its_cause(line, expected):
    (command,), _ = documented_commands(f"    {line}   # a comment", "bad.md")
    problems = module_problems(command)
    assert len(problems) == 1 and problems[0].startswith("bad.md:1: ") and expected in problems[0], problems
    assert module_problems(Command("good.md:1", ("--rounds", "3", "--peers", "none"), "cnn_flax.bench.table")) == []


def test_the_same_commands_written_right_parse():
    text = "\n".join([
        "    python launch.py --config configs/quickstart.py --config.optimizer.learning_rate=0.1",
        "    python launch.py --config configs/vgg_imagenet.py:E --mode=summary --workdir runs/e",
        "    python launch.py --config configs/quickstart.py --mode=ablate --variants 'a:;b:optimizer.l2=0.1'",
        "    python launch.py --mode=report --workdir runs/quickstart --noverbose",
    ])
    commands, _ = documented_commands(text, "good.md")
    assert len(commands) == 4 and [command_problems(c) for c in commands] == [[], [], [], []]


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def _repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files; without git, every file outside .git and .venv."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
        return [ROOT / name for name in listed if name and (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for folder, subfolders, files in os.walk(ROOT):
            subfolders[:] = [d for d in subfolders if d not in (".git", ".venv", "__pycache__", ".jax_cache")]
            found += [Path(folder) / name for name in files]
        return found


def test_nothing_names_a_path_outside_the_repository():
    files = _repository_files()
    assert ROOT / "README.md" in files
    naming = [str(path.relative_to(ROOT)) for path in files if OUTSIDE_PATH.encode() in path.read_bytes()]
    assert naming == [], f"these files name {OUTSIDE_PATH}, which a clone does not have"


# The worked examples of docs/architecture.md, run against the package: a page that teaches how to extend
# the code must keep up with it.

def python_blocks(section: str) -> list[str]:
    """The ```python blocks under `## section` of docs/architecture.md, in order; each is preceded by blank
    lines up to its place in the page, so that a traceback names the page's own line."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", text[: end if end > 0 else len(text)], re.S):
        if match.start() > start:
            blocks.append("\n" * text.count("\n", 0, match.start(1)) + textwrap.dedent(match.group(1)))
    return blocks


def _run_block(code: str, namespace: dict | None = None) -> dict:
    namespace = {} if namespace is None else namespace
    exec(compile(code, str(ROOT / "docs" / "architecture.md"), "exec"), namespace)  # noqa: S102 - our own page
    return namespace


def test_the_architecture_page_adds_a_model_that_builds_from_its_config(monkeypatch):
    import jax

    from cnn_flax.models import MODELS, create_model, init_variables

    module_code, config_code = python_blocks("Adding a model")
    tiny_net = _run_block(module_code)["TinyNet"]
    monkeypatch.setitem(MODELS, "tiny", tiny_net)
    config = _run_block(config_code)["get_config"]()
    assert (config.model.name, config.data.name) == ("tiny", "digits")
    model = create_model({**config.model.to_dict(), "num_classes": 10})
    variables = init_variables(model, jax.random.key(0), (32, 32, 3))
    counts = jax.tree_util.tree_map(lambda a: a.size, variables["params"])
    # 3x3 convolutions 3→32 and 32→64 with biases, then a dense 64→10 with bias.
    assert sum(jax.tree_util.tree_leaves(counts)) == (27 * 32 + 32) + (288 * 64 + 64) + (64 * 10 + 10)
    assert model.apply(variables, np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 10)
    with pytest.raises(UserError, match="model.stage4 does not apply to model 'tiny'; its options are num_classes"):
        create_model({"name": "tiny", "stage4": False})


def test_the_architecture_page_adds_a_dataset_that_serves_its_file(monkeypatch, tmp_path):
    from sklearn.datasets import load_digits

    import cnn_flax.data.registry as registry
    from configs import quickstart

    registry_code, source_code = python_blocks("Adding a dataset")
    module = types.ModuleType("cnn_flax.data.sources.npz")
    _run_block(source_code, module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry, "SOURCES", dict(registry.SOURCES))
    _run_block(registry_code, dict(vars(registry)))
    digits = load_digits()
    images = np.repeat(np.repeat((digits.images * 15).astype(np.uint8), 4, axis=1), 4, axis=2)[..., None].repeat(3, -1)
    labels = digits.target
    path = tmp_path / "my_data.npz"
    np.savez(path, x_train=images[:1200], y_train=labels[:1200], x_val=images[1200:1500], y_val=labels[1200:1500],
             x_test=images[1500:], y_test=labels[1500:])
    config = quickstart.get_config()  # as the page's command: --config.data.name=npz --config.data.root=my_data.npz
    config.data.name, config.data.root = "npz", str(path)
    source = registry.make_source(config.data)
    assert source.info.num_classes == 10 and source.info.split_sizes == {"train": 1200, "val": 300, "test": 297}
    test_images, test_labels = source.arrays("test")
    np.testing.assert_array_equal(test_images, images[1500:])
    np.testing.assert_array_equal(test_labels, labels[1500:])
    config.data.resize = "stretch"  # a folder key the npz dataset does not read
    with pytest.raises(UserError, match="data.resize does not apply to data.name='npz'; its keys are .*, root"):
        registry.make_source(config.data)


def test_the_architecture_page_hook_stops_at_its_accuracy():
    from cnn_flax.training.loop import LoopState

    stop_at = _run_block(python_blocks("Adding a training hook")[0])["StopAtAccuracy"](0.95)
    loop = LoopState(epoch=3, batch=10, num_epochs=5, steps_per_epoch=10, state=None, metrics=None)
    for accuracy, stops in ((0.949, False), (0.95, True)):
        loop.record, loop.stop = {"val_accuracy": accuracy}, False
        stop_at.on_epoch_end(loop)
        assert loop.stop is stops


@pytest.mark.slow
def test_the_architecture_page_trains_with_its_hook(monkeypatch, tmp_path, capsys):
    """The page's own lines, on the quickstart made tiny: the hook ends the run at the first epoch that
    reaches its accuracy (0.0 here, so the first), and the page's print shows where."""
    from run_configs import tiny_config

    from configs import quickstart

    hook_code, fit_code = python_blocks("Adding a training hook")
    config = tiny_config(num_epochs=3)
    monkeypatch.setattr(quickstart, "get_config", lambda: config)
    monkeypatch.chdir(tmp_path)
    namespace = _run_block(hook_code)
    fit_code = fit_code.replace("StopAtAccuracy(0.95)", "StopAtAccuracy(0.0)")
    _run_block(fit_code, namespace)
    loop = namespace["loop"]
    assert loop.stop and loop.epoch == 1 and capsys.readouterr().out.startswith(f"1 {loop.record['val_accuracy']}")
    assert os.path.isfile(tmp_path / "runs" / "early_stop" / "history.json")


def test_the_architecture_page_adds_a_mode(monkeypatch, capsys):
    from cnn_flax.run import modes
    from configs import quickstart

    modes_code, launch_code = python_blocks("Adding a launcher mode")
    count = _run_block(modes_code, dict(vars(modes)))["count"]
    monkeypatch.setattr(modes, "count", count, raising=False)
    _run_block(launch_code, dict(vars(launch)))["_count"](quickstart.get_config(), None)
    assert capsys.readouterr().out == "train: 1347\nval: 450\ntest: 450\n"
    section = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split("## Adding a launcher mode")[1]
    assert "`train: 1347`, `val: 450`, `test: 450`" in " ".join(section.split())
