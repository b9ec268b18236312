"""Energy accounting: FLOPs, SOPs, MAC/AC classification and totals checked against hand computations."""
import json
import math

import pytest
import torch
from torch import nn

from spikedriven import create_model
from spikedriven.energy import (E_AC_PJ, E_MAC_PJ, analyze_87x, attention_costs, conv_flops, energy_from_config,
                                linear_flops, profile_model, theoretical_report)
from spikedriven.layers import TokenSum


class Tiny(nn.Module):
    """T=2 toy: real-input conv (encoding layer), conv and linear on known binary patterns, a TokenSum."""

    T = 2

    def __init__(self, pattern_conv, pattern_lin, pattern_sum):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(2, 3, 1, bias=False)
        self.fc = nn.Linear(4, 2)
        self.token_sum = TokenSum()
        self.pc, self.pl, self.ps = pattern_conv, pattern_lin, pattern_sum

    def forward(self, x):  # x [B,1,2,2]
        B = x.shape[0]
        self.conv0(x.unsqueeze(0).expand(self.T, *x.shape).flatten(0, 1))
        self.conv1(self.pc.repeat_interleave(B, 0) if self.pc.shape[0] == self.T else self.pc)
        self.token_sum(self.ps)
        return self.fc(self.pl)


def _tiny(B=1):
    pc = torch.zeros(2 * B, 2, 2, 2)  # [T*B, C, H, W]; t=0 silent, t=1 half the inputs fire
    pc[B:, 0] = 1.0
    pl = torch.zeros(2, B, 4)
    pl[0, :, 0] = 1.0  # rate 0.25 at t=0
    pl[1] = 1.0  # rate 1.0 at t=1
    ps = torch.zeros(2, B, 1, 4, 2)  # [T,B,h,N,d], N*D = 8; 2 non-zero at t=0, 4 at t=1
    ps[0, :, 0, 0] = 1.0
    ps[1, :, 0, :2] = 1.0
    return Tiny(pc, pl, ps)


def test_flops_by_hand():
    assert conv_flops(nn.Conv2d(3, 4, 3, padding=1), (5, 5)) == 3 * 3 * 3 * 4 * 25
    assert conv_flops(nn.Conv2d(8, 8, 3, groups=4), (2, 2)) == 9 * 2 * 8 * 4
    assert linear_flops(nn.Linear(10, 7)) == 70
    rep = profile_model(_tiny(), [torch.randn(1, 1, 2, 2)])
    fl = {l.name: l.flops for l in rep.layers}
    assert fl == {"conv0": 9 * 1 * 2 * 4, "conv1": 1 * 2 * 3 * 4, "token_sum": 8, "fc": 8}


@pytest.mark.parametrize("B", [1, 3])
def test_sops_and_energy_by_hand(B):
    rep = profile_model(_tiny(B), [torch.randn(B, 1, 2, 2)])
    c0, c1, ts, fc = (rep.layer(n) for n in ("conv0", "conv1", "token_sum", "fc"))
    assert rep.n_samples == B and rep.T == 2
    assert c0.op == "MAC" and c0.sops == 72  # encoding layer: no T factor (paper)
    assert c1.op == "AC" and c1.rate_per_t == [0.0, 0.5] and c1.sops == pytest.approx(24 * 0.5)
    assert fc.op == "AC" and fc.rate_per_t == [0.25, 1.0] and fc.sops == pytest.approx(8 * 1.25)
    assert ts.kind == "sdsa" and ts.rate_per_t == [0.25, 0.5] and ts.sops == pytest.approx(8 * 0.75)
    want_pj = 72 * 4.6 + (12 + 10 + 6) * 0.9
    assert rep.total_mj == pytest.approx(want_pj * 1e-9)
    assert rep.mac_mj == pytest.approx(72 * 4.6e-9) and rep.sdsa_mj == pytest.approx(6 * 0.9e-9)
    rep_t = profile_model(_tiny(B), [torch.randn(B, 1, 2, 2)], first_layer_T=True, e_mac=1.0, e_ac=2.0)
    assert rep_t.layer("conv0").energy_mj == pytest.approx(2 * 72 * 1.0e-9)
    assert rep_t.total_mj == pytest.approx((144 + 2 * 28) * 1e-9)


def test_integer_and_real_inputs():
    m = _tiny()
    m.pc = m.pc * 2  # multi-bit spikes: value 2 = 2 additions
    m.pl = m.pl * 0.5  # real-valued: dense MACs at every step
    rep = profile_model(m, [torch.randn(1, 1, 2, 2)])
    assert rep.layer("conv1").input == "integer" and rep.layer("conv1").sops == pytest.approx(24 * 1.0)
    assert rep.layer("fc").op == "MAC" and rep.layer("fc").sops == 2 * 8


def _small_model(**kw):
    name = kw.pop("name", "sdt_cifar10_2_256")
    args = dict(embed_dim=32, depth=1, num_heads=8, img_size=16)
    args.update(kw)
    return create_model(name, **args)


def test_report_layers_are_the_models_conv_linear_layers():
    from spikedriven.model import calibrate_bn

    torch.manual_seed(0)
    model = _small_model(depth=2)
    x = torch.randn(2, 3, 16, 16)
    calibrate_bn(model, [x])
    rep = profile_model(model, [x, x])
    syn = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {l.name for l in rep.layers if l.kind in ("conv", "linear")} == syn
    assert [l.name for l in rep.layers if l.kind == "sdsa"] == ["block.0.attn.token_sum", "block.1.attn.token_sum"]
    assert rep.layers[0].name == "patch_embed.proj_conv" and rep.layers[0].op == "MAC"
    assert all(l.op == "AC" and l.input == "binary" for l in rep.layers[1:])
    assert rep.n_samples == 4
    assert any("folded" in n for n in rep.notes)
    # SOPs = T x rate x FLOPs for every AC layer
    for l in rep.layers[1:]:
        assert l.sops == pytest.approx(model.T * l.rate * l.flops)
    # pairing: q_conv's input is shortcut_lif's output
    got = {}

    def grab(m, a, o):
        got["r"] = float(o.mean())

    model.block[0].attn.shortcut_lif.register_forward_hook(grab)
    model.eval()
    with torch.no_grad():
        model(x)
    one = profile_model(model, [x])
    assert one.layer("block.0.attn.q_conv").rate == pytest.approx(got["r"], abs=1e-6)


def test_event_input_and_T_above_4():
    torch.manual_seed(0)
    model = _small_model(name="sdt_cifar10dvs_2_256_t10", T=6, in_channels=2, dvs_mode=True)
    x = torch.poisson(torch.full((2, 6, 2, 16, 16), 0.5))
    rep = profile_model(model, [x])
    first = rep.layers[0]
    assert rep.T == 6 and len(first.rate_per_t) == 6
    assert first.op == "AC" and first.input == "events"
    counts = [float(x[:, t].mean()) for t in range(6)]
    assert first.sops == pytest.approx(first.flops * sum(counts), rel=1e-6)
    rep_mac = profile_model(model, [x], event_first_layer="mac")
    assert rep_mac.layers[0].op == "MAC" and rep_mac.layers[0].sops == 6 * first.flops


def test_uniform_rate_8_512_matches_paper():
    rep = energy_from_config("sdt_8_512", 0.14)
    assert rep.mac_mj == pytest.approx(4.6e-9 * 86_704_128, rel=1e-9)  # 3x3x3x64 x 224^2
    ac_flops = sum(l.flops for l in rep.layers if l.op == "AC" and l.kind != "sdsa")
    assert ac_flops == pytest.approx(8.170e9, rel=1e-3)  # spec §4
    assert rep.total_mj == pytest.approx(4.50, abs=0.03)  # paper: 4.50 mJ
    assert rep.total_mj == pytest.approx(0.3988 + 0.9e-9 * 4 * ac_flops * 0.14, abs=1e-3)


def test_theoretical_counts_by_hand():
    N, D, T = 4, 8, 2
    c = attention_costs(N, D, T, rate_q=0.5, rate_k=0.5, rate_v=0.25)
    vsa, ssa, sdsa = c["VSA"], c["SSA"], c["SDSA"]
    assert vsa.count("MAC") == 128 + 128 + 32 and vsa.count("MUL") == 16
    assert vsa.energy_pj == pytest.approx(288 * E_MAC_PJ + 16 * 3.7)
    assert ssa.count("AC") == pytest.approx(2 * 0.5 * 128 + 2 * 0.25 * 128) and ssa.count("MUL") == 64
    assert sdsa.count("AC") == pytest.approx(2 * 0.125 * 32) and sdsa.count("MASK") == 128
    assert sdsa.energy_pj == pytest.approx(8 * E_AC_PJ)
    p = attention_costs(N, D, T, 0.5, 0.5, 0.25, rate_in=0.1, rate_out=0.2, include_projections=True)
    assert p["VSA"].count("MAC") == 288 + 4 * N * D * D
    assert p["SDSA"].count("AC") == pytest.approx(8 + T * (0.1 * 3 + 0.2) * N * D * D)
    assert "SDSA" in theoretical_report(N, D, T)


def test_87x_solver_is_consistent():
    for h in analyze_87x():
        # plugging the solved value back gives 87.2x
        args = dict(N=196, D=512, T=4, rate=0.14, rate_kv=0.02)
        key = "rate_kv" if h["free_parameter"] == "R_kv" else "rate"
        args[key] = h["value_for_target"]
        again = [g for g in analyze_87x(**args) if g["hypothesis"] == h["hypothesis"]][0]
        assert again["ratio"] == pytest.approx(87.2, rel=1e-9)
    op = analyze_87x()[0]
    assert op["ratio"] == pytest.approx(4.6 * 2 * 196 / (0.9 * 4 * 0.02), rel=1e-9)


def test_csv_json(tmp_path):
    rep = profile_model(_tiny(), [torch.randn(1, 1, 2, 2)])
    rep.to_csv(tmp_path / "r.csv")
    rep.to_json(tmp_path / "r.json")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("name,kind,op,input,flops,rate_t0,rate_t1,rate,")
    assert len(lines) == 1 + len(rep.layers) + 1
    d = json.loads((tmp_path / "r.json").read_text())
    assert math.isclose(d["totals"]["total_mj"], rep.total_mj) and len(d["layers"]) == 4
    assert "TOTAL" in rep.table()


def test_cli_takes_the_model_from_our_checkpoint(capsys, tmp_path):
    """Without --model/--config, a `spikedriven train` checkpoint's model_kwargs build the model (with --T on
    top); a checkpoint that does not describe its model is refused with what to pass instead."""
    from spikedriven.cli import main
    from spikedriven.model import SpikeDrivenTransformer

    kw = dict(img_size=16, in_channels=1, num_classes=5, embed_dim=32, depth=1, T=3, pooling_stat="0011")
    ours, bare = tmp_path / "ours.pth", tmp_path / "bare.pth"
    sd = SpikeDrivenTransformer(**kw).state_dict()
    torch.save({"state_dict": sd, "model_kwargs": kw}, ours)
    torch.save({"state_dict": sd}, bare)
    js = tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(ours), "--uniform-rate", "0.1", "--T", "2", "--json", str(js)]) == 0
    d = json.loads(js.read_text())
    expected = energy_from_config(SpikeDrivenTransformer(**{**kw, "T": 2}), 0.1)
    assert math.isclose(d["totals"]["total_mj"], expected.total_mj)
    assert not math.isclose(expected.total_mj, energy_from_config(SpikeDrivenTransformer(**kw), 0.1).total_mj)
    assert main(["verify", "--checkpoint", str(ours), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["energy", "--checkpoint", str(bare), "--uniform-rate", "0.1"]) == 2
    assert "pass --model NAME or --config YAML" in capsys.readouterr().err


def test_cli_uniform_rate_and_theory(capsys, tmp_path):
    from spikedriven.cli import main

    assert main(["energy", "--model", "sdt_cifar10_2_256", "--uniform-rate", "0.2",
                 "--json", str(tmp_path / "u.json")]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and (tmp_path / "u.json").exists()
    assert main(["energy", "--theory", "--N", "196", "--D", "512"]) == 0
    out = capsys.readouterr().out
    assert "87.2x needs" in out and "VSA" in out


def test_measured_report_normalises_like_training():
    """--data NAME feeds the model the test split through the recipe's own eval transform (the dataset's mean/std,
    not 0.5/0.5)."""
    from types import SimpleNamespace

    from spikedriven.cli.energy import _batches
    from spikedriven.data import dataset_normalisation as _dataset_norm
    from spikedriven.training.data import build_datasets
    from spikedriven.training.recipe import resolve_recipe

    assert _dataset_norm("fmnist") == ((0.2860,), (0.3530,)) and _dataset_norm("digits") == ((0.3050,), (0.3800,))
    assert _dataset_norm("imagenet")[0] != 0.5  # ImageNet statistics
    assert _dataset_norm("gesture") == (0.5, 0.5)  # event frames: no normalisation defined
    m = create_model("sdt_digits_1_64")
    args = SimpleNamespace(data="digits", batches=1, batch_size=3, seed=0, config=None, data_root=None, img_size=None)
    (x,), where = _batches(args, m, {}, 16)
    ds = build_datasets(resolve_recipe("digits"), splits=("test",))["test"]
    assert "the registered recipe of sdt_digits_1_64" in where and x.shape == (3, 1, 16, 16)
    assert any(torch.equal(x[0], ds[i][0]) for i in range(len(ds)))  # one of the recipe's own test inputs
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img = ds.base[0][0]  # the raw 8x8 test image (PIL)
    mean, std = _dataset_norm("digits")
    want = TF.normalize(TF.to_tensor(TF.resize(img, [16, 16], InterpolationMode.BICUBIC)), mean, std)
    torch.testing.assert_close(ds[0][0], want, atol=1e-5, rtol=0)  # resized and normalised as trained
