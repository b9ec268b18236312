"""Every registered model is a timm model: timm.create_model / timm.list_models, pretrained_cfg metadata, and the
timm model interface (checkpoint_path, get_classifier / reset_classifier, forward_features / forward_head)."""
import subprocess
import sys

import pytest
import torch

import spikedriven as sd
from spikedriven.data import DATASET_INFO

timm = pytest.importorskip("timm")
SMALL = [n for n in sd.list_models() if sd.model_info(n).full_kwargs()["img_size"] <= 64]


@pytest.mark.parametrize("name", sd.list_models())
def test_timm_builds_the_same_model(name):
    with torch.device("meta"):  # shapes only: the ImageNet models are large
        a, b = timm.create_model(name), sd.create_model(name)
    assert type(a) is type(b) and a.model_kwargs == b.model_kwargs
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)
    cfg, info = a.pretrained_cfg, sd.model_info(name)
    k = info.full_kwargs()
    assert cfg["input_size"] == (k["in_channels"], k["img_size"], k["img_size"])
    assert cfg["num_classes"] == k["num_classes"] and cfg["first_conv"] in {n.rsplit(".", 1)[0] for n in sa}
    data = DATASET_INFO[info.dataset]
    if not data["is_event"] and data.get("mean"):
        assert cfg["mean"] == tuple(data["mean"]) and cfg["std"] == tuple(data["std"])
    assert timm.models.get_pretrained_cfg(name).input_size == cfg["input_size"]


@pytest.mark.parametrize("name", SMALL)
def test_timm_and_spikedriven_give_the_same_weights_for_the_same_seed(name):
    torch.manual_seed(3)
    a = timm.create_model(name)
    torch.manual_seed(3)
    b = sd.create_model(name)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_timm_list_models_and_overrides(tmp_path):
    names = set(timm.list_models("sdt*"))
    assert set(sd.list_models()) <= names
    m = timm.create_model("sdt_cifar10_2_256", num_classes=7, embed_dim=64)
    assert m.num_classes == 7 and m.embed_dim == 64 and m.pretrained_cfg["num_classes"] == 7
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("sdt_cifar10_2_256", pretrained=True)
    # checkpoint_path goes through timm's own loader (weights_only)
    ref = sd.create_model("sdt_digits_1_64")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    got = timm.create_model("sdt_digits_1_64", checkpoint_path=str(tmp_path / "w.pth"))
    assert all(torch.equal(x, y) for x, y in zip(ref.state_dict().values(), got.state_dict().values()))


@pytest.mark.parametrize("name", ["sdt_digits_1_64", "sdt_v2_8_384"])
def test_timm_model_interface(name):
    kw = {} if name.startswith("sdt_digits") else dict(img_size=32, embed_dim=(8, 16, 32, 40), num_classes=10)
    m = timm.create_model(name, **kw).eval()
    x = torch.randn(2, m.in_channels, m.img_size, m.img_size)
    feats = m.forward_features(x)
    assert feats.shape == (m.T, 2, feats.shape[-1])
    torch.testing.assert_close(m.forward_head(feats), m(x))
    assert m.forward_head(feats, pre_logits=True).shape == feats.shape
    assert isinstance(m.get_classifier(), torch.nn.Linear)
    m.reset_classifier(3)
    assert m(x).shape == (2, 3) and m.get_classifier().out_features == 3
    m.reset_classifier(0)
    assert m(x).shape == (2, feats.shape[-1])


@pytest.mark.parametrize("first", ["spikedriven", "timm"])
def test_registration_works_in_either_import_order(first):
    """`import spikedriven` stays light (no torch, no timm); the models reach timm whichever is imported first."""
    code = ("import sys\nimport spikedriven\nprint('torch' in sys.modules, 'timm' in sys.modules)\nimport timm\n"
            if first == "spikedriven" else "import timm, spikedriven\n")
    code += "print(type(timm.create_model('sdt_digits_1_64')).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-1] == "SpikeDrivenTransformer", out.stderr[-2000:]
    if first == "spikedriven":
        assert out.stdout.split()[:2] == ["False", "False"]
