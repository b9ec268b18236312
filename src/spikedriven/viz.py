"""Pictures: per-layer firing-rate bars, spike rasters, and SDSA attention maps (paper Fig. 3 style).

All functions write a PNG with matplotlib's non-interactive Agg backend and return the path.
"""
from __future__ import annotations


import numpy as np
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
    """Lay out, write (atomically: ``outputs.atomic_write``) and close a figure; returns ``path``."""
    from .outputs import atomic_write

    from pathlib import Path

    fmt = Path(path).suffix.lstrip(".").lower() or "png"  # the temporary file's name ends in .tmp
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
    finally:
        _plt().close(fig)
    return path


_KIND_COLORS = {"conv": "tab:blue", "linear": "tab:green", "sdsa": "tab:red", "matmul": "tab:purple"}


def plot_firing_rates(report, path, title: str | None = None):
    """Horizontal bars of each layer's mean input firing rate (from an :class:`~spikedriven.energy.EnergyReport`),
    one row per layer with its full name, coloured by layer kind; per-time-step rates are drawn as dots. The
    encoding layer reads the real-valued image (its "rate" is the non-zero fraction of the image, counted as MACs),
    so it is drawn hatched and named in the legend."""
    from .energy.report import energy_str

    plt = _plt()
    layers = report.layers
    n = len(layers)
    fig, ax = plt.subplots(figsize=(8.5, max(3.0, 0.22 * n + 1.6)))
    ys = list(range(n))
    bars = ax.barh(ys, [l.rate for l in layers], color=[_KIND_COLORS.get(l.kind, "gray") for l in layers],
                   height=0.75)
    for b, l in zip(bars, layers):
        if l.op == "MAC":
            b.set_hatch("//")
            b.set_alpha(0.45)
    for i, l in enumerate(layers):
        if len(l.rate_per_t) > 1:
            ax.scatter(l.rate_per_t, [i] * len(l.rate_per_t), s=9, color="k", zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([l.name for l in layers], fontsize=8)
    ax.invert_yaxis()  # first layer on top, in execution order
    ax.set_xlabel("input firing rate (fraction of non-zero inputs)", fontsize=9)
    ax.set_xlim(0, min(1.05, max([1e-3] + [max(l.rate_per_t or [l.rate]) for l in layers]) * 1.15))
    ax.grid(axis="x", alpha=0.3)
    names = {"conv": "conv input (ACs)", "linear": "linear input (ACs)", "sdsa": "SDSA column sum (ACs)",
             "matmul": "attention matmul operand"}
    kinds = [k for k in _KIND_COLORS if any(l.kind == k and l.op == "AC" for l in layers)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=_KIND_COLORS[k]) for k in kinds]
    labels = [names[k] for k in kinds]
    if any(l.op == "MAC" for l in layers):
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="k", hatch="//"))
        labels.append("real-valued input (MACs): encoding layer / declared")
    if any(len(l.rate_per_t) > 1 for l in layers):
        handles.append(plt.Line2D([], [], marker="o", ls="", color="k", markersize=3))
        labels.append("rate at each time step")
    ax.legend(handles, labels, fontsize=8, loc="lower right")
    ax.set_title(title or f"{report.model}: input firing rate per layer, T={report.T}, "
                          f"{report.n_samples or 'no'} sample{'' if report.n_samples == 1 else 's'}; energy {energy_str(report.total_mj)} per sample",
                 fontsize=10)
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


def plot_attention_maps(model: nn.Module, image: torch.Tensor, path, block: int = 0, alpha: float = 0.75):
    """Fig. 3 style picture of SDSA in ``block`` for one image ([C,H,W], [1,C,H,W] or events [T,C,H,W]/[1,T,...]).

    Top: the input and the binary channel mask SN(SUM_tokens(K⊙V)) as a (time x channel) strip.
    Below, one column per time step: Q spikes per token (summed over channels), then Q⊙mask (what survives the
    channel mask), over the input in grey. Every map shares one colour scale (its colour bar), so panels compare;
    the heat is transparent where no spike is, so the image shows through.
    """
    from matplotlib import cm, colors

    plt = _plt()
    img = image
    events = getattr(model, "in_channels", 3) == 2
    if img.ndim == 3 or (img.ndim == 4 and events and img.shape[0] == getattr(model, "T", -1) and img.shape[1] == 2):
        img = img.unsqueeze(0)  # add the batch axis: [1,C,H,W] or [1,T,C,H,W]
    cap = capture_attention(model, img, block)
    disp = img[0]
    if disp.ndim == 4:  # events [T, C, H, W]: total counts
        disp = disp.sum(0)
    disp = disp.float().mean(0)  # grey background
    disp = ((disp - disp.min()) / (disp.max() - disp.min() + 1e-8)).numpy()
    H, W = disp.shape
    dim = 0.15 + 0.5 * disp  # the image in mid greys under the heat: bright and dark colours both stand out
    T = cap["q"].shape[0]
    Hp, Wp = cap["grid"]
    maps = {key: [cap[key][t].sum(-1).float() for t in range(T)] for key in ("q", "q_masked")}
    vmax = max(1.0, *(float(m.max()) for ms in maps.values() for m in ms))
    norm = colors.Normalize(0, vmax)
    cmap = colors.LinearSegmentedColormap.from_list("heat", plt.get_cmap("plasma")(np.linspace(0.25, 1.0, 64)))

    def overlay(ax, tok):
        heat = F.interpolate(tok.reshape(1, 1, Hp, Wp), size=(H, W), mode="nearest")[0, 0].numpy()
        rgba = cmap(norm(heat))
        rgba[..., 3] = alpha * (heat > 0)  # no spike: transparent
        ax.imshow(dim, cmap="gray", vmin=0, vmax=1)
        ax.imshow(rgba)
        ax.set_xticks([])
        ax.set_yticks([])

    cols = max(T, 2)
    fig = plt.figure(figsize=(2.3 * cols + 1.2, 7.0))
    gs = fig.add_gridspec(3, cols + 1, width_ratios=[1] * cols + [0.08], height_ratios=[1, 1, 1])
    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(disp, cmap="gray")
    ax.set_title("input", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = fig.add_subplot(gs[0, 1:cols])
    mask = cap["channel_mask"].float().numpy()
    ax.imshow(mask, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
    ax.set_yticks(range(T))
    ax.set_ylabel("time step", fontsize=8)
    ax.set_xlabel(f"channel (black: kept by the mask, {mask.mean():.1%} kept)", fontsize=8)
    ax.set_title("SDSA channel mask SN(Σ_tokens K⊙V)", fontsize=9)
    ax.tick_params(labelsize=7)
    for row, key, name in ((1, "q", "Q"), (2, "q_masked", "Q⊙mask")):
        for t in range(T):
            # T = 1: Q and Q⊙mask side by side in one row, no empty panels
            r, c = (row, t) if T > 1 else (1, row - 1)
            a = fig.add_subplot(gs[r, c])
            overlay(a, maps[key][t])
            a.set_title(f"{name}, t={t}: {int(maps[key][t].sum())} spikes", fontsize=8)
    cax = fig.add_subplot(gs[1:, cols])
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="spikes per token (summed over channels)")
    fig.suptitle(f"SDSA of block {block} ({model.model_name if hasattr(model, 'model_name') else 'model'}): token map "
                 f"{Hp}x{Wp} over the {H}x{W} input", fontsize=10)
    return _save(fig, path, 110)
