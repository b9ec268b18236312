"""BN folding for inference: exact algebra, same logits as the unfolded model."""
import pytest
import torch
from torch import nn

from spikedriven import create_model
from spikedriven.inference import conv_bn_pairs, fold_bn, prepare_inference
from spikedriven.model import calibrate_bn


def _trained_like(name="sdt_cifar10_2_256", **kw):
    torch.manual_seed(0)
    m = create_model(name, **kw).double()
    with torch.no_grad():  # non-trivial BN affine parameters
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    calibrate_bn(m, [torch.randn(4, m.in_channels, m.img_size, m.img_size, dtype=torch.float64)])
    return m.eval()


def test_every_bn_is_paired_with_its_conv():
    m = create_model("sdt_cifar10_2_256", embed_dim=64)
    n_bn = sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert len(conv_bn_pairs(m)) == n_bn == 5 + 6 * 2


@pytest.mark.parametrize("kw", [dict(embed_dim=64, channels_last=False), dict(embed_dim=64, channels_last=True)])
def test_folded_logits_equal_unfolded(kw):
    m = _trained_like(**kw)
    f = fold_bn(m)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in f.modules())
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # original untouched
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(f(x), m(x), rtol=1e-9, atol=1e-10)


def test_folded_float32_spikes_nearly_identical():
    m = _trained_like(embed_dim=64).float()
    f = fold_bn(m)
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        a, b = m(x), f(x)
    # float32 rounding can flip an exact-threshold tie; logits stay within a small tolerance
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_prepare_inference_disables_autograd():
    m = prepare_inference(_trained_like(embed_dim=64).float())
    assert not any(p.requires_grad for p in m.parameters()) and not m.training
