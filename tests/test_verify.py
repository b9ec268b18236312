"""The spike-driven verifier: every zoo model passes; non-spike-driven ablations are flagged by name."""
import pytest
import torch

from spikedriven import create_model, list_models
from spikedriven.verify import verify_spike_driven


@pytest.mark.parametrize("name", list_models(family="sdt"))
def test_every_zoo_model_is_spike_driven(name):
    torch.manual_seed(0)
    m = create_model(name)
    size = 64 if m.img_size == 224 else m.img_size  # same architecture, smaller ImageNet input for speed
    # a few samples for the small models so that the sparse SDSA output is not empty; the one-block 28-px model's
    # head neuron (on a token mean of the membrane) needs 16 random images before it fires at all
    B = 16 if size <= 28 else 4 if size <= 32 else 1
    if m.in_channels == 2:
        x = torch.poisson(torch.full((B, m.T, 2, size, size), 0.3))
    else:
        x = torch.randn(B, m.in_channels, size, size)
    rep = verify_spike_driven(m, x)
    assert rep.ok, rep.summary()
    syn = [c for c in rep.checks if c.kind in ("conv", "linear")]
    # 4 stem convs + rpe + 6 convs per block + head, each hooked on its real input
    assert len(syn) == 5 + 6 * m.depth + 1
    assert syn[0].name == "patch_embed.proj_conv" and syn[0].exempt
    assert [c.exempt for c in syn].count(True) == 1
    # non-vacuous: spikes flow into the blocks (BN calibrated on the input for untrained models)
    assert rep.bn_calibrated_on_input
    assert all(c.rate > 0 for c in syn[1:]), [(c.name, c.rate) for c in syn]


@pytest.mark.parametrize("attn_mode, shortcut, ok, culprit", [
    ("sdsa", "ms", True, None),
    ("sdsa_v1", "ms", True, None),
    ("sdsa", "none", True, None),
    ("sdsa", "sew", False, "block.0.attn.q_conv"),
    ("softmax", "ms", False, "block.0.attn.proj_conv"),
    ("ssa", "ms", False, "block.0.attn.matmul_av[arg0]"),
])
def test_ablations_flagged(attn_mode, shortcut, ok, culprit):
    torch.manual_seed(0)
    m = create_model("sdt_cifar10_2_256", embed_dim=64, attn_mode=attn_mode, shortcut=shortcut)
    rep = verify_spike_driven(m, torch.randn(2, 3, 32, 32))
    assert rep.ok is ok, rep.summary()
    if culprit:
        names = [c.name for c in rep.violations]
        assert culprit in names, names
        bad = next(c for c in rep.violations if c.name == culprit)
        assert bad.offending and any(v not in (0.0, 1.0) for v in bad.offending)


def test_sew_offending_values_are_integer_spikes():
    torch.manual_seed(0)
    m = create_model("sdt_cifar10_2_256", embed_dim=64, shortcut="sew")
    rep = verify_spike_driven(m, torch.randn(2, 3, 32, 32))
    vals = {v for c in rep.violations for v in c.offending}
    assert vals and all(float(v).is_integer() and v >= 2 for v in vals)


def test_trained_state_is_used_as_is():
    m = create_model("sdt_cifar10_2_256", embed_dim=64)
    from spikedriven.model import calibrate_bn

    calibrate_bn(m, [torch.randn(4, 3, 32, 32)])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rep = verify_spike_driven(m, torch.randn(2, 3, 32, 32))
    assert not rep.bn_calibrated_on_input
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # verifier never mutates the model


def test_cli_exit_codes(capsys):
    from spikedriven.cli import main

    assert main(["verify", "--model", "sdt_cifar10_2_256", "--quiet"]) == 0
    assert main(["verify", "--model", "sdt_cifar10_2_256", "--shortcut", "sew", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "spike-driven: YES" in out and "spike-driven: NO" in out and "VIOLATION conv block.0.attn.q_conv" in out


def test_a_proof_over_silent_neurons_is_not_a_plain_yes():
    """Untrained model, calibration switched off: layers that saw no spike are named and the verdict says so."""
    torch.manual_seed(0)
    m = create_model("sdt_digits_1_64")
    rep = verify_spike_driven(m, torch.randn(2, 1, 16, 16), calibrate=False)
    assert rep.ok and rep.silent and not rep.conclusive
    out = rep.summary()
    assert "spike-driven: YES on the layers that received spikes" in out and "WARNING" in out
    assert rep.silent[0].name in out
    calibrated = verify_spike_driven(m, torch.randn(16, 1, 16, 16))  # default: calibrate on the input
    assert calibrated.bn_calibrated_on_input and len(calibrated.silent) < len(rep.silent)
