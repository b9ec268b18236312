"""Building models from official-format YAML files, with the official key semantics."""
import warnings

import pytest

from spikedriven.config import ConfigWarning, create_model_from_yaml, model_kwargs_from_official
from spikedriven.model import model_info

# Written here in the official conf/cifar10/2_512_300E_t4.yml format (subset of keys, incl. its quirks).
CIFAR10_2_512 = """
data_dir: ./data/
dataset: torch/cifar10
num_classes: 10
num_heads: 8
img_size: 32
use_conv_as_linear: true
pooling_stat: "0011"
time_steps: 4
layer: 2
dim: 512
mlp_ratio: 4
model-ema: False
model-ema-decay: 0.9998
lr: 3e-4
"""

CIFAR10DVS = """
dataset: cifar10-dvs
num_classes: 10
img_size: 64
pooling_stat: "0011"
in_channels: 2
time_steps: 10
layer: 2
dim: 256
TET: True
TET_means: 1.0
TET_lamb: 0.001
drop_path: 0.2
"""


def test_official_cifar10_yaml(tmp_path):
    p = tmp_path / "2_512_300E_t4.yml"
    p.write_text(CIFAR10_2_512)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = create_model_from_yaml(p)
    msgs = [str(x.message) for x in w if issubclass(x.category, ConfigWarning)]
    assert any("'model-ema' is hyphenated" in s for s in msgs)
    assert any("use_conv_as_linear" in s for s in msgs)
    assert sum(q.numel() for q in m.parameters()) == model_info("sdt_cifar10_2_512").params
    assert (m.T, m.pooling_stat, m.dvs_mode, m.tet) == (4, "0011", False, False)


def test_official_dvs_yaml_sets_dvs_mode_and_tet(tmp_path):
    p = tmp_path / "dvs.yml"
    p.write_text(CIFAR10DVS)
    with pytest.warns(ConfigWarning, match="drop_path"):
        m = create_model_from_yaml(p)
    assert m.dvs_mode and m.tet and m.T == 10 and m.drop_path_rate == 0.0
    assert sum(q.numel() for q in m.parameters()) == model_info("sdt_cifar10dvs_2_256_t10").params


def test_defaults_follow_official_argparse():
    kw = model_kwargs_from_official({"dim": 256})
    assert (kw["depth"], kw["T"], kw["num_classes"], kw["pooling_stat"], kw["in_channels"]) == (4, 4, 1000, "1111", 3)


@pytest.mark.parametrize("text, msg", [
    ("layer: 2\n", "no 'dim' key"),
    ("dim: 64\npooling_stat: 0011\n", "quoted 4-character string"),
    ("- a\n- b\n", "expected a YAML mapping"),
    ("dim: [\n", "not valid YAML"),
])
def test_bad_yaml(tmp_path, text, msg):
    p = tmp_path / "bad.yml"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg):
        create_model_from_yaml(p, warn=False)
