"""Packages whose public names are imported from their modules on first use (PEP 562).

`import cnn_flax` and `import cnn_flax.data` stay cheap: a process that needs one small module of a package
(prepare's spawned photo decoders, a script that imports only the models) does not pay for JAX or the
training engine through the package's `__init__`.
"""

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose `names` map each public name to the module defining it."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook's own name
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)  # found without this hook from now on
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
