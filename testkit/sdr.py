"""SDR as on MUSDB18: museval's BSS Eval v4, median over 1 s frames."""

from __future__ import annotations

import numpy as np

RATE = 44100


def sdr(reference: np.ndarray, estimate: np.ndarray, rate: int = RATE) -> float:
    """Median-over-frames SDR (dB) of one estimated stem; arrays are (channels, samples)."""
    return sdr_many({"s": reference}, {"s": estimate}, rate)["s"]


def sdr_many(references: dict[str, np.ndarray], estimates: dict[str, np.ndarray], rate: int = RATE) -> dict[str, float]:
    """SDR per stem, each stem scored on its own against its reference (as museval does per target)."""
    import museval

    out = {}
    for name, ref in references.items():
        est = estimates[name]
        n = min(ref.shape[-1], est.shape[-1])
        r = np.asarray(ref[..., :n], dtype=np.float64).T[None]
        e = np.asarray(est[..., :n], dtype=np.float64).T[None]
        frames = museval.metrics.bss_eval(r, e, window=rate, hop=rate)[0][0]
        out[name] = float(np.nanmedian(frames[np.isfinite(frames)]))
    return out
