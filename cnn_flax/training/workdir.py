"""`RunFiles`: every file a run leaves in its workdir goes through it, so only process 0 writes.

With several processes the checkpoints are collective but every other file (history, plots, reports) is
written once; hooks, evaluation and the modes all name their files here, so no writer forgets the rule.
"""

import dataclasses
import os
from typing import Any

import jax

from cnn_flax.atomic import write_json, write_text


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Every path a run writes; `is_writer` is False on all processes but 0 (checkpoints are collective)."""

    workdir: str

    @property
    def is_writer(self) -> bool:
        return jax.process_index() == 0

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    @property
    def checkpoints(self) -> str:
        return self.path("checkpoints")

    def write_json(self, name: str, payload: Any) -> None:
        if self.is_writer:
            write_json(self.path(name), payload)

    def write_text(self, name: str, text: str) -> None:
        if self.is_writer:
            write_text(self.path(name), text)
