"""Loading demucs models once per process, from a local repo or the official download."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
import yaml  # type: ignore[import-untyped]
from demucs.apply import BagOfModels
from demucs.pretrained import get_model
from demucs.repo import ModelLoadingError

from core.domain.errors import ModelUnavailable

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("STEMBOT_DEVICE=cuda, but no CUDA device is available.")
    return torch.device(device)


def load_model(name: str, repo: Path | None, device: torch.device) -> BagOfModels:
    """Load `name` as a bag of models on `device`; repo=None downloads official weights."""
    try:
        model = get_model(name, repo=repo)
    except (ModelLoadingError, SystemExit, OSError, ValueError) as exc:
        # The path is the host's: it goes to the log, never to a user.
        where = f"the local repo {repo}" if repo else "the official download"
        log.error("model %s is not available from %s: %r", name, where, exc)
        raise ModelUnavailable(
            f"The model {name} is not available on this bot.", detail=f"not in {where}: {exc!r}"
        ) from exc
    if not isinstance(model, BagOfModels):
        model = BagOfModels([model])
    model.to(device).eval()
    log.info("loaded model %s (%s) on %s", name, ", ".join(model.sources), device)
    return model


def in_repo(name: str, repo: Path | None) -> bool:
    """Whether `name` can be loaded, without loading it: from a local repo, its bag's yaml and
    every weights file it names (or a single model's own file); the official download is
    taken to have every model demucs names."""
    if repo is None:
        return True
    weights = {p.stem.split("-")[0] for p in repo.glob("*.th")}
    bag = repo / f"{name}.yaml"
    if not bag.is_file():
        return name in weights
    try:
        members = yaml.safe_load(bag.read_text()).get("models") or []
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return bool(members) and all(str(sig) in weights for sig in members)


class ModelCache:
    """Keeps every model this process has used warm; loading takes seconds, a job may take less."""

    def __init__(self, repo: Path | None, device: torch.device) -> None:
        self.repo = repo
        self.device = device
        self._models: dict[str, BagOfModels] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> BagOfModels:
        with self._lock:
            if name not in self._models:
                self._models[name] = load_model(name, self.repo, self.device)
            return self._models[name]
