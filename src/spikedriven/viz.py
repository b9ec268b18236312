"""Pictures: per-layer firing-rate bars, spike rasters, and SDSA attention maps (paper Fig. 3 style).

All functions write a PNG with matplotlib's non-interactive Agg backend and return the path.
"""
from __future__ import annotations

import difflib
import textwrap

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers.attention import Attention, SpikeDrivenSelfAttention
from .neuron import neurons as neuron_layers
from .probe import run_observed

__all__ = ["plot_firing_rates", "plot_spike_raster", "capture_attention", "plot_attention_maps", "attention_modules",
           "default_raster_layer", "ATTENTION_PICTURES"]


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


def _title(ax_or_fig, text: str, width_in: float, fontsize: float = 10, **kw):
    """A title wrapped to the width it has (about 0.55 em per character), so it never runs off the figure."""
    chars = max(20, int(width_in * 72 / (fontsize * 0.55)))
    text = "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))
    if hasattr(ax_or_fig, "suptitle"):
        return ax_or_fig.suptitle(text, fontsize=fontsize, **kw)
    return ax_or_fig.set_title(text, fontsize=fontsize, **kw)


def attention_modules(model: nn.Module) -> list[tuple[str, Attention]]:
    """``(name, module)`` of every registered attention of ``model``, in module (= depth) order, any family."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Attention)]


def _attention(model: nn.Module, block: int) -> tuple[str, Attention]:
    mods = attention_modules(model)
    if not mods:
        raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} has no attention block")
    if not 0 <= block < len(mods):
        raise ValueError(f"--block {block}: the model has {len(mods)} attention blocks, 0..{len(mods) - 1} "
                         f"({mods[0][0]} ... {mods[-1][0]})")
    return mods[block]


def default_raster_layer(model: nn.Module) -> str:
    """The raster's default neuron: the first attention's Q neuron, else the model's first neuron."""
    names = [n for n, _ in neuron_layers(model)]
    if not names:
        raise ValueError("the model has no spiking neuron")
    mods = attention_modules(model)
    for q in ("q_lif", "q_spike"):  # binary LIF (V1, V2) or integer neuron (V3)
        if mods and f"{mods[0][0]}.{q}" in names:
            return f"{mods[0][0]}.{q}"
    return names[0]


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
    _title(ax, title or f"{report.model}: input firing rate per layer, T={report.T}, {report.n_samples or 'no'} "
                        f"sample{'' if report.n_samples == 1 else 's'}; energy {energy_str(report.total_mj)} per sample",
           fig.get_figwidth() - 2.5)
    return _save(fig, path, 120)


def _check_layer(model: nn.Module, layer_name: str | None) -> tuple[str, nn.Module]:
    mods = dict(neuron_layers(model))
    layer_name = layer_name or default_raster_layer(model)
    if layer_name not in mods:
        close = difflib.get_close_matches(layer_name, list(mods), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(list(mods)[:3])}"
        raise KeyError(f"{layer_name!r} is not a neuron layer of this model ({len(mods)} neuron layers; {hint} "
                       f"`spikedriven forward --model NAME --rates` lists them)")
    return layer_name, mods[layer_name]


def _pick(active_of: torch.Tensor, k: int, seed: int) -> list[int]:
    """``k`` neuron indices, at random among those that fired (padded with silent ones when too few fired)."""
    g = torch.Generator().manual_seed(seed)
    active = torch.nonzero(active_of > 0).flatten()
    silent = torch.nonzero(active_of == 0).flatten()
    k = min(k, active_of.numel())
    pick = active[torch.randperm(len(active), generator=g)[:k]]
    if len(pick) < k:
        pick = torch.cat([pick, silent[torch.randperm(len(silent), generator=g)[:k - len(pick)]]])
    return sorted(pick.tolist())


@torch.no_grad()
def plot_spike_raster(model: nn.Module, x: torch.Tensor, layer_name: str | None, path, n_neurons: int = 64,
                      sample: int = 0, neurons: list[int] | None = None, seed: int = 0):
    """Spike raster of ``n_neurons`` neurons of the neuron module ``layer_name`` (default: the first attention's
    Q neuron, see :func:`default_raster_layer`) on input x.

    The neuron's output ``[T, B, ...]`` is captured with a forward hook. With T > 1: neurons (flat indices into
    one sample's output) against time steps. With T = 1 (one step, e.g. V2 models) a time axis would be one column,
    so the picture is channels against tokens instead (a neuron is a channel at a token). Neurons are ``neurons``
    or, by default, a random choice among those that fired at least once (padded with silent ones).
    """
    plt = _plt()
    layer_name, mod = _check_layer(model, layer_name)
    cap = {}
    run_observed(model, [x], post=[(mod, lambda m, a, o: cap.__setitem__("s", o.detach()))])
    if "s" not in cap:
        raise RuntimeError(f"neuron {layer_name!r} did not run in this forward pass")
    s = cap["s"]  # [T, B, ...]
    T = s.shape[0]
    one = s[:, sample].float()
    if T == 1 and one.ndim >= 3:  # [1, C, tokens...]: channels x tokens
        grid = one[0].reshape(one.shape[1], -1)  # [C, N]
        chans = neurons if neurons is not None else _pick(grid.sum(1), n_neurons, seed)
        sel = grid[chans]
        C, N = grid.shape
        fig, ax = plt.subplots(figsize=(min(12.0, max(5.0, 0.09 * N + 2.5)), max(3.0, 0.06 * len(chans) + 1.8)))
        ax.imshow(sel.numpy(), aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xlabel(f"token (of {N}, row-major over the {'x'.join(map(str, one.shape[2:]))} map)"
                      if one.ndim > 3 else f"token (of {N})")
        ax.set_ylabel(f"channel (of {C})")
        ax.set_yticks([])
        what = f"{len(chans)} channels x {N} tokens (T=1: one time step, so tokens instead of time)"
    else:
        flat = one.reshape(T, -1)  # [T, neurons]
        chosen = neurons if neurons is not None else _pick(flat.sum(0), n_neurons, seed)
        sel = flat[:, chosen]  # [T, k]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * T + 3), max(3.0, 0.06 * len(chosen) + 1.8)))
        ts, ns = torch.nonzero(sel, as_tuple=True)
        ax.scatter(ts.numpy(), ns.numpy(), marker="|", s=120, color="k")
        ax.set_xlim(-0.5, T - 0.5)
        ax.set_ylim(-0.5, len(chosen) - 0.5)
        ax.set_xticks(range(T))
        ax.set_xlabel("time step")
        ax.set_ylabel(f"neuron (of {flat.shape[1]} in the layer)")
        what = f"{len(chosen)} neurons over T={T} steps"
    _title(ax, f"{layer_name}: spikes of {what}, sample {sample}, layer rate {float(one.mean()):.3f}",
           fig.get_figwidth() - 1.0, fontsize=9)
    return _save(fig, path, 120)


@torch.no_grad()
def capture_attention(model: nn.Module, image: torch.Tensor, block: int = 0) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``image`` (a batch: [B,C,H,W] or [B,T,C,H,W]); SDSA internals of ``block``, sample 0.

    Returns ``channel_mask`` [T, D] (the talking_heads_lif output, flattened over heads), ``q`` [T, N, D]
    (Q spikes), ``q_masked`` [T, N, D] (the mask_q output Q⊙mask) and ``grid`` (H', W') of the token map.
    """
    _, attn = _attention(model, block)
    if not isinstance(attn, SpikeDrivenSelfAttention):
        raise ValueError(f"SDSA maps need the SDSA attention (attn_mode='sdsa'), got {type(attn).__name__}")
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


def _batched(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """One image ([C,H,W] or events [T,C,H,W]) as a batch of one; a batch is returned as is."""
    events = getattr(model, "in_channels", 3) == 2
    if image.ndim == 3 or (image.ndim == 4 and events and image.shape[0] == getattr(model, "T", -1)
                           and image.shape[1] == 2):
        return image.unsqueeze(0)  # add the batch axis: [1,C,H,W] or [1,T,C,H,W]
    return image


def _background(img: torch.Tensor) -> np.ndarray:
    """Sample 0 of a batch as a [0, 1] grey picture (events: total counts)."""
    disp = img[0]
    if disp.ndim == 4:  # events [T, C, H, W]
        disp = disp.sum(0)
    disp = disp.float().mean(0)
    return ((disp - disp.min()) / (disp.max() - disp.min() + 1e-8)).numpy()


def _heat(plt):
    from matplotlib import colors

    return colors.LinearSegmentedColormap.from_list("heat", plt.get_cmap("plasma")(np.linspace(0.25, 1.0, 64)))


def _overlay(ax, disp: np.ndarray, tok: torch.Tensor, grid, cmap, norm, alpha: float = 0.75) -> None:
    """A per-token map over the input in mid greys; transparent where the map is 0 (no spike)."""
    H, W = disp.shape
    heat = F.interpolate(tok.float().reshape(1, 1, *grid), size=(H, W), mode="nearest")[0, 0].numpy()
    rgba = cmap(norm(heat))
    rgba[..., 3] = alpha * (heat > 0)
    ax.imshow(0.15 + 0.5 * disp, cmap="gray", vmin=0, vmax=1)  # bright and dark colours both stand out
    ax.imshow(rgba)
    ax.set_xticks([])
    ax.set_yticks([])


def _model_name(model) -> str:
    return getattr(model, "model_name", None) or type(model).__name__


def plot_sdsa_maps(model: nn.Module, image: torch.Tensor, path, block: int = 0, alpha: float = 0.75):
    """Fig. 3 style picture of SDSA (V1) in attention ``block`` for one image.

    Top: the input and the binary channel mask SN(SUM_tokens(K⊙V)) as a (time x channel) strip.
    Below, one column per time step: Q spikes per token (summed over channels), then Q⊙mask (what survives the
    channel mask), over the input in grey. Every map shares one colour scale (its colour bar), so panels compare;
    the heat is transparent where no spike is, so the image shows through.
    """
    from matplotlib import cm, colors

    plt = _plt()
    img = _batched(model, image)
    cap = capture_attention(model, img, block)
    disp = _background(img)
    H, W = disp.shape
    T = cap["q"].shape[0]
    grid = cap["grid"]
    maps = {key: [cap[key][t].sum(-1).float() for t in range(T)] for key in ("q", "q_masked")}
    vmax = max(1.0, *(float(m.max()) for ms in maps.values() for m in ms))
    norm, cmap = colors.Normalize(0, vmax), _heat(plt)
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
            _overlay(a, disp, maps[key][t], grid, cmap, norm, alpha)
            a.set_title(f"{name}, t={t}: {int(maps[key][t].sum())} spikes", fontsize=8)
    cax = fig.add_subplot(gs[1:, cols])
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="spikes per token (summed over channels)")
    _title(fig, f"SDSA of block {block} ({_model_name(model)}): token map {grid[0]}x{grid[1]} over the {H}x{W} "
                f"input", fig.get_figwidth())
    return _save(fig, path, 110)


@torch.no_grad()
def capture_linear_attention(model: nn.Module, image: torch.Tensor, block: int = 0) -> dict:
    """V2's linear spike attention (``SpikeLinearAttention``) in attention ``block`` on ``image`` (a batch),
    sample 0, summed over time steps. Per head h and token n (maps ``[h, N]``): ``q``, ``k`` (spikes over the
    head's d lanes), ``contribution`` (|K_n| |V_n|: the coincidence counts token n adds to the head's K^T V, which
    every query then reads), ``out`` (attn_lif spikes). Also ``grid`` (H', W'), ``T``, ``name``."""
    name, attn = _attention(model, block)
    cap = {}

    def keep(key):
        return lambda m, a, o: cap.__setitem__(key, o.detach())

    run_observed(model, [image], post=[(attn.q_lif, keep("q")), (attn.k_lif, keep("k")), (attn.v_lif, keep("v")),
                                       (attn.attn_lif, keep("out"))])
    T, _, C, Hp, Wp = cap["q"].shape

    def per_head(t):  # [T, B, C, H, W] -> spikes per head and token [h, N], sample 0, summed over T
        return attn._heads(t[:, :1].float())[:, 0].sum(-1)

    counts = {k: attn._heads(cap[k][:, :1].float())[:, 0].sum(-1) for k in ("k", "v")}  # [T, h, N]
    return {"q": per_head(cap["q"]).sum(0), "k": counts["k"].sum(0),
            "contribution": (counts["k"] * counts["v"]).sum(0), "out": per_head(cap["out"]).sum(0),
            "grid": (Hp, Wp), "T": T, "name": name}


def plot_linear_attention_maps(model: nn.Module, image: torch.Tensor, path, block: int = 0, alpha: float = 0.75,
                               max_heads: int = 8):
    """V2's linear attention in attention ``block`` for one image: one row per head (up to ``max_heads``), columns
    Q spikes, K spikes, each token's contribution |K_n||V_n| to K^T V, and the attention output spikes, per token
    over the input in grey. V2 has no token x token attention matrix to show: Q reads one d x d summary K^T V of
    all tokens, so where K and V fire together is where the attention takes its information from."""
    img = _batched(model, image)
    cap = capture_linear_attention(model, img, block)
    cols = (("q", "Q spikes"), ("k", "K spikes"), ("contribution", "|K||V|: added to KᵀV"), ("out", "output spikes"))
    steps = f"summed over T={cap['T']} steps" if cap["T"] > 1 else "T=1"
    title = (f"Linear spike attention SN(Q(KᵀV)·0.125) of {cap['name']} ({_model_name(model)}), per head and "
             f"token of the {cap['grid'][0]}x{cap['grid'][1]} map over the input, {steps}")
    return _head_maps(model, img, cap, cols, title, path, alpha, max_heads)


@torch.no_grad()
def capture_integer_attention(model: nn.Module, image: torch.Tensor, block: int = 0) -> dict:
    """V3's attention (``IntegerLinearAttention``) in attention ``block`` on ``image``, sample 0. Per head h and
    token n (maps ``[h, N]``): ``q``, ``k``, ``v`` (the integers 0..D summed over the head's lanes), ``received``
    (the attention a token's query pays: the row sum of the head's integer Q Kᵀ), ``out`` (attn_spike integers).
    Also ``grid``, ``name``."""
    name, attn = _attention(model, block)
    cap = {}

    def keep(key):
        return lambda m, a, o: cap.__setitem__(key, o.detach())

    run_observed(model, [image], post=[(getattr(attn, f"{k}_spike"), keep(k)) for k in ("q", "k", "v", "attn")])
    _, _, Hp, Wp = cap["q"].shape
    D = attn.q_spike.D

    def ints(t):  # [B, C, H, W] activations v/D -> integers per head and lane [h, N, d], sample 0
        return torch.round(attn._heads(t[:1].float())[0] * D)

    q, k = ints(cap["q"]), ints(cap["k"])
    return {"q": q.sum(-1), "k": k.sum(-1), "v": ints(cap["v"]).sum(-1),
            "received": (q @ k.transpose(-2, -1)).sum(-1), "out": ints(cap["attn"]).sum(-1),
            "grid": (Hp, Wp), "name": name, "D": D}


def plot_integer_attention_maps(model: nn.Module, image: torch.Tensor, path, block: int = 0, alpha: float = 0.75,
                                max_heads: int = 8):
    """V3's attention in attention ``block`` for one image: one row per head, columns the Q, K and V integers per
    token (summed over the head's lanes), each query token's total Q Kᵀ (how much it attends: V3 forms the N x N
    product), and the output integers, over the input in grey."""
    img = _batched(model, image)
    cap = capture_integer_attention(model, img, block)
    cols = (("q", "Q integers"), ("k", "K integers"), ("v", "V integers"), ("received", "Σ_m (Q Kᵀ)[n, m]"),
            ("out", "output integers"))
    title = (f"Integer attention SN((Q Kᵀ) V · 2/√d) of {cap['name']} ({_model_name(model)}), integers 0..{cap['D']} "
             f"per head and token of the {cap['grid'][0]}x{cap['grid'][1]} map over the input")
    return _head_maps(model, img, cap, cols, title, path, alpha, max_heads)


def _head_maps(model, img, cap, cols, title, path, alpha, max_heads):
    """One row per head (up to ``max_heads``), one column per ``cols`` entry (key of ``cap`` with ``[h, N]``
    maps, label), each map over the input in grey; one colour scale per column."""
    from matplotlib import cm, colors

    plt = _plt()
    disp = _background(img)
    heads = min(cap[cols[0][0]].shape[0], max_heads)
    cmap = _heat(plt)
    fig = plt.figure(figsize=(2.2 * (len(cols) + 1) + 0.6, 2.2 * heads + 1.9))
    gs = fig.add_gridspec(heads + 1, len(cols) + 1, height_ratios=[1] * heads + [0.07])
    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(disp, cmap="gray")
    ax.set_title("input", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for c, (key, label) in enumerate(cols, start=1):
        norm = colors.Normalize(0, max(1.0, float(cap[key][:heads].max())))  # one scale per column
        for h in range(heads):
            a = fig.add_subplot(gs[h, c])
            _overlay(a, disp, cap[key][h], cap["grid"], cmap, norm, alpha)
            a.set_title(f"head {h}: {label}\n{int(cap[key][h].sum())} in all", fontsize=8)
        cb = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=fig.add_subplot(gs[heads, c]),
                          orientation="horizontal")
        cb.ax.tick_params(labelsize=7)
    _title(fig, title, fig.get_figwidth())
    return _save(fig, path, 110)


# attention class name (layers.attention registry) -> its picture; a new attention adds one line
ATTENTION_PICTURES = {"sdsa": plot_sdsa_maps, "sdsa_v1": plot_sdsa_maps, "spike_linear": plot_linear_attention_maps,
                      "integer_linear": plot_integer_attention_maps}


def plot_attention_maps(model: nn.Module, image: torch.Tensor, path, block: int = 0, alpha: float = 0.75):
    """The attention picture of attention ``block`` for one image ([C,H,W], [1,C,H,W] or events [T,C,H,W]),
    chosen by the attention's kind (:data:`ATTENTION_PICTURES`): SDSA maps (V1), per-head maps of the linear
    spike attention (V2). Another attention is refused in one line."""
    _, attn = _attention(model, block)
    draw = ATTENTION_PICTURES.get(attn.name)
    if draw is None:
        raise ValueError(f"no attention picture for {attn.name or type(attn).__name__!r} attention (pictures exist "
                         f"for {', '.join(ATTENTION_PICTURES)}); `viz rates` and `viz raster` work on every model")
    return draw(model, image, path, block=block, alpha=alpha)
