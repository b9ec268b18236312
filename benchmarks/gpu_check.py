"""One-call device check (issue 16): fused kernels, fast-vs-reference agreement and throughput on a GPU.

Built to run once, unattended, on a machine that has no network (torch + triton + numba installed, this
repository copied there): every section has its own try/except, a row per result is printed as soon as it is
known, and the JSON (``--json``, default ``gpu_check.json``) is rewritten after every section, so a run that is
cut short still leaves what it measured. Exit status 1 if any correctness row FAILs, 0 otherwise.

    python benchmarks/gpu_check.py                              # CUDA if present (~4-6 min on one H200)
    python benchmarks/gpu_check.py --device cpu --quick         # tiny configs, the same code paths (~30 s)

Sections:
  kernels   fused LIF / PLIF (Triton on CUDA; the C++ kernel on CPU) vs the reference loop, fp32 and bf16,
            forward and backward: spikes identical, gradients within tolerance; ms and elements/s of both
  sdt_8_512, sdt_v2_8_512, sdt_cifar10_2_512
            one batch through the fast path (defaults) and the reference path (lif_backend="torch",
            channels_last=False, compact_spikes=False), same weights and input: loss and gradient agreement
            (TF32 off, a float64 reference run gives the rounding noise floor); training img/s in fp32, bf16
            autocast, fp16 autocast + GradScaler (CUDA) and torch.compile (subprocess, time-boxed); peak GPU
            memory; evaluation img/s with BN folded (prepare_inference + inference_mode)
  published figures from the official repositories' issue trackers, converted to img/s per GPU
  checks    channels_last holds, spike convs save uint8, bf16 autocast keeps the neuron state fp32, DDP picks
            NCCL under torchrun, the event engine refuses CUDA with a clear error
Row status: PASS / FAIL (correctness), INFO (a measurement), SKIP (cannot run here, with the reason), ERROR (a
measurement that raised; it does not change the exit status).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench_throughput (count_flops)
try:
    import spikedriven  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import spikedriven as sd  # noqa: E402
from bench_throughput import count_flops  # noqa: E402

IMAGENET_TRAIN_IMAGES = 1_281_167
CIFAR_TRAIN_IMAGES = 50_000

# Per-GPU batch sizes of the official recipes (V1 conf/imagenet/8_512_300E_t4.yml and cifar10/2_512_300E_t4.yml;
# V2 classification/train.sh and train_finetune_from_t1_to_t4.sh).
V1 = dict(name="sdt_8_512", kw={}, img=224, batch=48, recipe="V1 ImageNet 8-512 recipe: 48 per GPU, T=4")
V2 = [dict(name="sdt_v2_8_512", kw={"T": 1}, img=224, batch=128, recipe="V2 pre-training: 128 per GPU, T=1",
           quick_keeps_name=True),
      dict(name="sdt_v2_8_512", kw={"T": 4}, img=224, batch=24, recipe="V2 fine-tuning: 24 per GPU, T=4",
           quick_keeps_name=True)]
CIFAR = dict(name="sdt_cifar10_2_512", kw={}, img=32, batch=64, recipe="V1 CIFAR-10 2-512 recipe: batch 64, T=4")
QUICK = dict(name="sdt_cifar10_2_256", kw={"embed_dim": 64, "T": 2}, img=32, batch=2)
CHECK_BATCH = 4  # structural checks (layouts, saved tensors, autocast) on the full-size model

PUBLISHED = [
    dict(model="sdt_8_512", source="https://github.com/BICLab/Spike-Driven-Transformer/issues/8",
         quote="20 min/epoch for dim 512, 8 layers, on 8 x A800 (maintainer, 2024-01-18)",
         minutes_per_epoch=20.0, gpus=8, gpu="A800", epochs=1,
         assumption="20 min is the training pass of one ImageNet-1k epoch (1,281,167 images) at the recipe's 48 "
                    "per GPU, T=4, fp16 AMP (amp: true in the official conf), spread evenly over the 8 GPUs; "
                    "data loading and any evaluation are inside those 20 min"),
    dict(model="sdt_v2 15M, T=1", source="https://github.com/BICLab/Spike-Driven-Transformer-V2/issues/9",
         quote="8 x A100, 22 h for the 15M (T=1) model training (maintainer, 2024-08-23)",
         minutes_per_epoch=None, gpus=8, gpu="A100", hours_total=22.0, epochs=200,
         assumption="200 epochs (the --epochs of the repository's classification/train.sh, written for the 55M "
                    "model; the issue does not give the epoch count), evaluation included in the 22 h"),
]


# ================================================================================================ report
class Report:
    """Rows (printed as they arrive) grouped by section; the JSON is rewritten after every section."""

    def __init__(self, path: str, meta: dict):
        self.path, self.meta = path, meta
        self.rows: list[dict] = []
        self.sections: dict[str, dict] = {}
        self.t0 = time.perf_counter()

    def add(self, section: str, name: str, status: str, detail: str = "", **metrics) -> dict:
        row = dict(section=section, name=name, status=status, detail=detail,
                   at_s=round(time.perf_counter() - self.t0, 2), **metrics)
        self.rows.append(row)
        self.sections.setdefault(section, dict(rows=[], wall_s=None))["rows"].append(row)
        print(f"  {status:5s} {name:44s} {detail}  [{row['at_s']:.0f} s]", flush=True)
        return row

    @contextlib.contextmanager
    def guard(self, section: str, name: str, correctness: bool):
        """Run a block; an exception becomes one FAIL (correctness) or ERROR (measurement) row, not a crash."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the run
            self.add(section, name, "FAIL" if correctness else "ERROR", one_line(exc),
                     traceback=traceback.format_exc(limit=6)[-3000:])
        finally:
            free_memory()

    def section(self, section: str, fn, *args) -> None:
        print(f"\n== {section}", flush=True)
        self.sections.setdefault(section, dict(rows=[], wall_s=None))
        t = time.perf_counter()
        with self.guard(section, "section aborted", correctness=True):
            fn(self, section, *args)
        self.sections[section]["wall_s"] = round(time.perf_counter() - t, 2)
        self.save()

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "FAIL"]

    def save(self) -> None:
        self.meta["wall_s"] = round(time.perf_counter() - self.t0, 2)
        fails = [f"{r['section']}: {r['name']}" for r in self.failures]
        out = dict(meta=self.meta, ok=not fails, failures=fails, sections=self.sections)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1, default=str)
        os.replace(tmp, self.path)

    def table(self) -> str:
        lines = [f"{'section':18s} {'check / measurement':44s} {'status':6s} detail"]
        lines += [f"{r['section']:18s} {r['name']:44s} {r['status']:6s} {r['detail']}" for r in self.rows]
        return "\n".join(lines)


def one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:400]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


# ================================================================================================ helpers
class Ctx:
    """Run-wide settings: device, quick mode, time budget."""

    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.quick = args.quick
        self.deadline = time.perf_counter() + args.budget
        self.compile = args.compile if args.compile != "auto" else ("off" if args.quick else "on")
        self.steps, self.warmup = (1, 1) if args.quick else (args.steps, 2)
        self.json = args.json
        threads = args.threads if args.threads is not None else (1 if args.quick and not self.cuda else None)
        if threads:  # --quick on a shared 2-core CPU: 2 threads against other work stall (measured 5-50x)
            torch.set_num_threads(threads)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def cfg(self, cfg: dict) -> dict:
        """The configuration actually run: the full one, or the tiny stand-in with --quick."""
        if not self.quick:
            return dict(cfg, stand_in=None)
        name = cfg["name"] if cfg.get("quick_keeps_name") else QUICK["name"]  # V2: its own family, made tiny
        return dict(cfg, name=name, kw={**QUICK["kw"], **{k: v for k, v in cfg["kw"].items() if k != "T"}},
                    img=QUICK["img"], batch=QUICK["batch"],
                    stand_in=f"--quick stand-in for {cfg['name']}: {name} {QUICK['kw']}, {QUICK['img']} px")

    def amp(self, precision: str):
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)


def timed(ctx: Ctx, fn, reps: int, warmup: int = 1, trials: int = 1) -> float:
    """Seconds per call: ``warmup`` calls, then the best of ``trials`` runs of ``reps`` calls, wall time between
    device synchronisations (so on CUDA the queued kernels are included, not just their launches)."""
    for _ in range(warmup):
        fn()
    ctx.sync()
    best = math.inf
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        ctx.sync()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def fast_backend(ctx: Ctx) -> str | None:
    """The fused backend the fast path uses on this device, or None (then kernel rows are skipped)."""
    from spikedriven.kernels import lif_multistep

    want = "triton" if ctx.cuda else "cpp"
    try:
        lif_multistep(torch.zeros(2, 8, device=ctx.device), backend=want)
        return want
    except Exception:  # noqa: BLE001
        return None


def build(ctx: Ctx, cfg: dict, path: str = "fast", seed: int = 0):
    torch.manual_seed(seed)
    model = sd.create_model(cfg["name"], **cfg["kw"]).to(ctx.device)
    if path == "reference":
        model.set_execution(lif_backend="torch", channels_last=False, compact_spikes=False)
    return model


def batch_for(ctx: Ctx, model, cfg: dict, batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.in_channels, cfg["img"], cfg["img"], generator=g).to(ctx.device)
    y = torch.randint(0, max(model.num_classes, 1), (batch,), generator=g).to(ctx.device)
    return x, y


def with_oom_fallback(ctx: Ctx, batch: int, fn):
    """``fn(batch)``; on CUDA OOM retry with half the batch. Returns (result, batch used, note)."""
    notes = []
    b = batch
    while True:
        try:
            return fn(b), b, "; ".join(notes)
        except OOM:
            if b <= 1:
                raise
            notes.append(f"batch {b} ran out of memory, fell back to {max(1, b // 2)}")
            b = max(1, b // 2)
        free_memory()  # outside the except block: the failed attempt's frames (and tensors) are released by now


@contextlib.contextmanager
def strict_fp32(ctx: Ctx):
    """TF32 off and deterministic cuDNN while comparing numerics; restored afterwards."""
    if not ctx.cuda:
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def peak_mb(ctx: Ctx) -> float | None:
    return round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1) if ctx.cuda else None


def reset_peak(ctx: Ctx) -> None:
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)


def fmt_n(n: float) -> str:
    for unit, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.3g}{unit}"
    return f"{n:.3g}"


# ================================================================================================ 1. kernels
def kernel_shapes(ctx: Ctx) -> list[tuple]:
    if ctx.quick:
        return [(2, 2, 64, 8, 8)]
    # SDT 8-512 at 224 px, batch 48, T=4: a block-stage activation (512 x 14 x 14) and the first stem stage
    return [(4, 48, 512, 14, 14), (4, 48, 64, 112, 112)]


def section_kernels(rep: Report, sec: str, ctx: Ctx) -> None:
    from spikedriven.kernels import lif_multistep, plif_multistep

    fused = fast_backend(ctx)
    if not ctx.cuda:
        for neuron in ("lif", "plif"):
            for prec in ("fp32", "bf16"):
                rep.add(sec, f"triton {neuron} {prec}", "SKIP", "skipped: needs CUDA")
        if fused is None:
            rep.add(sec, "cpp kernels", "SKIP", "the C++ CPU kernel did not build here")
            return
        rep.add(sec, "fused backend on this device", "INFO", "cpp (CPU): the same comparison, run on the C++ kernel")
    elif fused is None:
        rep.add(sec, "triton available", "FAIL", "Triton kernels cannot run on this CUDA device: the fast path "
                                                 "falls back to the reference loop")
        return
    else:
        import triton

        rep.add(sec, "triton available", "PASS", f"triton {triton.__version__}")
    tol = {"fp32": 1e-5, "bf16": 1e-2}  # max |grad diff| / max |grad|: fp32 ~1e-7 expected, bf16 = 1 ulp of output
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for neuron in ("lif", "plif"):
        for prec, dtype in dtypes.items():
            for shape in kernel_shapes(ctx):
                name = f"{fused} {neuron} {prec} {list(shape)}"
                with rep.guard(sec, name, correctness=True):
                    kernel_row(rep, sec, ctx, name, neuron, dtype, shape, fused, tol[prec],
                               lif_multistep, plif_multistep)


def kernel_row(rep, sec, ctx, name, neuron, dtype, shape, fused, tol, lif_multistep, plif_multistep):
    g = torch.Generator(device=ctx.device).manual_seed(0)
    x = (torch.randn(shape, device=ctx.device, generator=g) * 1.5 + 1.0).to(dtype)
    gout = torch.randn(shape, device=ctx.device, generator=g).to(dtype)
    w0 = torch.tensor(-0.3, device=ctx.device)

    def call(xx, backend, w=None):
        if neuron == "lif":
            return lif_multistep(xx, backend=backend)
        return plif_multistep(xx, w, backend=backend)

    with torch.no_grad():
        s_fast, s_ref = call(x, fused, w0), call(x, "torch", w0)
    differ = int((s_fast != s_ref).sum())
    rate = float(s_ref.float().mean())
    grads = {}
    for backend in (fused, "torch"):
        xg = x.clone().requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        call(xg, backend, w).backward(gout)
        grads[backend] = (xg.grad.float(), w.grad.float() if neuron == "plif" else None)
    gx_f, gw_f = grads[fused]
    gx_r, gw_r = grads["torch"]
    gmax = float(gx_r.abs().max())
    dgx = float((gx_f - gx_r).abs().max())
    ok = differ == 0 and dgx <= tol * max(gmax, 1e-30) and bool(torch.isfinite(gx_f).all())
    detail = f"spikes identical: {differ == 0} ({differ} of {fmt_n(x.numel())} differ, rate {rate:.2f}); " \
             f"max|dgrad_x| {dgx:.2e} (max|grad| {gmax:.2e}, tol {tol:g} x max)"
    extra = {}
    if neuron == "plif":
        dgw = float((gw_f - gw_r).abs()) / max(float(gw_r.abs()), 1e-30)
        ok = ok and dgw <= 1e-3
        detail += f"; rel dgrad_w {dgw:.2e} (tol 1e-3)"
        extra["rel_diff_grad_w"] = dgw
    del grads, s_fast, s_ref

    # throughput: forward (no grad) and forward+backward, both backends
    times = {}
    reps = 3 if ctx.quick else 5
    for backend in (fused, "torch"):
        with torch.no_grad():
            times[f"fwd_ms_{backend}"] = 1e3 * timed(ctx, lambda: call(x, backend, w0), reps, trials=2)
        xg = x.clone().requires_grad_(True)
        w = w0.clone().requires_grad_(True)

        def fb():
            xg.grad = None
            w.grad = None
            call(xg, backend, w).backward(gout)

        times[f"fwdbwd_ms_{backend}"] = 1e3 * timed(ctx, fb, reps, trials=2)
    n = x.numel()
    tp = {k.replace("_ms_", "_elem_per_s_"): n / (v / 1e3) for k, v in times.items()}
    detail += (f"; fwd {times[f'fwd_ms_{fused}']:.3f} vs {times['fwd_ms_torch']:.3f} ms "
               f"({fmt_n(tp[f'fwd_elem_per_s_{fused}'])} vs {fmt_n(tp['fwd_elem_per_s_torch'])} elem/s), "
               f"fwd+bwd {times[f'fwdbwd_ms_{fused}']:.3f} vs {times['fwdbwd_ms_torch']:.3f} ms")
    rep.add(sec, name, "PASS" if ok else "FAIL", detail, spikes_differ=differ, max_abs_diff_grad_x=dgx,
            max_abs_grad_x=gmax, tol_rel_to_max=tol, numel=n, **times, **tp, **extra)


# ================================================================================================ 2. models
def grads_of(model) -> dict:
    return {n: p.grad.detach().double().clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_and_grads(model, x, y) -> tuple[float, dict]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    out = float(loss.detach()), grads_of(model)
    model.zero_grad(set_to_none=True)
    return out


def compare(a: tuple, b: tuple) -> tuple[float, float, str, float]:
    """(loss rel diff, max over parameter tensors of ||ga - gb|| / max(||gb||, 1e-2 max_t ||gb_t||), that tensor,
    global ||ga - gb|| / ||gb|| over all parameters).

    The floor keeps gradients that are zero up to rounding (the bias of a conv followed by a training-mode BN)
    from dividing rounding noise by rounding noise."""
    (la, ga), (lb, gb) = a, b
    if set(ga) != set(gb):
        raise AssertionError(f"different parameters received gradients: {sorted(set(ga) ^ set(gb))[:4]}")
    loss_rel = abs(la - lb) / max(abs(lb), 1e-30)
    norms = {n: float(g.norm()) for n, g in gb.items()}
    diffs = {n: float((ga[n] - gb[n]).norm()) for n in gb}
    floor = 1e-2 * max(norms.values(), default=0.0)
    worst, worst_name = 0.0, ""
    for n in gb:
        den = max(norms[n], floor)
        rel = diffs[n] / den if den > 0 else (0.0 if diffs[n] == 0 else math.inf)
        if rel > worst:
            worst, worst_name = rel, n
    total = math.sqrt(sum(v * v for v in norms.values()))
    glob = math.sqrt(sum(v * v for v in diffs.values())) / total if total > 0 else 0.0
    return loss_rel, worst, worst_name, glob


LOSS_TOL, GRAD_TOL, TOL_CAP = 1e-4, 1e-3, 5e-2


def agreement(rep: Report, sec: str, ctx: Ctx, cfg: dict) -> None:
    """Fast vs reference (fp32, TF32 off), with a float64 reference run as the rounding noise floor."""

    def run(b):
        with strict_fp32(ctx):
            fast = build(ctx, cfg, "fast")
            ref = copy.deepcopy(fast).set_execution(lif_backend="torch", channels_last=False, compact_spikes=False)
            x, y = batch_for(ctx, fast, cfg, b)
            r_fast = loss_and_grads(fast, x, y)
            del fast
            free_memory()
            r_ref = loss_and_grads(ref, x, y)
            # float64 copy of the reference (its neuron state stays fp32): how much fp32 rounding alone moves the
            # result. Out of memory here retries the whole comparison with a smaller batch (same batch for all three)
            ref64 = copy.deepcopy(ref).double()
            del ref
            free_memory()
            r64 = loss_and_grads(ref64, x.double(), y)
            del ref64
            return r_fast, r_ref, compare(r_ref, r64)

    (r_fast, r_ref, noise), b, note = with_oom_fallback(ctx, cfg["batch"], run)
    loss_rel, grad_rel, gname, grad_global = compare(r_fast, r_ref)
    # spike flips caused by conv rounding alone set the floor (10x the fp32-vs-fp64 distance of the reference,
    # capped); a real bug moves the loss or a gradient by O(1)
    loss_tol = min(TOL_CAP, max(LOSS_TOL, 10 * noise[0]))
    grad_tol = min(TOL_CAP, max(GRAD_TOL, 10 * noise[1]))
    ok = loss_rel <= loss_tol and grad_rel <= grad_tol and math.isfinite(r_fast[0])
    detail = (f"batch {b}: loss {r_fast[0]:.6f} vs {r_ref[0]:.6f}, rel diff {loss_rel:.2e} (tol {loss_tol:.1e}); "
              f"max rel grad diff {grad_rel:.2e} (tol {grad_tol:.1e}, worst {gname}; all parameters "
              f"{grad_global:.1e})")
    detail += f"; fp32-vs-fp64 reference noise floor: loss {noise[0]:.1e}, grads {noise[1]:.1e}"
    if note:
        detail += f"; {note}"
    rep.add(sec, "fast vs reference: loss and gradients (fp32)", "PASS" if ok else "FAIL", detail,
            batch=b, loss_fast=r_fast[0], loss_ref=r_ref[0], loss_rel_diff=loss_rel, grad_max_rel_diff=grad_rel,
            grad_worst_param=gname, grad_global_rel_diff=grad_global, loss_tol=loss_tol, grad_tol=grad_tol,
            noise_floor_loss=noise[0], noise_floor_grad=noise[1],
            grad_metric="per parameter tensor ||g_fast - g_ref|| / max(||g_ref||, 1e-2 x largest tensor norm), max "
                        "over tensors", oom_note=note,
            tf32=False)


def train_step_fn(ctx: Ctx, model, x, y, precision: str):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and ctx.cuda else None

    def step():
        with ctx.amp(precision):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def measure_train(ctx: Ctx, cfg: dict, path: str, precision: str, batch: int, compile_model: bool = False) -> dict:
    model = build(ctx, cfg, "reference" if path == "reference" else "fast")
    if path == "compile-torch-lif":
        model.set_execution(lif_backend="torch")
    for n, p in model.named_parameters():
        if n.endswith("talking_heads.weight"):
            p.requires_grad_(False)  # never used in the forward (as the trainer does)
    x, y = batch_for(ctx, model, cfg, batch)
    run_model = model
    if compile_model:
        run_model = torch.compile(model)
    step = train_step_fn(ctx, run_model, x, y, precision)
    reset_peak(ctx)
    t = time.perf_counter()
    step()  # first step: cuDNN autotuning, kernel JIT, (compile)
    ctx.sync()
    first_s = time.perf_counter() - t
    dt = timed(ctx, step, ctx.steps, warmup=ctx.warmup - 1)
    out = dict(img_s=batch / dt, ms_step=1e3 * dt, first_step_s=first_s, peak_mem_mb=peak_mb(ctx), batch=batch)
    if compile_model:
        with contextlib.suppress(Exception):
            from torch._dynamo.utils import counters

            out["graph_breaks"] = int(sum(counters["graph_break"].values()))
    return out


def measure_eval(ctx: Ctx, cfg: dict, path: str, precision: str, batch: int) -> dict:
    from spikedriven.inference import prepare_inference

    model = build(ctx, cfg, "reference" if path == "reference" else "fast")
    m = model.eval() if path == "reference" else prepare_inference(model)
    x, _ = batch_for(ctx, model, cfg, batch)
    reset_peak(ctx)
    with torch.inference_mode(), ctx.amp(precision):
        dt = timed(ctx, lambda: m(x), ctx.steps, warmup=ctx.warmup)
    return dict(img_s=batch / dt, ms_batch=1e3 * dt, peak_mem_mb=peak_mb(ctx), batch=batch)


def precisions(ctx: Ctx) -> list[str]:
    return ["fp32", "bf16", "fp16"] if ctx.cuda else ["fp32", "bf16"]


def section_model(rep: Report, sec: str, ctx: Ctx, cfg: dict) -> None:
    cfg = ctx.cfg(cfg)
    if cfg["stand_in"]:
        rep.add(sec, "configuration", "INFO", cfg["stand_in"])
    rep.add(sec, "batch of the official recipe", "INFO", cfg["recipe"] + (" (quick: batch 2)" if ctx.quick else ""))
    with rep.guard(sec, "fast vs reference: loss and gradients (fp32)", correctness=True):
        agreement(rep, sec, ctx, cfg)
    gflop = None
    with rep.guard(sec, "forward GFLOP per image", correctness=False):
        m = build(ctx, cfg)
        x1, _ = batch_for(ctx, m, cfg, 1)
        gflop = count_flops(m, x1) / 1e9
        del m
        rep.add(sec, "forward GFLOP per image", "INFO", f"{gflop:.2f} (2 x MACs of every conv / linear call)",
                gflop_fwd_per_img=gflop)

    results = {}
    runs = [("reference", "fp32")] + [("fast", p) for p in precisions(ctx)]
    for path, prec in runs:
        name = f"train {path} {prec}"
        with rep.guard(sec, name, correctness=False):
            r, b, note = with_oom_fallback(ctx, cfg["batch"], lambda b: measure_train(ctx, cfg, path, prec, b))
            results[(path, prec)] = r
            rep.add(sec, name, "INFO", train_detail(r, gflop, note, results.get(("reference", "fp32"))),
                    path=path, precision=prec, oom_note=note, **r,
                    tflop_s=None if gflop is None else 3 * gflop * r["img_s"] / 1e3)
    for path, prec in [("reference", "fp32"), ("fast", "fp32"), ("fast", "bf16")]:
        name = f"eval {path} {prec}" + (" (BN folded)" if path == "fast" else "")
        with rep.guard(sec, name, correctness=False):
            r, b, note = with_oom_fallback(ctx, cfg["batch"], lambda b: measure_eval(ctx, cfg, path, prec, b))
            results[("eval", path, prec)] = r
            ref = results.get(("eval", "reference", "fp32"))
            detail = f"{r['img_s']:.1f} img/s (batch {b}, {r['ms_batch']:.1f} ms)"
            if ref and path != "reference":
                detail += f", x{r['img_s'] / ref['img_s']:.2f} vs reference"
            if r["peak_mem_mb"] is not None:
                detail += f", peak {r['peak_mem_mb']:.0f} MiB"
            rep.add(sec, name, "INFO", detail + (f"; {note}" if note else ""), path=path, precision=prec,
                    oom_note=note, **r)
    rep.sections[sec]["results"] = {" ".join(k): v for k, v in results.items()}


def train_detail(r: dict, gflop: float | None, note: str, ref: dict | None) -> str:
    d = f"{r['img_s']:.1f} img/s (batch {r['batch']}, {r['ms_step']:.1f} ms/step"
    if gflop is not None:
        d += f", {fmt_n(3 * gflop * 1e9 * r['img_s'])}FLOP/s"
    d += ")"
    if ref and ref is not r:
        d += f", x{r['img_s'] / ref['img_s']:.2f} vs reference fp32"
    if r.get("peak_mem_mb") is not None:
        d += f", peak {r['peak_mem_mb']:.0f} MiB"
    if "graph_breaks" in r:
        d += f", first step {r['first_step_s']:.0f} s, {r['graph_breaks']} graph breaks"
    return d + (f"; {note}" if note else "")


# ------------------------------------------------------------------------------------------------ torch.compile
def compile_section_rows(rep: Report, sec: str, ctx: Ctx, cfg: dict, eager: dict | None, gflop) -> None:
    """torch.compile training rows, each in a time-boxed subprocess (a compile can take minutes or hang)."""
    if ctx.compile == "off":
        rep.add(sec, "train fast fp32 torch.compile", "SKIP", "skipped: compile rows are off (--quick default; "
                                                              "--compile on to run them)")
        return
    for path in ("fast", "compile-torch-lif"):
        name = "train fast fp32 torch.compile" if path == "fast" else "train compile, reference LIF loop, fp32"
        budget = min(240.0, ctx.left() - 20)
        if budget < 60:
            rep.add(sec, name, "SKIP", f"skipped: {max(ctx.left(), 0):.0f} s left of the run's --budget")
            continue
        with rep.guard(sec, name, correctness=False):
            r = run_child(["--_child", "compile", json.dumps(dict(cfg=cfg, path=path, batch=cfg["batch"]))],
                          timeout=budget, ctx=ctx)
            if "error" in r:
                rep.add(sec, name, "ERROR", f"torch.compile failed: {r['error']}", **r)
                continue
            detail = train_detail(r, gflop, r.get("oom_note", ""), None)
            if eager:
                detail += f", x{r['img_s'] / eager['img_s']:.2f} vs eager fast fp32"
            rep.add(sec, name, "INFO", detail, path=path, precision="fp32", **r)


def child_compile(spec: dict, ctx: Ctx) -> dict:
    cfg, path = spec["cfg"], spec["path"]
    try:
        r, b, note = with_oom_fallback(ctx, spec["batch"],
                                       lambda b: measure_train(ctx, cfg, path, "fp32", b, compile_model=True))
        return dict(r, oom_note=note)
    except Exception as exc:  # noqa: BLE001
        return dict(error=one_line(exc), traceback=traceback.format_exc(limit=8)[-3000:])


def run_child(extra: list[str], timeout: float, ctx: Ctx, launcher: list[str] | None = None) -> dict:
    """Run this script (or ``launcher`` + this script) in its own process group; kill the group on timeout.
    The child prints one JSON object as its last stdout line."""
    cmd = (launcher or [sys.executable]) + [str(Path(__file__).resolve()), "--device", str(ctx.device)] + \
        (["--quick"] if ctx.quick else []) + extra
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child and what it started (compile workers, ranks)
        proc.communicate()
        return dict(error=f"timed out after {timeout:.0f} s (killed)")
    for ln in reversed(out.strip().splitlines()):
        if ln.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.JSONDecoder().raw_decode(ln)[0]
    tail = (err or out).strip().splitlines()[-3:]
    return dict(error=f"exit {proc.returncode}, no result: {' | '.join(tail)}"[:600])


# ================================================================================================ 3. published
def section_published(rep: Report, sec: str, ctx: Ctx) -> None:
    measured = rep.sections.get("sdt_8_512", {}).get("results", {})
    for p in PUBLISHED:
        if p["minutes_per_epoch"] is not None:
            per_gpu = IMAGENET_TRAIN_IMAGES / (p["minutes_per_epoch"] * 60) / p["gpus"]
        else:
            per_gpu = IMAGENET_TRAIN_IMAGES * p["epochs"] / (p["hours_total"] * 3600) / p["gpus"]
        detail = f"{per_gpu:.1f} img/s per {p['gpu']} ({p['quote']}); assumes {p['assumption']}; {p['source']}"
        rep.add(sec, f"official {p['model']}", "INFO", detail, img_s_per_gpu=per_gpu, **p)
        if p["model"] != "sdt_8_512":
            rep.add(sec, f"ours vs official {p['model']}", "SKIP",
                    "no measured counterpart: V2 is not available in this version")
            continue
        if ctx.quick:
            rep.add(sec, "ours vs official sdt_8_512", "SKIP", "skipped: --quick runs a stand-in, not sdt_8_512")
            continue
        for key, label in (("fast fp16", "fp16 AMP, as the official recipe"), ("fast bf16", "bf16 autocast"),
                           ("fast fp32", "fp32")):
            r = measured.get(key)
            if r:
                rep.add(sec, f"ours ({key}) vs official sdt_8_512", "INFO",
                        f"{r['img_s']:.1f} vs {per_gpu:.1f} img/s per GPU = x{r['img_s'] / per_gpu:.2f} ({label}; "
                        f"ours: synthetic data on device, no data loading; {ctx.meta_gpu} vs {p['gpu']})",
                        ratio=r["img_s"] / per_gpu, ours_img_s=r["img_s"], official_img_s_per_gpu=per_gpu)
    cif = rep.sections.get("sdt_cifar10_2_512", {}).get("results", {})
    r = cif.get("fast fp32")
    if r:
        rep.add(sec, "sdt_cifar10_2_512 epoch time (ours)", "INFO",
                f"{CIFAR_TRAIN_IMAGES / r['img_s']:.1f} s per 50,000-image epoch at {r['img_s']:.1f} img/s "
                f"(fast fp32, batch {r['batch']}; the official CIFAR recipe trains without AMP); no official CIFAR "
                f"timing was found in the BICLab issue trackers", s_per_epoch=CIFAR_TRAIN_IMAGES / r["img_s"])


# ================================================================================================ 4. checks
def check_cfg(ctx: Ctx) -> dict:
    cfg = ctx.cfg(V1)
    return cfg if ctx.quick else dict(cfg, batch=CHECK_BATCH)


def conv_layout_hooks(model, record: list):
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name != "patch_embed.proj_conv":  # the first conv sees the image
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, n=name: record.append((n, args[0].is_contiguous(memory_format=torch.channels_last)))))
    return hooks


def check_channels_last(rep: Report, sec: str, ctx: Ctx) -> None:
    from spikedriven.inference import prepare_inference

    cfg = check_cfg(ctx)
    out = {}
    for path in ("fast", "reference"):
        model = build(ctx, cfg, path)
        x, y = batch_for(ctx, model, cfg, cfg["batch"])
        rec: list = []
        hooks = conv_layout_hooks(model, rec)
        F.cross_entropy(model(x), y).backward()
        for h in hooks:
            h.remove()
        out[path, "train"] = rec
        if path == "fast":
            m = prepare_inference(model)
            rec = []
            hooks = conv_layout_hooks(m, rec)
            with torch.inference_mode():
                m(x)
            out[path, "eval"] = rec
        del model
    bad = [n for n, ok in out["fast", "train"] + out["fast", "eval"] if not ok]
    n_tr, n_ev = len(out["fast", "train"]), len(out["fast", "eval"])
    ctrl = sum(ok for _, ok in out["reference", "train"])
    ok = not bad and n_tr > 0 and n_ev > 0
    rep.add(sec, "channels_last holds (conv inputs after the first)", "PASS" if ok else "FAIL",
            f"fast path: {n_tr - sum(not o for _, o in out['fast', 'train'])}/{n_tr} conv calls channels_last in "
            f"training, {n_ev - sum(not o for _, o in out['fast', 'eval'])}/{n_ev} with BN folded"
            + (f"; not channels_last: {bad[:4]}" if bad else "")
            + f"; control, reference path (NCHW): {ctrl}/{len(out['reference', 'train'])}",
            not_channels_last=bad[:20], batch=cfg["batch"])


def check_uint8_saved(rep: Report, sec: str, ctx: Ctx) -> None:
    from spikedriven.layers import SpikeConv2d

    cfg = check_cfg(ctx)
    for prec in ("fp32", "bf16"):
        name = f"spike convs save uint8 ({prec})"
        with rep.guard(sec, name, correctness=True):
            res = {path: saved_by_spike_convs(ctx, cfg, path, prec, SpikeConv2d) for path in ("fast", "reference")}
            fast, ref = res["fast"], res["reference"]
            compact = [n for n, (_, c) in fast["inputs"].items() if c]
            bad = [n for n in compact if not fast["u8"].get(n) or fast["float_input"].get(n)]
            ctrl = sum(bool(v) for v in ref["float_input"].values())
            ok = not bad and len(compact) > 0
            rep.add(sec, name, "PASS" if ok else "FAIL",
                    f"fast path: {len(compact) - len(bad)}/{len(compact)} compact spike convs saved their input as "
                    f"uint8 and not as float" + (f"; failing: {bad[:4]}" if bad else "")
                    + f"; control, reference path: {ctrl}/{len(ref['inputs'])} saved a float input; all saved "
                      f"tensors: fast {fast['total'] / 2**20:.1f} MiB vs reference {ref['total'] / 2**20:.1f} MiB "
                      f"(batch {cfg['batch']})",
                    failing=bad[:20], saved_mb_fast=fast["total"] / 2**20, saved_mb_reference=ref["total"] / 2**20)


def saved_by_spike_convs(ctx: Ctx, cfg: dict, path: str, prec: str, SpikeConv2d) -> dict:
    """Tensors the autograd graph saves inside each SpikeConv2d call (saved_tensors_hooks), by dtype and shape."""
    model = build(ctx, cfg, path)
    x, y = batch_for(ctx, model, cfg, cfg["batch"])
    scope: list = [None]
    inputs: dict = {}
    u8: dict = {}
    float_input: dict = {}
    total = [0]
    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, SpikeConv2d):
            def pre(mod, args, n=n):
                scope[0] = n
                inputs[n] = (tuple(args[0].shape), mod.compact)

            def post(mod, args, out):
                scope[0] = None

            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        n = scope[0]
        if n is not None and tuple(t.shape) == inputs[n][0]:
            if t.dtype == torch.uint8:
                u8[n] = True
            elif t.is_floating_point():
                float_input[n] = True
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with ctx.amp(prec):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
    loss.backward()
    for h in hooks:
        h.remove()
    return dict(inputs=inputs, u8=u8, float_input=float_input, total=total[0])


def check_autocast_state(rep: Report, sec: str, ctx: Ctx) -> None:
    """Under bf16 autocast every neuron's spikes must equal the fp32-state reference on the same (bf16) input."""
    from spikedriven.kernels import lif_multistep
    from spikedriven.kernels.reference import lif_reference
    from spikedriven.neuron import LIF, ParametricLIF, lif_multistep_reference, plif_multistep_reference

    # kernel level: bf16 input under autocast vs the fp32 reference on the same bf16-rounded values
    g = torch.Generator(device=ctx.device).manual_seed(3)
    xk = (torch.randn(4, 4096, 64, device=ctx.device, generator=g) * 1.5 + 1.0).to(torch.bfloat16)
    with ctx.amp("bf16"):
        sk = lif_multistep(xk)
    rk = lif_reference(xk.float())
    kern_diff = int((sk.float() != rk).sum())

    cfg = check_cfg(ctx)
    model = build(ctx, cfg, "fast")
    x, y = batch_for(ctx, model, cfg, cfg["batch"])
    stats = dict(calls=0, bf16_calls=0, neurons=0, differ=0, bf16_state_differ=0)

    def bf16_state_lif(xx, tau, v_th):  # control: the same recurrence with a bf16 membrane
        v = torch.zeros_like(xx[0])
        out = []
        for t in range(xx.shape[0]):
            h = v + (xx[t] - v) / tau
            s = (h >= v_th).to(xx.dtype)
            v = h * (1 - s)
            out.append(s)
        return torch.stack(out)

    def hook(mod, args, out):
        xin = args[0]
        with torch.no_grad(), torch.autocast(ctx.device.type, enabled=False):
            if isinstance(mod, ParametricLIF):
                ref = plif_multistep_reference(xin.float(), mod.w, mod.v_threshold, mod.surrogate)
            else:
                ref = lif_multistep_reference(xin.float(), mod.v_threshold, mod.tau, mod.surrogate)
            stats["calls"] += 1
            stats["neurons"] += out.numel()
            stats["differ"] += int((out.float() != ref).sum())
            if xin.dtype == torch.bfloat16:
                stats["bf16_calls"] += 1
                if isinstance(mod, LIF):
                    stats["bf16_state_differ"] += int((bf16_state_lif(xin, mod.tau, mod.v_threshold).float()
                                                       != ref).sum())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (LIF, ParametricLIF))]
    with ctx.amp("bf16"):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    for h in hooks:
        h.remove()
    ok = kern_diff == 0 and stats["differ"] == 0 and stats["bf16_calls"] > 0
    rep.add(sec, "bf16 autocast keeps the neuron state fp32", "PASS" if ok else "FAIL",
            f"model: {stats['differ']} of {fmt_n(stats['neurons'])} spikes differ from the fp32-state reference "
            f"over {stats['calls']} neuron calls ({stats['bf16_calls']} with bf16 input); kernel: {kern_diff} of "
            f"{fmt_n(xk.numel())} differ; control, a bf16 membrane would change {stats['bf16_state_differ']} model "
            f"spikes" + ("" if stats["bf16_calls"] else "; no neuron saw a bf16 input, so nothing was tested"),
            kernel_differ=kern_diff, **stats, batch=cfg["batch"])


def check_lif_backend(rep: Report, sec: str, ctx: Ctx) -> None:
    from spikedriven.kernels import resolve_backend

    got = resolve_backend(torch.zeros(2, 4, device=ctx.device))
    env = os.environ.get("SPIKEDRIVEN_LIF_BACKEND")
    if ctx.cuda:
        rep.add(sec, "fast path LIF backend on CUDA", "PASS" if got == "triton" else "FAIL",
                f"'auto' resolves to {got!r}" + (f" (SPIKEDRIVEN_LIF_BACKEND={env})" if env else ""), backend=got)
    else:
        rep.add(sec, "fast path LIF backend", "INFO", f"'auto' resolves to {got!r} on {ctx.device}", backend=got)


def check_engine_device(rep: Report, sec: str, ctx: Ctx) -> None:
    from spikedriven.engine import compile_model, numba_available

    cfg = QUICK  # the engine's device logic does not depend on the model size
    other = ctx.device if ctx.cuda else torch.device("meta")  # on a CPU-only machine the meta device stands in
    model = sd.create_model(cfg["name"], **cfg["kw"])
    msgs = []
    try:
        compile_model(copy.deepcopy(model).to(other), backend="numba")
        msgs.append((False, f"compile_model(model on {other}) did not raise"))
    except ValueError as exc:
        m = str(exc)
        msgs.append(("CPU engine" in m and "\n" not in m, f"compile_model(model on {other}): {m}"))
    if numba_available():
        eng = compile_model(model, backend="numba")  # compiles the plan only; no kernel runs
        x = torch.randn(1, model.in_channels, cfg["img"], cfg["img"], device=other)
        try:
            eng.run(x)
            msgs.append((False, f"EventEngine.run(input on {other}) did not raise"))
        except ValueError as exc:
            m = str(exc)
            msgs.append(("CPU engine" in m and "\n" not in m, f"run(input on {other}): {m}"))
    else:
        msgs.append((True, "run() on a non-CPU input not checked: numba is not installed"))
    ok = all(o for o, _ in msgs)
    rep.add(sec, "event engine refuses non-CPU devices clearly", "PASS" if ok else "FAIL",
            " | ".join(m for _, m in msgs) + ("" if ctx.cuda else " (no CUDA here: the meta device stands in)"),
            device_tested=str(other))


def check_ddp(rep: Report, sec: str, ctx: Ctx) -> None:
    """torchrun with 2 ranks: init_distributed() must pick NCCL on CUDA (gloo on CPU), then 2 DDP steps must give
    identical gradients on both ranks.

    NCCL refuses two ranks on one GPU, so with a single GPU the 2-rank launch only checks the choice of backend
    (no collective runs), and a 1-rank torchrun with an NCCL process group opened by hand runs the DDP steps
    (init_distributed itself is a no-op at WORLD_SIZE=1)."""
    want = "nccl" if ctx.cuda else "gloo"
    ngpu = torch.cuda.device_count() if ctx.cuda else 0
    share_gpu = ctx.cuda and ngpu < 2
    name = f"DDP under torchrun uses {want}"
    ranks, err = ddp_launch(ctx, nproc=2, step=not share_gpu)
    if len(ranks) != 2:
        rep.add(sec, name, "FAIL", f"{len(ranks)} of 2 ranks reported: {err}", ranks=ranks)
        return
    backends = [k["backend"] for k in ranks]
    picked = all(b == want for b in backends) and all(k.get("dist_backend") == want for k in ranks)
    detail = f"2 ranks: init_distributed() backend {backends}, process group {[k.get('dist_backend') for k in ranks]}"
    if share_gpu:
        one, err1 = ddp_launch(ctx, nproc=1, step=True)
        steps = one
        detail += f"; {ngpu} GPU, so the DDP steps ran in a 1-rank torchrun with an NCCL group"
    else:
        steps = ranks
    steps_ok = bool(steps) and all(k.get("step_ok") for k in steps)
    same = len({k.get("grad_norm") for k in steps}) == 1
    if steps_ok:
        detail += (f"; 2 DDP steps ok on {[k.get('dist_backend') for k in steps]}, all_reduce_sum([1.0]) = "
                   f"{steps[0]['all_reduce']}, identical gradients on every rank: {same}")
    else:
        detail += "; DDP steps failed: " + (next((k["step_error"] for k in steps if k.get("step_error")), "")
                                            if steps else str(err1 if share_gpu else err))
    ok = picked and steps_ok and same and all(k.get("dist_backend") == want for k in steps)
    rep.add(sec, name, "PASS" if ok else "FAIL", detail, ranks=ranks, step_ranks=steps)


def ddp_launch(ctx: Ctx, nproc: int, step: bool) -> tuple[list, str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    with tempfile.TemporaryDirectory() as d:
        r = run_child(["--_child", "ddp", json.dumps(dict(dir=d, step=step))], ctx=ctx, launcher=launcher,
                      timeout=min(120.0, max(ctx.left(), 60.0)))
        ranks = [json.loads(Path(d, f).read_text()) for f in sorted(os.listdir(d)) if f.startswith("rank")]
    return ranks, r.get("error", "")


def child_ddp(spec: dict, ctx: Ctx) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from spikedriven.training.distributed import DistEnv, all_reduce_sum, cleanup, init_distributed

    env = init_distributed(device=str(ctx.device.type))
    rec = dict(rank=env.rank, world=env.world, backend=env.backend, device=str(env.device))
    try:
        if not env.distributed:  # WORLD_SIZE=1: init_distributed is a no-op; open the group by hand
            if env.device.type == "cuda":
                torch.cuda.set_device(env.device)
            dist.init_process_group("nccl" if env.device.type == "cuda" else "gloo", init_method="env://")
            env = DistEnv(0, 1, env.local_rank, env.device, dist.get_backend())
        rec["dist_backend"] = dist.get_backend()
        if spec["step"]:
            cfg = QUICK  # a tiny model: this checks the process group and DDP, not throughput
            torch.manual_seed(0)
            model = sd.create_model(cfg["name"], **cfg["kw"]).to(env.device)
            for n, p in model.named_parameters():
                if n.endswith("talking_heads.weight"):
                    p.requires_grad_(False)  # unused in the forward; the trainer freezes it the same way
            ddp = DDP(model, device_ids=[env.device] if env.device.type == "cuda" else None)
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
            torch.manual_seed(100 + env.rank)  # different data on every rank
            for _ in range(2):
                x = torch.randn(2, model.in_channels, cfg["img"], cfg["img"], device=env.device)
                y = torch.randint(0, model.num_classes, (2,), device=env.device)
                opt.zero_grad()
                F.cross_entropy(ddp(x), y).backward()
                opt.step()
            rec["grad_norm"] = round(float(torch.norm(torch.stack(
                [p.grad.double().norm() for p in model.parameters() if p.grad is not None]))), 12)
            rec["all_reduce"] = all_reduce_sum([1.0], env)
            rec["step_ok"] = True
    except Exception as exc:  # noqa: BLE001
        rec["step_ok"] = False
        rec["step_error"] = one_line(exc)
    finally:
        with contextlib.suppress(Exception):
            cleanup(env)
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
    Path(spec["dir"], f"rank{rec['rank']}.json").write_text(json.dumps(rec))
    return rec


def section_checks(rep: Report, sec: str, ctx: Ctx) -> None:
    for name, fn in (("fast path LIF backend", check_lif_backend),
                     ("channels_last holds (conv inputs after the first)", check_channels_last),
                     ("spike convs save uint8", check_uint8_saved),
                     ("bf16 autocast keeps the neuron state fp32", check_autocast_state),
                     ("event engine refuses non-CPU devices clearly", check_engine_device),
                     ("DDP under torchrun", check_ddp)):
        with rep.guard(sec, name, correctness=True):
            fn(rep, sec, ctx)


# ================================================================================================ main
def meta_info(ctx: Ctx, args) -> dict:
    info = dict(command=" ".join([Path(sys.executable).name] + sys.argv), started=time.strftime("%Y-%m-%d %H:%M:%S"),
                device=str(ctx.device), quick=ctx.quick, python=platform.python_version(), torch=torch.__version__,
                spikedriven=getattr(sd, "__version__", "?"), spikedriven_file=sd.__file__,
                host=platform.node(), cpu_threads=torch.get_num_threads(), budget_s=args.budget,
                steps=ctx.steps, warmup=ctx.warmup, lif_backend_env=os.environ.get("SPIKEDRIVEN_LIF_BACKEND"))
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    with contextlib.suppress(Exception):
        import triton

        info["triton"] = triton.__version__
    if ctx.cuda:
        p = torch.cuda.get_device_properties(ctx.device)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    tf32_conv_default=torch.backends.cudnn.allow_tf32,
                    tf32_matmul_default=torch.backends.cuda.matmul.allow_tf32, cudnn_benchmark_for_throughput=True)
    return info


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (default when present) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny stand-in configurations (CPU smoke test)")
    ap.add_argument("--json", default="gpu_check.json", help="result file (default gpu_check.json)")
    ap.add_argument("--budget", type=float, default=340.0,
                    help="seconds for the whole run; the torch.compile rows (run last) only use what is left, "
                         "each at most 240 s (default 340)")
    ap.add_argument("--steps", type=int, default=5, help="timed training / eval steps per row (default 5)")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile rows (auto: on, off with --quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default: torch's own; 1 with --quick on a CPU)")
    ap.add_argument("--sections", nargs="+", default=None,
                    choices=("kernels", "v1", "v2", "cifar", "published", "checks"), help="run only these")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); use --device cpu --quick",
              file=sys.stderr)
        return 2
    ctx = Ctx(args)
    if args._child:
        kind, arg = args._child
        if ctx.cuda:
            torch.backends.cudnn.benchmark = True
        r = (child_compile if kind == "compile" else child_ddp)(json.loads(arg), ctx)
        print(json.dumps(r, default=str), flush=True)
        return 0
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True  # as the trainer does on CUDA (throughput rows)
    meta = meta_info(ctx, args)
    ctx.meta_gpu = meta.get("gpu", "this CPU")
    print(f"spikedriven {meta['spikedriven']} ({meta['spikedriven_file']}), torch {meta['torch']}, "
          f"triton {meta.get('triton')}, device {meta.get('gpu', ctx.device)}"
          + (" [--quick: tiny stand-in configurations]" if ctx.quick else ""), flush=True)
    rep = Report(args.json, meta)
    want = set(args.sections or ("kernels", "v1", "v2", "cifar", "published", "checks"))
    if "kernels" in want:
        rep.section("kernels", section_kernels, ctx)
    if "v1" in want:
        rep.section("sdt_8_512", section_model, ctx, V1)
    if "v2" in want:
        rep.section("sdt_v2_8_512", section_v2, ctx)
    if "cifar" in want:
        rep.section("sdt_cifar10_2_512", section_model, ctx, CIFAR)
    if "checks" in want:
        rep.section("checks", section_checks, ctx)
    if "v1" in want:  # last: the compile rows take what is left of the budget
        rep.section("sdt_8_512 torch.compile", section_compile, ctx, V1)
    if "published" in want:
        rep.section("published", section_published, ctx)
    rep.save()
    print("\n" + rep.table())
    fails = rep.failures
    print(f"\n{len(rep.rows)} rows, {len(fails)} FAIL, wall {rep.meta['wall_s']:.0f} s; JSON: {args.json}")
    return 1 if fails else 0


def section_v2(rep: Report, sec: str, ctx: Ctx) -> None:
    names = sd.list_models()
    if V2[0]["name"] not in names:
        others = sd.list_models("*v2*")
        rep.add(sec, V2[0]["name"], "SKIP", "not available in this version"
                + (f" (registered V2-like names: {others})" if others else " (list_models() has no V2 model)"))
        return
    for cfg in V2:
        sub = f"{sec} T={cfg['kw']['T']}"
        run = ctx.cfg(cfg)
        try:  # a V2 that does not take these arguments (e.g. the --quick overrides) is reported, not failed
            sd.create_model(run["name"], **run["kw"])
        except Exception as exc:  # noqa: BLE001
            rep.add(sec, sub, "SKIP", f"cannot build {run['name']} with {run['kw']}: {one_line(exc)}")
            continue
        with rep.guard(sec, sub, correctness=True):
            section_model(rep, sub, ctx, cfg)


def section_compile(rep: Report, sec: str, ctx: Ctx, cfg: dict) -> None:
    eager = rep.sections.get("sdt_8_512", {}).get("results", {}).get("fast fp32")
    gflop = next((r.get("gflop_fwd_per_img") for r in rep.sections.get("sdt_8_512", {}).get("rows", [])
                  if "gflop_fwd_per_img" in r), None)
    compile_section_rows(rep, sec, ctx, ctx.cfg(cfg), eager, gflop)


if __name__ == "__main__":
    sys.exit(main())
