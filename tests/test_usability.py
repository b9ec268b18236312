"""What a new user meets: quiet start-up, help for every option, messages in units and words that fit."""
import subprocess
import sys

import torch

from spikedriven.cli import build_parser


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "spikedriven", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_no_cuda_home_warning_on_a_cpu_command():
    """Building/loading the C++ kernels imports torch.utils.cpp_extension, which logs "No CUDA runtime is found"
    on a CUDA build of torch without a GPU: that line concerns CUDA extensions, not ours."""
    r = _run("forward", "--model", "sdt_digits_1_64")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "No CUDA runtime" not in r.stderr and "CUDA_HOME" not in r.stderr


def test_building_the_parser_imports_no_torch():
    code = "import sys\nfrom spikedriven.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr[-2000:]


def test_every_option_of_every_command_has_help():
    p = build_parser()
    missing = []
    for name, sub in p.commands.items():
        for a in sub._actions:
            if a.option_strings and a.dest != "help" and not a.help:
                missing.append(f"{name} {'/'.join(a.option_strings)}")
            if not a.option_strings and a.dest not in ("help",) and not a.help:
                missing.append(f"{name} <{a.dest}>")
    assert not missing, missing


def test_load_into_model_meta_holds_no_training_state(tmp_path):
    import spikedriven as sd
    from spikedriven.checkpoint import load_into_model

    m = sd.create_model("sdt_digits_1_64")
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(2, 1, 16, 16)).sum().backward()
    opt.step()
    torch.save({"state_dict": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "arch": "x"},
               tmp_path / "c.pth")
    meta = load_into_model(m, tmp_path / "c.pth")["meta"]
    assert meta == {"epoch": 3, "arch": "x"}


def test_energy_of_a_small_model_is_in_microjoules(capsys):
    from spikedriven.cli import main

    assert main(["energy", "--model", "sdt_digits_1_64", "--uniform-rate", "0.1"]) == 0
    total = [ln for ln in capsys.readouterr().out.splitlines() if "TOTAL" in ln][0]
    assert total.endswith(" uJ") and "0.000" not in total


def test_theory_says_when_a_rate_above_one_would_be_needed(capsys):
    from spikedriven.cli import main

    assert main(["energy", "--theory", "--N", "196", "--D", "512"]) == 0
    out = capsys.readouterr().out
    assert "87.2x is impossible here" in out and "a rate lies in [0, 1]" in out
    needs = [ln for ln in out.splitlines() if "87.2x needs" in ln]
    assert needs and all(0 <= float(ln.rsplit("= ", 1)[1]) <= 1 for ln in needs)


def test_models_with_a_plain_word_and_family(capsys):
    from spikedriven.cli import main

    assert main(["models", "cifar"]) == 0
    out = capsys.readouterr().out
    assert "sdt_cifar10_2_256" in out and "sdt_8_512" not in out
    assert main(["models", "--family", "sdt_v2"]) == 0
    out = capsys.readouterr().out
    assert "sdt_v2_8_512" in out and "sdt_cifar10" not in out
    assert main(["models", "nothing_like_this"]) == 1
