"""Where a training run's entries go: OUTPUT/log.jsonl and TensorBoard (rank 0), nowhere else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class NoLog:
    """What ranks other than 0 log: nothing."""

    def write(self, entry: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlLog:
    """Appends entries to OUTPUT/log.jsonl, and to TensorBoard when it is installed."""

    def __init__(self, output: Path) -> None:
        self.handle = (output / "log.jsonl").open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None

    def write(self, entry: dict[str, Any]) -> None:
        self.handle.write(json.dumps(entry) + "\n")
        self.handle.flush()
        if self.tb is None:
            return
        step = entry["step"]
        if entry["type"] == "train":
            for key in ("loss", "ce", "dis", "accuracy", "lr", "images_per_s", "data_wait_share"):
                if key in entry:
                    self.tb.add_scalar(f"train/{key}", entry[key], step)
        for key in ("images_per_s", "data_wait_share"):  # an epoch's record: its whole pass
            if entry["type"] == "val" and key in entry:
                self.tb.add_scalar(f"epoch/{key}", entry[key], step)
        for subset, metrics in entry.get("metrics", {}).items():
            for key, value in metrics.items():
                if key != "n":
                    self.tb.add_scalar(f"val/{subset}/{key}", value, step)

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()
