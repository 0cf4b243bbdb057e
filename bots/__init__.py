"""Chat frontends. They talk to workers only through `core` (Redis); they never import torch."""
