"""HTDemucs cut at the spectrogram, so the network in the middle can run elsewhere.

`HTDemucs.forward` does three things: STFT and normalisation, the network (both encoders,
the cross-transformer, both decoders), then masking and the inverse STFT. Only the middle
is worth compiling (it is ~95 % of the time, and the complex-valued STFT does not export),
so `NetworkCore` is that middle as a module of its own and `forward_around` does the rest
exactly as demucs 4.1.0 does it in eval mode. `forward_around(m, NetworkCore(m), mix)`
equals `m(mix)` bit for bit (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from demucs.htdemucs import HTDemucs
from torch import nn

CoreFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class NetworkCore(nn.Module):
    """(normalised magnitude spectrogram, normalised waveform) → both branches' outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # an HTDemucs, or its copy with fused attention

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        saved: list[torch.Tensor] = []
        saved_t: list[torch.Tensor] = []
        lengths: list[int] = []
        lengths_t: list[int] = []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = m.tencoder[idx]
                xt = tenc(xt)
                if tenc.empty:
                    inject = xt
                else:
                    saved_t.append(xt)
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                emb = m.freq_emb(torch.arange(x.shape[-2], device=x.device)).t()[None, :, :, None].expand_as(x)
                x = x + m.freq_emb_scale * emb
            saved.append(x)
        x, xt = self._transform(x, xt)
        for idx, decode in enumerate(m.decoder):
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            offset = m.depth - len(m.tdecoder)
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                if tdec.empty:
                    xt, _ = tdec(pre[:, :, 0], None, lengths_t.pop(-1))
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), lengths_t.pop(-1))
        return x, xt

    def _transform(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        if not m.crosstransformer:
            return x, xt
        b, c, f, t = x.shape
        if m.bottom_channels:
            x = m.channel_upsampler(x.reshape(b, c, f * t)).reshape(b, -1, f, t)
            xt = m.channel_upsampler_t(xt)
        x, xt = m.crosstransformer(x, xt)
        if m.bottom_channels:
            x = m.channel_downsampler(x.reshape(b, -1, f * t)).reshape(b, c, f, t)
            xt = m.channel_downsampler_t(xt)
        return x, xt


class _SdpaAttention(nn.Module):
    """nn.MultiheadAttention (batch_first, no masks) through the fused SDPA kernel."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if kwargs.get("attn_mask") is not None or kwargs.get("key_padding_mask") is not None:
            raise ValueError("masked attention is not supported by the fused path")
        if not self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        batch, tq, channels = q.shape
        head = channels // self.heads
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)

        def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return F.linear(x, w, b).view(batch, x.shape[1], self.heads, head).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q, wq, bq), heads(k, wk, bk), heads(v, wv, bv))
        out = self.out_proj(out.transpose(1, 2).reshape(batch, tq, channels))
        return (out if self.batch_first else out.transpose(0, 1)), None


def fuse_attention(model: nn.Module) -> nn.Module:
    """A copy of `model` whose unmasked attention layers use SDPA; the original is untouched."""
    fused = copy.deepcopy(model)
    for module in list(fused.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention) and not getattr(module, "sparse", False):
                setattr(module, name, _SdpaAttention(child))
    return fused


def training_length(model: HTDemucs) -> int:
    return int(model.segment * model.samplerate)


def forward_around(htdemucs: HTDemucs, core: CoreFn, mix: torch.Tensor) -> torch.Tensor:
    """HTDemucs.forward (eval mode) with the network replaced by `core`."""
    model: Any = htdemucs  # demucs is untyped
    length = mix.shape[-1]
    padded = training_length(model) if model.use_train_segment else length
    mix = F.pad(mix, (0, max(0, padded - length)))
    z = model._spec(mix)
    x = model._magnitude(z).to(mix.device)
    batch, _, freqs, frames = x.shape
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    meant = mix.mean(dim=(1, 2), keepdim=True)
    stdt = mix.std(dim=(1, 2), keepdim=True)
    x, xt = core((x - mean) / (1e-5 + std), (mix - meant) / (1e-5 + stdt))
    sources = len(model.sources)
    x = x.view(batch, sources, -1, freqs, frames) * std[:, None] + mean[:, None]
    x = model._ispec(model._mask(z, x), mix.shape[-1])
    xt = xt.view(batch, sources, -1, mix.shape[-1]) * stdt[:, None] + meant[:, None]
    out: torch.Tensor = (xt + x)[..., :length]
    return out


def example_inputs(htdemucs: HTDemucs) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's inputs for one training-length window (shapes for tracing and export)."""
    model: Any = htdemucs
    mix = torch.zeros(1, model.audio_channels, training_length(model))
    return model._magnitude(model._spec(mix)), mix
