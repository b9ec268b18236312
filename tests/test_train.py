"""Training: exact resume after an interrupt, recipe paths (mixup, EMA, TET) and a 2-process gloo run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikedriven.checkpoint import load_checkpoint
from spikedriven.train import train

TINY = dict(dim=32, layer=1, epochs=2, warmup_epochs=0, max_train_samples=128, max_eval_samples=64, batch_size=32,
            val_batch_size=64, summary=False)


def _weights(run_dir):
    sd, _ = load_checkpoint(Path(run_dir) / "last.pt")
    return sd


def test_resume_after_interrupt_is_bit_identical(tmp_path):
    full = train("digits", output=str(tmp_path / "a"), print_fn=lambda *a: None, **TINY)
    cut = train("digits", output=str(tmp_path / "b"), print_fn=lambda *a: None, stop_after_steps=5, **TINY)
    assert cut.get("stopped")
    resumed = train("digits", output=str(tmp_path / "b"), print_fn=lambda *a: None, resume=str(cut["run_dir"]),
                    **TINY)
    a, b = _weights(full["run_dir"]), _weights(resumed["run_dir"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full["top1"] == resumed["top1"]


def test_run_folder_contents(tmp_path):
    res = train("digits", output=str(tmp_path), print_fn=lambda *a: None, **{**TINY, "epochs": 1})
    names = {p.name for p in Path(res["run_dir"]).iterdir()}
    assert {"config.yaml", "metrics.csv", "tb", "last.pt", "best.pt", "best.safetensors", "curve.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]


@pytest.mark.parametrize("extra", [dict(mixup=0.8, cutmix=1.0), dict(model_ema=True, model_ema_decay=0.9),
                                   dict(TET=True, TET_lamb=0.001, TET_means=1.0)])
def test_recipe_paths_train_and_change_weights(tmp_path, extra):
    res = train("digits", output=str(tmp_path), print_fn=lambda *a: None, **{**TINY, "epochs": 1}, **extra)
    sd, meta = load_checkpoint(Path(res["run_dir"]) / "last.pt")
    assert all(torch.isfinite(v.float()).all() for v in sd.values())
    if extra.get("model_ema"):
        ema, _ = load_checkpoint(Path(res["run_dir"]) / "last.pt", use_ema=True)
        assert not torch.equal(ema["head.weight"], sd["head.weight"])  # EMA lags the live weights


DDP_SCRIPT = """
import os, sys, torch
from spikedriven.train import train
from spikedriven.training.loop import unwrap
res = train("digits", output=sys.argv[1], print_fn=lambda *a: None, dim=32, layer=1, epochs=1, warmup_epochs=0,
            max_train_samples=128, max_eval_samples=64, batch_size=16, val_batch_size=64, summary=False)
m = unwrap(res["trainer"].model)
torch.save({k: v.detach().cpu() for k, v in m.state_dict().items()},
           os.path.join(sys.argv[1], f"rank{os.environ['RANK']}_weights.pt"))
"""


def test_two_process_gloo_ranks_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"rank{r}_weights.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys()
    differ = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    # parameters are all-reduced every step; BN running statistics are per-rank between DDP's buffer broadcasts
    assert all("running_" in k or "num_batches" in k for k in differ), differ
    assert not [k for k in differ if "running_" not in k and "num_batches" not in k]
    assert any(w0[k].abs().sum() > 0 for k in w0 if k.endswith("weight"))
