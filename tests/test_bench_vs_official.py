"""benchmarks/bench_vs_official.py without the official code: how it finds checkouts, its one-line refusals, and that
our side of each configuration has the official parameter count (spec numbers, not ours)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import spikedriven as sd

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_vs_official", ROOT / "benchmarks" / "bench_vs_official.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _checkout(path: Path, family_marker: str) -> Path:
    f = path / family_marker
    f.parent.mkdir(parents=True)
    f.write_text("# stand-in\n")
    return path


def test_finds_a_checkout_itself_or_one_level_down(bench, tmp_path):
    v2 = _checkout(tmp_path / "Spike-Driven-Transformer-V2", "classification/models.py")
    v1 = _checkout(tmp_path / "sdt-v1", "model/spikeformer.py")
    assert bench.find_checkout(tmp_path, "v2") == v2 and bench.find_checkout(tmp_path, "v1") == v1
    assert bench.find_checkout(v2, "v2") == v2
    assert bench.find_checkout(tmp_path, "v3") is None and bench.find_checkout(v2, "v1") is None


@pytest.mark.parametrize("argv,msg", [
    ([], "--official-dir is required"),
    (["--official-dir", "{tmp}/missing"], "is not a folder"),
    (["--official-dir", "{tmp}"], "holds no checkout of the official repositories: git clone https://github.com/BICLab"),
    (["--official-dir", "{tmp}", "--family", "v3"], "git clone https://github.com/BICLab/Spike-Driven-Transformer-V3"),
    (["--official-dir", "{tmp}", "--official-sj", "{tmp}"], "holds no spikingjelly package"),
])
def test_setup_mistakes_are_one_line_refusals(bench, tmp_path, capsys, argv, msg):
    code = bench.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("config,params", [
    ("v1_cifar_2_256", 2_567_082),  # spec reference-implementation.md §4 (official CIFAR-10 2-256)
    ("v2_8_384_64px", 31_333_864),  # spec v2-reference.md §3 (metaspikformer_8_384)
])
def test_our_side_has_the_official_parameter_count(bench, config, params):
    m = bench._ours(bench.CONFIGS[config])
    assert sum(p.numel() for p in m.parameters()) == params


def test_every_config_names_a_known_family_and_builder(bench):
    for name, cfg in bench.CONFIGS.items():
        assert cfg["family"] in bench.REPOS and name.startswith(cfg["family"])
        ours = cfg["ours"][0]
        assert ours in sd.list_models() or cfg["family"] == "v3", ours
