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
