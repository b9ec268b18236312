"""Pictures are written as non-empty PNG files."""
import torch

from spikedriven import create_model
from spikedriven.energy import profile_model
from spikedriven.model import calibrate_bn
from spikedriven.viz import capture_attention, plot_attention_maps, plot_firing_rates, plot_spike_raster

PNG = b"\x89PNG\r\n\x1a\n"


def _model():
    torch.manual_seed(0)
    m = create_model("sdt_cifar10_2_256", embed_dim=32, depth=1, img_size=16)
    x = torch.randn(4, 3, 16, 16)
    calibrate_bn(m, [x])
    return m, x


def _is_png(p):
    b = p.read_bytes()
    return len(b) > 1000 and b.startswith(PNG)


def test_viz_pngs(tmp_path):
    m, x = _model()
    rep = profile_model(m, [x])
    plot_firing_rates(rep, tmp_path / "rates.png")
    plot_spike_raster(m, x, "block.0.attn.q_lif", tmp_path / "raster.png", n_neurons=16)
    plot_attention_maps(m, x[0], tmp_path / "attn.png", block=0)
    for n in ("rates.png", "raster.png", "attn.png"):
        assert _is_png(tmp_path / n), n


def test_capture_attention_shapes():
    m, x = _model()
    cap = capture_attention(m, x[:1])
    T, D = m.T, m.embed_dim
    assert cap["channel_mask"].shape == (T, D) and cap["grid"] == (4, 4)
    assert cap["q_masked"].shape == (T, 16, D)
    # Q⊙mask is Q with the masked channels zeroed
    assert torch.equal(cap["q_masked"], cap["q"] * cap["channel_mask"][:, None, :])


def _figure_of(monkeypatch, fn, *args, **kw):
    """Draw with ``fn`` and return the matplotlib figure it saved."""
    import spikedriven.viz as viz

    got = {}
    real = viz._save

    def keep(fig, path, dpi):
        got["fig"] = fig
        fig.canvas.draw()  # lay out as when saving, then keep it open for inspection
        return real(fig, path, dpi)

    monkeypatch.setattr(viz, "_save", keep)
    fn(*args, **kw)
    return got["fig"]


def test_attention_picture_is_readable(tmp_path, monkeypatch):
    """One colour scale for every token map, with its colour bar; integer time ticks; no empty panel; the heat is
    transparent where no spike is (the image shows through)."""
    m, x = _model()
    fig = _figure_of(monkeypatch, plot_attention_maps, m, x[0], tmp_path / "a.png")
    maps = [ax for ax in fig.axes if ax.get_title().startswith(("Q,", "Q⊙mask,"))]
    assert len(maps) == 2 * m.T
    for ax in fig.axes:  # every panel shows something
        assert ax.images or ax.collections or ax.get_label() == "<colorbar>" or ax.get_ylabel(), ax.get_title()
    assert any(ax.get_label() == "<colorbar>" or "spikes per token" in ax.get_ylabel() for ax in fig.axes)
    heat = [ax.images[-1].get_array() for ax in maps]
    assert all(h.ndim == 3 and h.shape[-1] == 4 for h in heat)  # RGBA overlays ...
    assert any(float(h[..., 3].min()) == 0.0 for h in heat)  # ... transparent where no spike
    strip = next(ax for ax in fig.axes if ax.get_title().startswith("SDSA channel mask"))
    assert [t for t in strip.get_yticks()] == list(range(m.T))  # time steps 0..T-1, no half steps
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_attention_picture_with_one_time_step_has_no_empty_panel(tmp_path, monkeypatch):
    torch.manual_seed(0)
    m = create_model("sdt_cifar10_2_256", embed_dim=32, depth=1, img_size=16, T=1)
    x = torch.randn(4, 3, 16, 16)
    calibrate_bn(m, [x])
    fig = _figure_of(monkeypatch, plot_attention_maps, m, x[0], tmp_path / "a.png")
    assert all(ax.images or ax.get_label() == "<colorbar>" or "spikes per token" in ax.get_ylabel() for ax in fig.axes)
    assert len(fig.axes) == 5  # input, mask strip, Q, Q⊙mask, colour bar


def test_rates_picture_names_every_layer_and_the_hatched_bar(tmp_path, monkeypatch):
    m, x = _model()
    rep = profile_model(m, [x])
    fig = _figure_of(monkeypatch, plot_firing_rates, rep, tmp_path / "r.png")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [l.name for l in rep.layers]
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 8
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("MACs" in t and "encoding layer" in t for t in legend)  # the hatched first bar is explained
