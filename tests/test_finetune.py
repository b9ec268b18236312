"""Fine-tuning (issue 22 item 3): a checkpoint trained for another number of classes loads everything but the
classifier(s) (V1 ``head``; V2 ``head`` and ``head_kd``), which stay freshly initialised, and the run says so."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from spikedriven import create_model
from spikedriven.checkpoint import CheckpointError, atomic_save
from spikedriven.config import ConfigWarning
from spikedriven.models.finetune import classifier_names, without_classifier
from spikedriven.train import train
from spikedriven.training.loop import Trainer
from spikedriven.training.recipe import resolve_recipe

pytestmark = pytest.mark.usefixtures("reference_lif")

# small V1 / V2 (constructor overrides keep the models a few thousand parameters)
SMALL = {"sdt_digits_1_64": dict(embed_dim=16),
         "sdt_v2_digits_8_64": dict(embed_dim=(8, 8, 16, 16))}


def _save_trained_like(tmp_path, name, **kw):
    """A 10-class checkpoint whose every tensor is distinct from a fresh model's (as after training)."""
    torch.manual_seed(1)
    m = create_model(name, **SMALL[name], **kw)
    sd = {k: (v + 0.5 if v.is_floating_point() else v + 3) for k, v in m.state_dict().items()}
    p = tmp_path / f"{name}.pt"
    atomic_save({"state_dict": sd}, p)
    return p, sd


@pytest.mark.parametrize("name,kd", [("sdt_digits_1_64", False), ("sdt_v2_digits_8_64", False),
                                     ("sdt_v2_digits_8_64", True)])
def test_create_model_with_other_classes_keeps_backbone_fresh_heads(tmp_path, caplog, name, kd):
    extra = {"kd": True} if kd else {}
    path, sd = _save_trained_like(tmp_path, name, **extra)
    heads = ("head", "head_kd") if kd else ("head",)
    with caplog.at_level(logging.WARNING, logger="spikedriven"):
        torch.manual_seed(7)
        m = create_model(name, **SMALL[name], **extra, num_classes=3, checkpoint_path=path)
    torch.manual_seed(7)
    fresh = create_model(name, **SMALL[name], **extra, num_classes=3)
    own = m.state_dict()
    is_head = lambda k: k.split(".")[0] in classifier_names(m)  # noqa: E731
    backbone = [k for k in own if not is_head(k)]
    assert len(backbone) > 20 and all(torch.equal(own[k], sd[k]) for k in backbone)
    head_keys = [k for k in own if is_head(k)]
    assert sorted({k.split(".")[0] for k in head_keys}) == sorted(heads)
    for k in head_keys:  # the model's own initialisation, not the checkpoint's values
        assert own[k].shape[0] == 3 and torch.equal(own[k], fresh.state_dict()[k]), k
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "10 classes" in msgs[0] and "has 3" in msgs[0]
    assert f"({', '.join(heads)})" in msgs[0] and "\n" not in msgs[0]
    assert m.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_kd_checkpoint_into_plain_model_drops_both_heads(tmp_path):
    path, sd = _save_trained_like(tmp_path, "sdt_v2_digits_8_64", kd=True)
    m = create_model("sdt_v2_digits_8_64", **SMALL["sdt_v2_digits_8_64"], num_classes=4, checkpoint_path=path)
    assert not hasattr(m, "head_kd") and m.head.out_features == 4
    assert torch.equal(m.state_dict()["downsample1_1.encode_conv.weight"], sd["downsample1_1.encode_conv.weight"])


def test_same_classes_stays_strict(tmp_path):
    """Only the number of classes opens the fine-tuning path: any other mismatch is still refused."""
    path, sd = _save_trained_like(tmp_path, "sdt_digits_1_64")
    m = create_model("sdt_digits_1_64", **SMALL["sdt_digits_1_64"])
    assert without_classifier(m, sd) == (sd, None)
    with pytest.raises(CheckpointError):  # another width: the backbone does not fit
        create_model("sdt_digits_1_64", embed_dim=32, num_classes=3, checkpoint_path=path)
    del sd["block.0.mlp.fc1_conv.weight"]
    atomic_save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError):  # a missing backbone key, even with new classes
        create_model("sdt_digits_1_64", **SMALL["sdt_digits_1_64"], num_classes=3, checkpoint_path=path)


# a tiny SDT on 8x8 digits (as tests/test_train.py)
TINY = dict(dataset="digits", dim=16, layer=1, num_heads=2, time_steps=2, img_size=8, pooling_stat="0011",
            batch_size=16, val_batch_size=64, max_train_samples=96, max_eval_samples=64, epochs=2,
            cooldown_epochs=0, warmup_epochs=1, warmup_lr=1e-4, opt="adamw", lr=3e-3, weight_decay=0.01,
            sched="cosine", workers=0, progress=False, tensorboard=False, plot=False, summary=False,
            save_safetensors=False, threads=1, scale=[0.7, 1.0], ratio=[0.9, 1.1], hflip=0.0, aa=None,
            smoothing=0.1, seed=3)


def _three_digits(cfg):
    """Digits 0, 1, 2 only (train and test), prepared by the recipe's own pipeline."""
    from spikedriven.training.data import build_datasets

    r = resolve_recipe({k: v for k, v in cfg.items() if not k.startswith("max_")})
    return {k: [s for s in (ds[i] for i in range(len(ds))) if s[1] < 3] for k, ds in build_datasets(r).items()}


def _v2(cfg):
    cfg = {k: v for k, v in cfg.items() if k not in ("dim", "layer", "num_heads", "time_steps", "img_size",
                                                     "pooling_stat")}
    return dict(cfg, model="sdt_v2_digits_8_64", embed_dims=[8, 8, 16, 16], max_train_samples=48)


def _finetuner(tmp_path, cfg, base_epochs=2, **ft):
    """(trainer fine-tuning a 10-class base run on digits 0-2, the base checkpoint's state_dict, its lines)."""
    base = train(dict(cfg, epochs=base_epochs), output=str(tmp_path), experiment="base", print_fn=lambda *_: None)
    ck = Path(base["run_dir"]) / "last.pt"
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        r = resolve_recipe(dict(cfg, **{"num_classes": 3, "epochs": 3, "max_train_samples": None,
                                        "max_eval_samples": None, "initial_checkpoint": str(ck),
                                        "output": str(tmp_path), "experiment": "ft", **ft}))
    trainer = Trainer(r, datasets=_three_digits(cfg), print_fn=lines.append)
    return trainer, torch.load(ck, map_location="cpu", weights_only=True)["state_dict"], lines


def _starts_from_backbone(trainer, base_sd, head_keys=("head",)):
    own = trainer.model.state_dict()
    backbone = [k for k in own if k.split(".")[0] not in head_keys]
    assert len(backbone) > 20 and all(torch.equal(own[k], base_sd[k]) for k in backbone)
    for h in head_keys:
        assert own[f"{h}.weight"].shape[0] == 3 and base_sd[f"{h}.weight"].shape[0] == 10


def test_finetuning_run_learns_a_new_three_class_task(tmp_path):
    trainer, base_sd, lines = _finetuner(tmp_path, TINY)
    try:
        _starts_from_backbone(trainer, base_sd)  # before any step: the checkpoint's backbone, a new head
        ft = trainer.fit()
    finally:
        trainer.close()
    note = [ln for ln in lines if ln.startswith("fine-tuning:")]
    assert len(note) == 1 and "10 classes" in note[0] and "has 3" in note[0], lines
    # the new task is learnt well above chance (1/3) in three short epochs
    assert ft["top1"] > 60.0, ft["top1"]


def test_v2_finetuning_trainer_starts_from_the_backbone(tmp_path):
    trainer, base_sd, lines = _finetuner(tmp_path, _v2(TINY), base_epochs=1)
    try:
        _starts_from_backbone(trainer, base_sd)
    finally:
        trainer.close()


@pytest.mark.slow
def test_v2_finetuning_run_learns(tmp_path):
    """V2 (digits_v2 widths): the training loss of the 3-class task falls well below chance level ln 3 = 1.10."""
    cfg = dict(_v2(TINY), embed_dims=[16, 32, 64, 80], lr=5e-3, warmup_epochs=0, max_train_samples=128)
    trainer, base_sd, lines = _finetuner(tmp_path, cfg, base_epochs=1)
    try:
        _starts_from_backbone(trainer, base_sd)
        ft = trainer.fit()
    finally:
        trainer.close()
    assert ft["train_loss"] < 0.9, ft["train_loss"]


def _yaml(v):
    return "null" if v is None else f'"{v}"' if isinstance(v, str) else str(v)


def test_cli_init_from_with_other_classes_names_the_head(tmp_path, capsys):
    from spikedriven.cli import main

    base = train(dict(TINY, epochs=1), output=str(tmp_path), experiment="base", print_fn=lambda *_: None)
    ck = Path(base["run_dir"]) / "last.pt"
    args = ["train", "--output", str(tmp_path), "--experiment", "ft", "--init-from", str(ck), "--num-classes",
            "12", "--epochs", "1"] + [a for k, v in TINY.items() if k not in ("epochs",)
                                      for a in ("--set", f"{k}={_yaml(v)}")]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("fine-tuning:")]
    assert len(line) == 1 and "trained for 10 classes, the model has 12" in line[0] and "(head)" in line[0]
