"""Every picture on every family (issue 22 item 5): ``viz rates|raster|attention`` on a small model of each family
writes a PNG that is not blank, or refuses in one line; V2's attention is drawn per head; a T=1 raster shows
channels x tokens; titles stay inside the figure."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikedriven import create_model
from spikedriven.energy import profile_model
from spikedriven.model import calibrate_bn
from spikedriven.models.registry import list_families
from spikedriven.viz import (capture_integer_attention, ATTENTION_PICTURES, attention_modules, capture_linear_attention,
                             default_raster_layer, plot_attention_maps, plot_firing_rates, plot_spike_raster)

pytestmark = pytest.mark.usefixtures("reference_lif")

# one small model of each family (a new family adds its entry here; the test below checks that none is missing)
SMALL = {"sdt": ("sdt_digits_1_64", dict(embed_dim=32)),
         "sdt_v2": ("sdt_v2_digits_8_64", dict(embed_dim=(8, 16, 32, 32))),
         "sdt_v3": ("sdt_v3_digits_t", {})}


def _model(family):
    name, kw = SMALL[family]
    torch.manual_seed(0)
    m = create_model(name, **kw)
    x = torch.randn(6, m.in_channels, m.img_size, m.img_size)
    calibrate_bn(m, [x])  # untrained: calibrated BN statistics so that neurons fire
    return m.eval(), x


def _not_blank(path) -> bool:
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))[..., :3]
    ink = (img.mean(-1) < 0.9).mean()  # fraction of pixels that are not (near) white
    return img.shape[0] > 100 and img.std() > 0.05 and ink > 0.02


def _keep_figure(monkeypatch):
    """Make viz keep (and lay out) the figure it saves, to inspect its titles."""
    import spikedriven.viz as viz

    got = []
    real = viz._save

    def keep(fig, path, dpi):
        fig.tight_layout()
        fig.canvas.draw()
        got.append((fig, _titles_fit(fig)))  # measured before _save closes the figure
        return real(fig, path, dpi)

    monkeypatch.setattr(viz, "_save", keep)
    return got


def _titles_fit(fig) -> bool:
    r = fig.canvas.get_renderer()
    box = fig.bbox
    texts = [fig._suptitle] if fig._suptitle is not None else []
    texts += [ax.title for ax in fig.axes if ax.get_title()]
    for t in texts:
        e = t.get_window_extent(r)
        if e.x0 < box.x0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            return False
    return True


def test_every_family_has_a_small_model_here():
    assert set(SMALL) == set(list_families())


@pytest.mark.parametrize("family", sorted(SMALL))
def test_every_picture_on_every_family(tmp_path, monkeypatch, family):
    m, x = _model(family)
    figs = _keep_figure(monkeypatch)
    paths = {"rates": plot_firing_rates(profile_model(m, [x[:1]]), tmp_path / "rates.png"),
             "raster": plot_spike_raster(m, x[:1], None, tmp_path / "raster.png", n_neurons=24),
             "attention": plot_attention_maps(m, x[0], tmp_path / "attention.png")}
    for kind, p in paths.items():
        assert p.exists() and _not_blank(p), kind
    for (fig, fits), kind in zip(figs, paths):
        assert fits, kind


def test_v1_and_v2_raster_default_layers():
    v1, _ = _model("sdt")
    v2, _ = _model("sdt_v2")
    assert default_raster_layer(v1) == "block.0.attn.q_lif"
    assert default_raster_layer(v2) == "block3.0.attn.q_lif"
    assert [n for n, _ in attention_modules(v2)][:2] == ["block3.0.attn", "block3.1.attn"]


def test_raster_at_one_time_step_is_channels_by_tokens(tmp_path, monkeypatch):
    m, x = _model("sdt_v2")
    assert m.T == 1
    figs = _keep_figure(monkeypatch)
    plot_spike_raster(m, x[:1], "block3.0.attn.q_lif", tmp_path / "r.png", n_neurons=12)
    ax = figs[0][0].axes[0]
    img = ax.images[0].get_array()
    # 12 channels x 64 tokens (the 8x8 map of stage 3), binary
    assert img.shape == (12, 64) and set(np.unique(img)) <= {0.0, 1.0} and img.sum() > 0
    assert ax.get_xlabel().startswith("token") and "T=1" in ax.get_title()


def test_v2_attention_maps_are_per_head_and_consistent():
    m, x = _model("sdt_v2")
    cap = capture_linear_attention(m, x[:1], block=0)
    attn = attention_modules(m)[0][1]
    h, N = attn.num_heads, 64
    for key in ("q", "k", "contribution", "out"):
        assert cap[key].shape == (h, N), key
    d = attn.dim // h
    assert float(cap["q"].max()) <= d and float(cap["k"].min()) >= 0  # spikes over a head's d lanes
    # a token contributes to K^T V only where both K and V fire, |K_n| |V_n| <= d^2
    assert bool(((cap["contribution"] > 0) <= (cap["k"] > 0)).all()) and float(cap["contribution"].max()) <= d * d
    assert float(cap["q"].sum()) > 0


def test_attention_picture_of_another_attention_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    m = create_model("sdt_digits_1_64", embed_dim=32, attn_mode="ssa")
    with pytest.raises(ValueError) as e:
        plot_attention_maps(m, torch.randn(1, 16, 16), tmp_path / "a.png")
    msg = str(e.value)
    assert "'ssa'" in msg and "\n" not in msg and "sdsa" in msg and not (tmp_path / "a.png").exists()
    assert set(ATTENTION_PICTURES) >= {"sdsa", "spike_linear"}
    with pytest.raises(ValueError, match="attention blocks, 0..0"):
        plot_attention_maps(m, torch.randn(1, 16, 16), tmp_path / "a.png", block=3)


def test_unknown_raster_layer_names_close_ones(tmp_path):
    m, x = _model("sdt_v2")
    with pytest.raises(KeyError) as e:
        plot_spike_raster(m, x[:1], "block.0.attn.q_lif", tmp_path / "r.png")
    assert "did you mean" in str(e.value) and "\n" not in str(e.value)


def test_cli_viz_attention_on_v2(tmp_path, capsys):
    from spikedriven.cli import main

    out = tmp_path / "v2.png"
    assert main(["viz", "attention", "--model", "sdt_v2_digits_8_64", "--data", "random", "--out", str(out)]) == 0
    assert _not_blank(out)
    assert main(["viz", "raster", "--model", "sdt_v2_digits_8_64", "--data", "random", "--layer", "nope",
                 "--out", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a neuron layer" in err[0]


def test_v3_attention_maps_are_integer_per_head_and_consistent():
    m, x = _model("sdt_v3")
    cap = capture_integer_attention(m, x[:1], block=0)
    attn = attention_modules(m)[0][1]
    h, d, D = attn.num_heads, attn.dim // attn.num_heads, attn.q_spike.D
    for key in ("q", "k", "v", "received", "out"):
        assert cap[key].shape == (h, 64), key  # 8x8 tokens of the digits model
        assert float(cap[key].min()) >= 0 and torch.equal(cap[key], cap[key].round()), key  # integers
    assert float(cap["q"].max()) <= d * D and float(cap["v"].max()) <= 4 * d * D  # v is 4x wider (lamda_ratio)
    # a query token with no activity attends to nothing: sum_m (Q K^T)[n, m] = 0 where Q_n = 0
    assert bool(((cap["q"] == 0) <= (cap["received"] == 0)).all())
    assert default_raster_layer(m) == "block3.0.attn.q_spike"
