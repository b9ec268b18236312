"""Pictures: per-layer firing-rate bars, spike rasters, and SDSA attention maps (paper Fig. 3 style).

All functions write a PNG with matplotlib's non-interactive Agg backend and return the path.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .layers.attention import SpikeDrivenSelfAttention
from .neuron import neurons as neuron_layers
from .probe import run_observed

__all__ = ["plot_firing_rates", "plot_spike_raster", "capture_attention", "plot_attention_maps"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi: int):
    """Lay out, write and close a figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


_KIND_COLORS = {"conv": "tab:blue", "linear": "tab:green", "sdsa": "tab:red", "matmul": "tab:purple"}


def plot_firing_rates(report, path, title: str | None = None):
    """Bar chart of each layer's mean input firing rate (from an :class:`~spikedriven.energy.EnergyReport`).

    Bars are coloured by layer kind; the encoding (MAC) layer is hatched; per-time-step rates are drawn as dots.
    """
    plt = _plt()
    layers = report.layers
    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * n + 2), 4.2))
    xs = range(n)
    bars = ax.bar(xs, [l.rate for l in layers], color=[_KIND_COLORS.get(l.kind, "gray") for l in layers])
    for b, l in zip(bars, layers):
        if l.op == "MAC":
            b.set_hatch("//")
            b.set_alpha(0.5)
    for i, l in enumerate(layers):
        if len(l.rate_per_t) > 1:
            ax.scatter([i] * len(l.rate_per_t), l.rate_per_t, s=6, color="k", zorder=3)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([l.name for l in layers], rotation=90, fontsize=6)
    ax.set_ylabel("input firing rate (non-zero fraction)")
    ax.set_ylim(0, min(1.05, max([1e-3] + [max(l.rate_per_t or [l.rate]) for l in layers]) * 1.15))
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for k, c in _KIND_COLORS.items()
               if any(l.kind == k for l in layers)]
    ax.legend(handles, [k for k in _KIND_COLORS if any(l.kind == k for l in layers)], fontsize=7, loc="upper right")
    ax.set_title(title or f"{report.model}: input firing rate per layer (dots: per time step), "
                          f"total {report.total_mj:.3f} mJ", fontsize=9)
    return _save(fig, path, 120)


@torch.no_grad()
def plot_spike_raster(model: nn.Module, x: torch.Tensor, layer_name: str, path, n_neurons: int = 64,
                      sample: int = 0, neurons: list[int] | None = None, seed: int = 0):
    """Spike raster of ``n_neurons`` neurons of the neuron module ``layer_name`` (a LIF/ParametricLIF) on input x.

    The neuron's output ``[T, B, ...]`` is captured with a forward hook. Neurons are ``neurons`` (flat indices
    into one sample's output) or, by default, a random choice among those that fired at least once (padded
    with silent ones when too few fired).
    """
    plt = _plt()
    mods = dict(neuron_layers(model))
    if layer_name not in mods:
        raise KeyError(f"{layer_name!r} is not a neuron module; choose one of: {', '.join(mods)}")
    cap = {}
    run_observed(model, [x], post=[(mods[layer_name], lambda m, a, o: cap.__setitem__("s", o.detach()))])
    if "s" not in cap:
        raise RuntimeError(f"neuron {layer_name!r} did not run in this forward pass")
    s = cap["s"]  # [T, B, ...]
    T = s.shape[0]
    flat = s[:, sample].reshape(T, -1).float()  # [T, neurons]
    if neurons is None:
        g = torch.Generator().manual_seed(seed)
        active = torch.nonzero(flat.sum(0) > 0).flatten()
        silent = torch.nonzero(flat.sum(0) == 0).flatten()
        k = min(n_neurons, flat.shape[1])
        pick = active[torch.randperm(len(active), generator=g)[:k]]
        if len(pick) < k:
            pick = torch.cat([pick, silent[torch.randperm(len(silent), generator=g)[:k - len(pick)]]])
        neurons = sorted(pick.tolist())
    sel = flat[:, neurons]  # [T, k]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * T + 3), max(3.0, 0.06 * len(neurons) + 1.5)))
    ts, ns = torch.nonzero(sel, as_tuple=True)
    ax.scatter(ts.numpy(), ns.numpy(), marker="|", s=120, color="k")
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(-0.5, len(neurons) - 0.5)
    ax.set_xticks(range(T))
    ax.set_xlabel("time step")
    ax.set_ylabel(f"neuron (of {flat.shape[1]} in the layer)")
    ax.set_title(f"{layer_name}: spikes of {len(neurons)} neurons, sample {sample}, "
                 f"layer rate {float(flat.mean()):.3f}", fontsize=9)
    return _save(fig, path, 120)


@torch.no_grad()
def capture_attention(model: nn.Module, image: torch.Tensor, block: int = 0) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``image`` (a batch: [B,C,H,W] or [B,T,C,H,W]); SDSA internals of ``block``, sample 0.

    Returns ``channel_mask`` [T, D] (the talking_heads_lif output, flattened over heads), ``q`` [T, N, D]
    (Q spikes), ``q_masked`` [T, N, D] (the mask_q output Q⊙mask) and ``grid`` (H', W') of the token map.
    """
    attn = model.block[block].attn
    if not isinstance(attn, SpikeDrivenSelfAttention):
        raise ValueError(f"attention maps need the SDSA attention (attn_mode='sdsa'), got {type(attn).__name__}")
    cap = {}

    def on_mask(m, a, o):
        cap["mask"] = o.detach()

    def on_mask_q(m, a, o):  # a = (q, mask)
        cap["q"], cap["qm"] = a[0].detach(), o.detach()

    def on_attn(m, a):
        cap["shape"] = a[0].shape

    run_observed(model, [image], pre=[(attn, on_attn)], post=[(attn.mask_lif, on_mask), (attn.mask_q, on_mask_q)])
    T, _, D, Hp, Wp = cap["shape"]

    def tokens(t):  # [T,B,h,N,d] -> [T, N, D] (sample 0)
        t = t[:, 0]
        return t.permute(0, 2, 1, 3).reshape(T, t.shape[2], -1)

    return {"channel_mask": cap["mask"][:, 0].reshape(T, -1), "q": tokens(cap["q"]), "q_masked": tokens(cap["qm"]),
            "grid": (Hp, Wp)}


def plot_attention_maps(model: nn.Module, image: torch.Tensor, path, block: int = 0, alpha: float = 0.55):
    """Fig. 3 style picture of SDSA in ``block`` for one image ([C,H,W], [1,C,H,W] or events [T,C,H,W]/[1,T,...]).

    Row 1: the image, the binary channel mask SN(SUM_tokens(K⊙V)) as a (time x channel) strip.
    Row 2 (per time step): Q spikes per token (sum over channels) upsampled over the image.
    Row 3 (per time step): Q⊙mask per token, i.e. what survives the channel mask, upsampled over the image.
    """
    plt = _plt()
    img = image
    events = getattr(model, "in_channels", 3) == 2
    if img.ndim == 3 or (img.ndim == 4 and events and img.shape[0] == getattr(model, "T", -1) and img.shape[1] == 2):
        img = img.unsqueeze(0)  # add the batch axis: [1,C,H,W] or [1,T,C,H,W]
    cap = capture_attention(model, img, block)
    # display image: [H, W, 3] in [0, 1]
    disp = img[0]
    if disp.ndim == 4:  # events [T, C, H, W]: total counts
        disp = disp.sum(0)
    disp = disp.float()
    if disp.shape[0] == 2:
        disp = torch.stack([disp[0], disp[1], torch.zeros_like(disp[0])])
    elif disp.shape[0] == 1:
        disp = disp.expand(3, -1, -1)
    disp = (disp - disp.min()) / (disp.max() - disp.min() + 1e-8)
    H, W = disp.shape[-2:]
    disp = disp.permute(1, 2, 0).numpy()
    T = cap["q"].shape[0]
    Hp, Wp = cap["grid"]

    def up(tok):  # [N] -> [H, W]
        m = tok.float().reshape(1, 1, Hp, Wp)
        return F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()

    fig, axes = plt.subplots(3, max(T, 2), figsize=(2.2 * max(T, 2), 6.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(disp)
    axes[0, 0].set_title("input", fontsize=8)
    ax = axes[0, 1]
    ax.axis("on")
    ax.imshow(cap["channel_mask"].float().numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
    ax.set_xlabel("channel", fontsize=7)
    ax.set_ylabel("t", fontsize=7)
    kept = cap["channel_mask"].float().mean().item()
    ax.set_title(f"channel mask ({kept:.1%} kept)", fontsize=8)
    ax.tick_params(labelsize=6)
    qmax = max(float(cap["q"].sum(-1).max()), 1.0)
    for t in range(T):
        for row, key, name in ((1, "q", "Q"), (2, "q_masked", "Q⊙mask")):
            m = cap[key][t].sum(-1)  # [N]
            a = axes[row, t]
            a.imshow(disp)
            a.imshow(up(m), cmap="jet", alpha=alpha, vmin=0, vmax=qmax if key == "q" else max(float(m.max()), 1.0))
            a.set_title(f"{name}, t={t} ({int(m.sum())} spikes)", fontsize=7)
    fig.suptitle(f"SDSA of block {block}: token maps {Hp}x{Wp} upsampled to {H}x{W}", fontsize=9)
    return _save(fig, path, 110)
