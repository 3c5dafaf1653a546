"""history.json: one record per finished epoch, rewritten atomically after each epoch.

On resume the records after the restored checkpoint are dropped, so the file always describes the
training that produced the current parameters.
"""

import json
import math
import os
from typing import Any

from cnn_flax.atomic import write_json

FIELDS = ("epoch", "learning_rate", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
OPTIONAL_FIELDS = ("ema_val_loss", "ema_val_accuracy",  # runs with a moving average of the weights
                   # marks of the training controls: the rate lowered after this epoch (ReduceLROnPlateau), the
                   # epoch early stopping ended the run, the best epoch whose weights were put back at the end.
                   "lr_reduced_to", "stopped_early", "restored_epoch")


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class History:
    def __init__(self, path: str, records: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.records = records or []

    @classmethod
    def load(cls, path: str) -> "History":
        if not os.path.exists(path):
            return cls(path)
        with open(path) as handle:
            try:
                return cls(path, json.load(handle))
            except json.JSONDecodeError:
                return cls(path)  # rebuilt from the checkpointed epoch on; the old file is replaced

    def truncate(self, epochs_done: int) -> "History":
        self.records = [r for r in self.records if r["epoch"] <= epochs_done]
        return self

    def append(self, record: dict[str, Any]) -> None:
        self.records.append({key: _finite(record.get(key)) for key in FIELDS + OPTIONAL_FIELDS
                             if key in FIELDS or key in record})

    def save(self) -> None:
        write_json(self.path, self.records)
