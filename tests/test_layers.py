"""The layering contract (pyproject.toml's import-linter layers) holds, and it catches an upward import.

The second test plants `cnn_flax.models` importing `cnn_flax.run` in a copy of the package: if the contract
ever stopped looking (a renamed layer, a typo in the package name), this test would say so.
"""

import ast
import os
import shutil
import subprocess
import sys

from repo_paths import ROOT

LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([LINT, "--no-cache", "--config", os.path.join(root, "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(os.path.join(ROOT, "cnn_flax"), tmp_path / "cnn_flax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    planted = tmp_path / "cnn_flax" / "models" / "minivgg.py"
    planted.write_text(planted.read_text() + "\n\ndef _upward():\n    from cnn_flax.run.train import Trainer\n"
                       "    return Trainer\n")
    done = lint(str(tmp_path))
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
    assert "cnn_flax.models.minivgg -> cnn_flax.run.train" in done.stdout


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names_used_across_modules(root: str) -> list[str]:
    """`from cnn_flax.x import _y`, and `m._y` where m names a module of the project, in every source file."""
    ours = ("cnn_flax", "configs")

    def is_module(dotted: str) -> bool:
        path = os.path.join(root, *dotted.split("."))
        return os.path.isfile(path + ".py") or os.path.isdir(path)

    found = []
    sources = [os.path.join(root, "launch.py")]
    for top in (*ours, "tests"):
        for folder, _, names in os.walk(os.path.join(root, top)):
            sources += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    for path in sources:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        modules = {}  # local name -> the project module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in ours:
                for alias in node.names:
                    dotted = f"{node.module}.{alias.name}"
                    if _private(alias.name):
                        found.append(f"{os.path.relpath(path, root)}:{node.lineno} imports {dotted}")
                    elif is_module(dotted):
                        modules[alias.asname or alias.name] = dotted
            elif isinstance(node, ast.Import):
                modules.update({a.asname: a.name for a in node.names if a.asname and a.name.split(".")[0] in ours})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and _private(node.attr)):
                found.append(f"{os.path.relpath(path, root)}:{node.lineno} uses {modules[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_is_used_outside_its_module(tmp_path):
    assert _private_names_used_across_modules(ROOT) == []
    # The scan sees both forms: a planted import and a planted attribute of a module alias.
    (tmp_path / "cnn_flax").mkdir()
    (tmp_path / "cnn_flax" / "engine.py").write_text("_hidden = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("from cnn_flax.engine import _hidden\n"
                                                  "from cnn_flax import engine\nprint(engine._hidden)\n")
    (tmp_path / "launch.py").write_text("")
    assert _private_names_used_across_modules(str(tmp_path)) == [
        "tests/test_x.py:1 imports cnn_flax.engine._hidden", "tests/test_x.py:3 uses cnn_flax.engine._hidden"]
