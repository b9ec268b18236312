"""benchmarks/gpu_check.py runs on a CPU with --quick (the same code paths the GPU run takes, tiny models), and the
event engine refuses non-CPU devices with one clear line."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import spikedriven as sd

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("kernels", "sdt_8_512", "sdt_v2_8_512", "sdt_cifar10_2_512", "checks", "sdt_8_512 torch.compile",
            "published")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads(out.read_text()), wall


def rows(report, section):
    return report["sections"][section]["rows"]


def row(report, section, name):
    found = [r for r in rows(report, section) if r["name"] == name]
    assert found, f"no row {name!r} in {section}: {[r['name'] for r in rows(report, section)]}"
    return found[0]


def test_quick_run_passes_and_writes_every_section(quick_run):
    r, report, wall = quick_run
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert report["ok"] and report["failures"] == []
    assert set(SECTIONS) <= set(report["sections"])
    assert report["meta"]["device"] == "cpu" and report["meta"]["quick"] is True
    assert "FAIL" not in {x["status"] for s in report["sections"].values() for x in s["rows"]}
    assert "section            check / measurement" in r.stdout  # the final table
    print(f"gpu_check --device cpu --quick: {wall:.1f} s")


def test_agreement_rows_pass(quick_run):
    _, report, _ = quick_run
    for sec in ("sdt_8_512", "sdt_cifar10_2_512"):
        a = row(report, sec, "fast vs reference: loss and gradients (fp32)")
        assert a["status"] == "PASS", a["detail"]
        assert a["loss_rel_diff"] <= a["loss_tol"] and a["grad_max_rel_diff"] <= a["grad_tol"]
        assert a["batch"] == 2 and a["noise_floor_grad"] is not None
        assert "--quick stand-in" in row(report, sec, "configuration")["detail"]


def test_throughput_and_eval_rows(quick_run):
    _, report, _ = quick_run
    for sec in ("sdt_8_512", "sdt_cifar10_2_512"):
        for name in ("train reference fp32", "train fast fp32", "train fast bf16", "eval reference fp32",
                     "eval fast fp32 (BN folded)", "eval fast bf16 (BN folded)"):
            x = row(report, sec, name)
            assert x["status"] == "INFO" and x["img_s"] > 0 and x["batch"] == 2, x
    assert row(report, "sdt_8_512 torch.compile", "train fast fp32 torch.compile")["status"] == "SKIP"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the Triton rows run on a CUDA machine")
def test_kernel_rows_on_cpu(quick_run):
    _, report, _ = quick_run
    ks = rows(report, "kernels")
    triton = [x for x in ks if x["name"].startswith("triton ")]
    assert len(triton) == 4 and all(x["status"] == "SKIP" and "needs CUDA" in x["detail"] for x in triton)
    from spikedriven.kernels import available_backends

    if available_backends()["cpp"]:  # the same comparison runs on the C++ kernel
        cpp = [x for x in ks if x["name"].startswith("cpp ")]
        assert len(cpp) == 4 and all(x["status"] == "PASS" and x["spikes_differ"] == 0 for x in cpp)


def test_device_checks(quick_run):
    _, report, _ = quick_run
    for name in ("channels_last holds (conv inputs after the first)", "spike convs save uint8 (fp32)",
                 "spike convs save uint8 (bf16)", "bf16 autocast keeps the neuron state fp32",
                 "event engine refuses non-CPU devices clearly", "DDP under torchrun uses gloo"):
        assert row(report, "checks", name)["status"] == "PASS", row(report, "checks", name)["detail"]


def test_v2_and_published(quick_run):
    _, report, _ = quick_run
    v2 = rows(report, "sdt_v2_8_512")
    if "sdt_v2_8_512" not in sd.list_models():
        assert v2[0]["status"] == "SKIP" and "not available in this version" in v2[0]["detail"]
    pub = row(report, "published", "official sdt_8_512")
    assert abs(pub["img_s_per_gpu"] - 1_281_167 / 1200 / 8) < 1e-6
    assert "issues/8" in pub["detail"] and "assumes" in pub["detail"]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_failing_section_does_not_stop_the_others_and_sets_the_exit_status(tmp_path, monkeypatch):
    gc = _load_script()

    def broken(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(gc, "section_kernels", broken)
    monkeypatch.setattr(gc, "LOSS_TOL", -1.0)  # every loss comparison now fails
    monkeypatch.setattr(gc, "TOL_CAP", -1.0)
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    try:
        rc = gc.main(["--device", "cpu", "--quick", "--threads", "1", "--sections", "kernels", "v1",
                      "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 1
    report = json.loads(out.read_text())
    assert row(report, "kernels", "section aborted")["detail"] == "RuntimeError: simulated crash"
    assert row(report, "sdt_8_512", "fast vs reference: loss and gradients (fp32)")["status"] == "FAIL"
    assert row(report, "sdt_8_512", "train fast fp32")["status"] == "INFO"  # the section went on
    assert set(report["failures"]) == {"kernels: section aborted",
                                       "sdt_8_512: fast vs reference: loss and gradients (fp32)"}


# ------------------------------------------------------------------ the engine is CPU-only, and says so
def _tiny():
    return sd.create_model("sdt_cifar10_2_256", embed_dim=64, T=2)


def test_engine_refuses_a_model_off_the_cpu():
    from spikedriven.engine import compile_model

    with pytest.raises(ValueError, match="CPU engine") as e:
        compile_model(_tiny().to("meta"))
    msg = str(e.value)
    assert "\n" not in msg and "meta" in msg and "copy.deepcopy(model).cpu()" in msg


def test_engine_refuses_an_input_off_the_cpu():
    pytest.importorskip("numba")
    from spikedriven.engine import compile_model

    eng = compile_model(_tiny(), backend="numba")
    with pytest.raises(ValueError, match="CPU engine") as e:
        eng.run(torch.zeros(1, 3, 32, 32, device="meta"))
    assert "\n" not in str(e.value) and "x.cpu()" in str(e.value)
