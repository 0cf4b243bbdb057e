"""Which `Separator` serves a request: one warm model per name, on the configured device."""

from __future__ import annotations

import threading
from collections.abc import Collection

import torch

from core.settings import Settings
from worker.models import ModelCache, resolve_device
from worker.separator import DemucsSeparator, Separator
from worker.windowed import WindowedSeparator


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device: torch.device = resolve_device(settings.device)
        self.models = ModelCache(settings.model_repo, self.device)
        self._separators: dict[tuple[str, frozenset[str] | None], Separator] = {}
        self._lock = threading.Lock()

    def separator(self, model_name: str, needed: Collection[str] | None = None) -> Separator:
        """A warm separator for `model_name`; `needed` lets a bag of specialists run only some."""
        s = self.settings
        if s.engine == "reference":
            return DemucsSeparator(self.models.get(model_name), self.device, shifts=s.shifts, overlap=s.overlap)
        key = (model_name, frozenset(needed) if needed is not None else None)
        with self._lock:
            if key not in self._separators:
                self._separators[key] = WindowedSeparator(
                    self.models.get(model_name),
                    self.device,
                    overlap=s.overlap,
                    overlap_s=s.engine_overlap_s,
                    batch_size=s.engine_batch_size,
                    precision=s.engine_precision,
                    needed=needed,
                )
            return self._separators[key]
