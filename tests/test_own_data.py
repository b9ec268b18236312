"""Off the demo path (issue 22): your own images, flags a recipe cannot use, names mistyped, runs that learn
nothing, a wrong checkpoint. Image folders are written here by the tests (a few tiny PNGs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikedriven.cli import main
from spikedriven.data.folder import FolderImages, head_refusal, inspect_folder
from spikedriven.training.recipe import resolve_recipe

pytestmark = pytest.mark.usefixtures("reference_lif")  # tests/conftest.py

CLASSES = ("circle", "cross", "square")


def make_folder(root: Path, n_train=12, n_val=4, size=16, grey=False, classes=CLASSES, val="val", seed=0) -> Path:
    """root/{train,val}/<class>/<i>.png: class c has its own dominant colour (learnable), plus noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), (val, n_val)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
                a[..., ci % 3] += 200
                img = Image.fromarray(a)
                (img.convert("L") if grey else img).save(d / f"{i}.png")
    return root


def pixel_stats(root: Path, grey=False):
    """Mean/std per channel of every training image / 255, computed here independently (numpy over all pixels)."""
    arrs = [np.asarray(Image.open(f).convert("L" if grey else "RGB"), np.float64).reshape(-1, 1 if grey else 3)
            for f in sorted((root / "train").rglob("*.png"))]
    a = np.concatenate(arrs) / 255.0
    return a.mean(0), a.std(0)


def cli(capsys, *args):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    assert rc not in (0, None), err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("spikedriven: warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


FAST = ["--no-progress", "--no-tensorboard", "--no-plot", "--no-summary", "--no-save-safetensors", "--threads", "1",
        "-b", "12", "--val-batch-size", "12"]


# ------------------------------------------------------------------------------------------- item 1: own images
def test_the_folder_decides_classes_channels_size_and_statistics(tmp_path):
    root = make_folder(tmp_path / "shapes", size=12)
    r = resolve_recipe("digits", {"dataset": "imagefolder", "data_dir": str(root)})
    assert r["class_names"] == list(CLASSES) and r["num_classes"] == 3 and r["in_channels"] == 3
    assert r["img_size"] == 16  # the recipe's registered model (sdt_digits_1_64) decides the size
    mean, std = pixel_stats(root)
    assert np.allclose(r["mean"], mean, atol=1e-4) and np.allclose(r["std"], std, atol=1e-4)
    assert {"num_classes", "in_channels"} <= r.explicit  # the model's head and stem follow the folder
    assert r.data_label == "shapes" and "computed from 36 of 36 training images" in r["_data_note"]
    # a model built from the keys (no registered model) takes the images' size; grey images give one channel
    grey = make_folder(tmp_path / "grey", size=12, grey=True)
    g = resolve_recipe({"dataset": "imagefolder", "data_dir": str(grey), "dim": 16})
    assert (g["in_channels"], g["img_size"]) == (1, 12)
    assert np.allclose(g["mean"], pixel_stats(grey, grey=True)[0], atol=1e-4)
    # a recipe written for another dataset (CIFAR-10: 10 classes, its mean/std) switched to the folder
    c = resolve_recipe("cifar10_2_256", {"dataset": "imagefolder", "data_dir": str(grey)}, warn=False)
    assert (c["num_classes"], c["in_channels"], c["img_size"]) == (3, 1, 32)
    assert np.allclose(c["std"], pixel_stats(grey, grey=True)[1], atol=1e-4)


def test_inspect_folder_size_is_the_median_shorter_side_and_val_may_be_test(tmp_path):
    root = tmp_path / "mixed"
    for i, (w, h) in enumerate([(12, 20), (30, 16), (20, 24)]):
        d = root / "train" / f"c{i}"
        d.mkdir(parents=True)
        Image.new("RGB", (w, h), (i * 80, 10, 10)).save(d / "a.png")
    (root / "test" / "c0").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "test" / "c0" / "b.png")
    info = inspect_folder(root)
    assert info["img_size"] == 16 and info["in_channels"] == 3 and info["classes"] == ["c0", "c1", "c2"]
    assert len(FolderImages(root, "test")) == 1  # test/ serves as the held-out split


def test_labels_follow_the_training_folders_in_every_split(tmp_path):
    root = make_folder(tmp_path / "d", n_train=2, n_val=1)
    for c in ("circle", "cross"):  # val/ holds only 'square': its label stays 2, not 0
        for f in (root / "val" / c).iterdir():
            f.unlink()
        (root / "val" / c).rmdir()
    val = FolderImages(root, "val")
    assert val.classes == list(CLASSES) and set(val.labels) == {2}
    (root / "val" / "dog").mkdir()
    Image.new("RGB", (4, 4)).save(root / "val" / "dog" / "x.png")
    with pytest.raises(FileNotFoundError, match="dog"):
        FolderImages(root, "val")


def test_head_refusal_rules():
    assert head_refusal(3, list(CLASSES), "d") is None
    assert "3 classes" in head_refusal(10, list(CLASSES), "d") and "--init-from" in head_refusal(10, list(CLASSES), "d")
    assert head_refusal(10, list(CLASSES), "d", chosen=True) is None  # the user chose a larger head
    assert "at least" in head_refusal(2, list(CLASSES), "d", chosen=True)  # labels 2 would not fit


def test_own_images_train_eval_and_refusals_end_to_end(tmp_path, capsys, monkeypatch):
    """Train two epochs on a folder of PNGs, then eval and infer reuse its recipe (mean/std, classes, label)."""
    monkeypatch.chdir(tmp_path)
    root = make_folder(tmp_path / "shapes")
    rc, out, err = cli(capsys, "train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", "2",
                       "--warmup-epochs", "0", "--lr", "5e-3", "--experiment", "own", *FAST)
    assert rc == 0, err
    assert "data shapes: 3 classes (circle, cross, square)" in out and "computed from 36 of 36" in out
    assert "data shapes: 36 train / 12 test samples" in out and "classes=3" in out and "in=3" in out
    ck = torch.load(tmp_path / "runs" / "own" / "best.pt", map_location="cpu", weights_only=True)
    assert ck["state_dict"]["head.weight"].shape[0] == 3 and ck["model_kwargs"]["in_channels"] == 3
    mean, std = pixel_stats(root)
    assert np.allclose(ck["recipe"]["mean"], mean, atol=1e-4) and ck["recipe"]["class_names"] == list(CLASSES)
    cfg = (tmp_path / "runs" / "own" / "config.yaml").read_text()
    assert "class_names:" in cfg and "imagefolder" in cfg

    rc, out, err = cli(capsys, "eval", "--checkpoint", "runs/own/best.pt", "--no-progress")
    assert rc == 0, err
    assert out.startswith("shapes test: top-1") and "(12 samples" in out and "imagenet" not in out
    # eval reuses the stored statistics: moving the training images away changes nothing
    (root / "train").rename(tmp_path / "elsewhere")
    rc, out2, err = cli(capsys, "eval", "--checkpoint", "runs/own/best.pt", "--no-progress")
    assert rc == 0 and out2.split("(")[0] == out.split("(")[0], err
    (tmp_path / "elsewhere").rename(root / "train")
    rc, out, err = cli(capsys, "infer", "--checkpoint", "runs/own/best.pt", "--engine", "dense",
                       "--data", root / "val" / "cross")
    assert rc == 0 and "4 image(s)" in out, err

    # another folder: other classes are refused, in one line
    other = make_folder(tmp_path / "pets", n_train=2, n_val=1, classes=("cat", "dog"))
    rc, _, err = cli(capsys, "eval", "--checkpoint", "runs/own/best.pt", "--data-dir", other, "--no-progress")
    one_line_error(rc, err, "cat, dog", "circle, cross, square")
    # a head that cannot hold the folder's labels is refused before any run folder is made
    rc, _, err = cli(capsys, "train", "--dataset", "imagefolder", "--data-dir", root, "--num-classes", "2",
                     "--output", tmp_path / "none", *FAST)
    one_line_error(rc, err, "3 classes", "2 outputs")
    assert not (tmp_path / "none").exists()
    # a larger head chosen explicitly is the user's choice
    r = resolve_recipe("digits", {"dataset": "imagefolder", "data_dir": str(root), "num_classes": 5})
    assert r["num_classes"] == 5
    rc, _, err = cli(capsys, "train", "--dataset", "imagefolder", "--output", tmp_path / "none", *FAST)
    one_line_error(rc, err, "needs --data-dir", "train/<class>")
    rc, _, err = cli(capsys, "train", "--dataset", "imagefolder", "--data-dir", tmp_path / "nowhere", *FAST)
    one_line_error(rc, err, "does not exist")


# ------------------------------------------------------------------------------------------- item 2: unusable flags
@pytest.mark.parametrize("args, needle", [
    (["--data-dir", "mydata"], "--data-dir cannot be used here: digits is embedded"),
    (["--dvs-aug"], "--dvs-aug cannot be used here"),
    (["--partial"], "--init-from or --resume"),
    (["--no-resume-opt"], "--resume"),
    (["--model-ema-decay", "0.99"], "--model-ema"),
    (["--kd-teacher", "resnet18"], "--distillation-type"),
    (["--mixup-prob", "0.5"], "--mixup"),
    (["--patience-epochs", "3"], "plateau"),
    (["--sched", "none", "--warmup-epochs", "2"], "constant lr"),
])
def test_a_flag_the_recipe_cannot_use_is_refused(tmp_path, capsys, args, needle):
    rc, _, err = cli(capsys, "train", "--output", tmp_path, *args)
    one_line_error(rc, err, needle)
    assert not list(tmp_path.iterdir())


def test_flags_that_ask_for_nothing_or_apply_pass():
    r = resolve_recipe("digits", {"dvs_aug": False, "partial": False, "model_ema": True, "model_ema_decay": 0.99})
    assert r["model_ema_decay"] == 0.99
    resolve_recipe("sim_fmnist_dvs", {"dvs_aug": True}, warn=False)  # event data: its augmentation applies
    with pytest.raises(ValueError, match="--hflip cannot be used here: sim-fashion-mnist-dvs is event data"):
        resolve_recipe("sim_fmnist_dvs", {"hflip": 0.5}, warn=False)


def test_eval_data_dir_on_embedded_data_is_refused():
    from spikedriven.training.inputs import with_dataset

    with pytest.raises(ValueError, match="digits is embedded"):
        with_dataset(resolve_recipe("digits"), None, "some/folder")


# ------------------------------------------------------------------------------------------- item 6: names
def test_unknown_yaml_key_is_an_error_with_the_closest_names(tmp_path, capsys):
    p = tmp_path / "mine.yml"
    p.write_text("model: sdt_digits_1_64\ndataset: digits\nlearning_rate: 0.1\n")
    rc, _, err = cli(capsys, "train", "-c", p, "--output", tmp_path / "runs")
    one_line_error(rc, err, "unknown key 'learning_rate'", "did you mean lr")
    p.write_text("model: sdt_digits_1_64\ndataset: digits\nwarmup_epoch: 0\n")
    with pytest.raises(ValueError, match="did you mean warmup_epochs"):
        resolve_recipe(p)
    # an official file keeps its documented warning for the official no-op keys, and is not refused
    p.write_text("dataset: torch/cifar10\ndim: 64\nmodel-ema: false\nuse_conv_as_linear: true\n")
    from spikedriven.config import ConfigWarning

    with pytest.warns(ConfigWarning, match="hyphenated"):
        assert resolve_recipe(p)["dim"] == 64


@pytest.mark.parametrize("args, needle", [
    (["--set", "learning_rate=0.1"], "did you mean lr"),
    (["--set", "epoch=3"], "did you mean epochs"),
    (["--model", "sdt_digitz"], "sdt_digits_1_64"),  # among the closest names (did you mean ...)
    (["--sched", "cosin"], "did you mean cosine"),
])
def test_typos_get_the_closest_names(tmp_path, capsys, args, needle):
    rc, _, err = cli(capsys, "train", "--output", tmp_path, *args)
    line = one_line_error(rc, err, needle)
    assert len(line) < 400  # not the list of every key


# ------------------------------------------------------------------------------------------- item 7: advice
def test_a_mostly_warm_up_schedule_is_warned():
    from spikedriven.training.advice import warmup_warning

    r = resolve_recipe("digits", {"epochs": 1})
    msg = warmup_warning(r, 1)
    assert msg and "1 of the 1 epoch(s) are learning-rate warm-up" in msg and "--epochs" in msg
    assert warmup_warning(resolve_recipe("digits"), 14) is None
    assert warmup_warning(resolve_recipe("digits", {"epochs": 1, "warmup_epochs": 0}), 1) is None


def test_silent_neurons_are_warned():
    import spikedriven as sd
    from spikedriven.training.advice import silence_warning

    from spikedriven.probe import calibrate_bn

    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    m = calibrate_bn(sd.create_model("sdt_digits_1_64"), [x]).eval()
    assert silence_warning(m, [x]) is None  # with BN statistics of the data, neurons fire
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                mod.weight.zero_()
                mod.bias.zero_()
    msg = silence_warning(m, [x])
    assert msg and "every neuron is silent" in msg and "--epochs" in msg


def test_a_one_epoch_run_says_it_is_mostly_warm_up(tmp_path, capsys):
    root = make_folder(tmp_path / "shapes", n_train=4, n_val=2)
    rc, out, err = cli(capsys, "train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", "1",
                       "--output", tmp_path / "runs", *FAST)
    assert rc == 0, err
    warn = [ln for ln in out.splitlines() if ln.startswith("warning:") and "warm-up" in ln]
    assert len(warn) == 1 and "--warmup-epochs" in warn[0]


def test_a_wrong_checkpoint_is_one_short_line(tmp_path, capsys):
    import spikedriven as sd

    v2 = sd.create_model("sdt_v2_digits_8_64")
    path = tmp_path / "v2.pth"
    torch.save(v2.state_dict(), path)
    rc, _, err = cli(capsys, "forward", "--model", "sdt_digits_1_64", "--checkpoint", path)
    line = one_line_error(rc, err, "missing keys", "unexpected keys", "--model NAME")
    assert len(line) < 700
    own, file = set(sd.create_model("sdt_digits_1_64").state_dict()), set(v2.state_dict())
    assert f"{len(own - file)} missing keys" in line and f"{len(file - own)} unexpected keys" in line
    assert line.count(", ...") >= 2  # the first three of each named, not all of them
