"""The layering contract (pyproject.toml's import-linter layers) holds, and it catches an upward import.

The second test plants `cnn_flax.models` importing `cnn_flax.run` in a copy of the package: if the contract
ever stopped looking (a renamed layer, a typo in the package name), this test would say so.
"""

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
