"""The README (and the docs) as tested surfaces: the Python blocks run as written, every `spikedriven ...` command
line names real subcommands and flags, and the examples run."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


def fenced_blocks(text: str, langs=None) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    blocks = re.findall(r"^```([a-z]*)\n(.*?)^```", text, flags=re.S | re.M)
    return [(lang, body) for lang, body in blocks if langs is None or lang in langs]


def command_lines(text: str) -> list[str]:
    """`spikedriven ...` lines of the shell/plain code blocks, comments stripped."""
    out = []
    for lang, body in fenced_blocks(text, {"", "bash", "sh", "console"}):
        for line in body.splitlines():
            line = line.split("  #")[0].strip()
            if " -m spikedriven.cli " in line:  # torchrun ... -m spikedriven.cli COMMAND ...
                line = "spikedriven " + line.split(" -m spikedriven.cli ", 1)[1]
            elif " -m spikedriven" in line and not line.startswith("python -m spikedriven"):
                out.append("spikedriven <not a command module: use -m spikedriven.cli>")
                continue
            if line.startswith("spikedriven ") or line.startswith("python -m spikedriven"):
                out.append(line)
    return out


def _parser():
    from spikedriven.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return p, sub.choices


def _flags(line: str) -> tuple[str, list[str]]:
    """(subcommand, option strings) named by a synopsis line: options written as --a/--b or [--a X | --b] count."""
    words = line.replace("python -m spikedriven", "spikedriven").split()
    cmd = words[1]
    flags = []
    for w in words[2:]:
        for part in re.split(r"[|/\[\]]", w):
            if re.fullmatch(r"-{1,2}[A-Za-z][A-Za-z0-9_-]*", part):
                flags.append(part)
    return cmd, flags


def test_python_blocks_run_as_written(tmp_path):
    """Every ```python block of the README, in order, in a fresh interpreter inside an empty folder."""
    code = "\n\n".join(body for _, body in fenced_blocks(README, {"python"}))
    assert "import spikedriven" in code and "load_into_model" in code
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "spike-driven: YES" in r.stdout and "torch.Size([2, 10])" in r.stdout
    assert "(4, 2, 128, 128) 500 0" in r.stdout  # "Your own event data": written, read back as 4 frames


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_command_line_names_real_subcommands_and_flags(doc):
    _, subs = _parser()
    lines = command_lines(DOCS[doc])
    bad = []
    for line in lines:
        if line.startswith("python -m spikedriven") and "--help" in line:
            continue
        cmd, flags = _flags(line)
        if cmd not in subs:
            bad.append(f"{line!r}: no subcommand {cmd!r}")
            continue
        known = {o for a in subs[cmd]._actions for o in a.option_strings}
        bad += [f"{line!r}: `spikedriven {cmd}` has no {f}" for f in flags if f not in known]
    assert not bad, "\n".join(bad)


def test_inline_commands_name_real_subcommands():
    _, subs = _parser()
    for doc, text in DOCS.items():
        for cmd in re.findall(r"`spikedriven ([a-z]+)", text):
            assert cmd in subs, f"{doc}: `spikedriven {cmd}` is not a command"


def test_readme_examples_run(capsys):
    from spikedriven.cli import main

    block = next(body for _, body in fenced_blocks(README, {"bash"}) if body.startswith("spikedriven models"))
    for line in block.strip().splitlines():
        argv = shlex.split(line)[1:]
        assert main(argv) == 0, line
        out = capsys.readouterr().out
        assert out.strip(), line
    assert "sdt_cifar10_2_256" in main_output(["models", "cifar"], capsys)


def main_output(argv, capsys):
    from spikedriven.cli import main

    assert main(argv) == 0
    return capsys.readouterr().out


def test_python_m_spikedriven():
    r = subprocess.run([sys.executable, "-m", "spikedriven", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("spikedriven ")


def test_a_wrong_flag_is_reported_by_the_subcommand():
    """`spikedriven eval --dataset x`: one line naming eval's usage, not the top-level one."""
    r = subprocess.run([sys.executable, "-m", "spikedriven", "eval", "--dataset", "x"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "spikedriven eval" in r.stderr and "--dataset" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow  # 20 epochs with checkpoints, curve and TensorBoard each epoch; test_own_data.py covers the flow fast
def test_own_images_section_runs_as_written(tmp_path, monkeypatch, capsys):
    """"Train on your own images": the folder it shows is made here (two classes of tiny PNGs, one colour each),
    then its commands run as written, in that folder's parent."""
    import numpy as np
    from PIL import Image

    from spikedriven.cli import main

    section = README.split("## Train on your own images", 1)[1].split("\n## ", 1)[0]
    block = next(body for lang, body in fenced_blocks(section) if lang == "bash")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 4)):
        for ci, c in enumerate(("cat", "dog")):
            d = tmp_path / "my_images" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 40, (16, 16, 3)).astype(np.uint8)
                a[..., ci] += 200
                Image.fromarray(a).save(d / f"{i:03d}.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPIKEDRIVEN_LIF_BACKEND", "torch")
    outs = []
    for line in block.strip().splitlines():
        assert main(shlex.split(line)[1:]) == 0, line
        outs.append(capsys.readouterr().out)
    train_out, eval_out, infer_out = outs
    assert "data my_images: 2 classes (cat, dog)" in train_out and "computed from 40 of 40 training images" in train_out
    assert eval_out.startswith("my_images test: top-1") and "(8 samples" in eval_out
    assert "4 image(s)" in infer_out and "predictions:" in infer_out
