"""Which `Separator` serves a request: one warm model per name, on the configured device."""

from __future__ import annotations

import torch

from core.settings import Settings
from worker.models import ModelCache, resolve_device
from worker.separator import DemucsSeparator, Separator


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device: torch.device = resolve_device(settings.device)
        self.models = ModelCache(settings.model_repo, self.device)

    def separator(self, model_name: str) -> Separator:
        return DemucsSeparator(
            self.models.get(model_name), self.device, shifts=self.settings.shifts, overlap=self.settings.overlap
        )
