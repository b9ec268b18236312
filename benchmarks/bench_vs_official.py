"""spikedriven side by side with the official code: same weights, one run, each side in its own process.

For every configuration, a check process builds the official model from your checkout, lets it see one batch in
training mode (so that its BatchNorm statistics are not the defaults), loads its state_dict into ours strictly and
asserts equal parameter counts and eval logits within 1e-4 (ours as timed: fast paths on, ``prepare_inference``);
only then are the two timed. Timing processes alternate official / ours, round after round; the best round counts
(highest img/s, lowest peak RSS). Measured per side and precision (fp32, bf16 autocast):
  train img/s   forward + cross-entropy + backward + AdamW step (and the official ``reset_net``)
  eval img/s    under ``torch.inference_mode()``: the official model in eval mode; ours through
                ``prepare_inference`` (BN folded, each RepConv in its cheaper form)
  peak RSS      peak resident memory of the process after the training steps (includes the torch runtime)
Ours runs as ``spikedriven.create_model`` builds it (fused LIF, channels_last, uint8-saved spikes: the defaults).

The official code is not part of spikedriven and never copied into it; get it yourself:
  git clone https://github.com/BICLab/Spike-Driven-Transformer      # V1 (model/spikeformer.py)
  git clone https://github.com/BICLab/Spike-Driven-Transformer-V2   # V2 (classification/models.py)
  git clone https://github.com/BICLab/Spike-Driven-Transformer-V3   # V3 (SDT_V3/Classification/Model_Base/models.py)
V1 and V2 import SpikingJelly 0.0.0.0.12 (``spikingjelly.clock_driven``, gone from later releases); V2 and V3 import
einops and torchinfo. Install them in a folder of their own, not in your environment:
  pip install --no-deps --target official-sj spikingjelly==0.0.0.0.12 einops torchinfo
``--official-sj official-sj`` puts that folder first on the path of the official side only. The official neurons
are built with ``backend="cupy"``; here they run SpikingJelly's ``torch`` backend (same arithmetic, no GPU needed):
the benchmark switches the argument when the official model is built, its files stay as they are.

    python benchmarks/bench_vs_official.py --official-dir ~/src --official-sj official-sj          # every family found
    python benchmarks/bench_vs_official.py --official-dir ~/src/Spike-Driven-Transformer-V2 --family v2 \\
        --official-sj official-sj --rounds 1 --steps 1 --precisions fp32                         # a quick check
``--official-dir`` is one checkout, or a folder holding checkouts of the three repositories.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOS = {  # family -> (repository, file that identifies a checkout of it)
    "v1": ("https://github.com/BICLab/Spike-Driven-Transformer", "model/spikeformer.py"),
    "v2": ("https://github.com/BICLab/Spike-Driven-Transformer-V2", "classification/models.py"),
    "v3": ("https://github.com/BICLab/Spike-Driven-Transformer-V3", "SDT_V3/Classification/Model_Base/models.py"),
}
_V2_CIFAR = dict(embed_dim=(32, 64, 128, 160), num_heads=8, num_classes=10)
CONFIGS = {
    # name: family, batch, image size, ours (registry name, overrides), official (builder, arguments)
    "v1_cifar_2_256": dict(family="v1", batch=16, size=32, ours=("sdt_cifar10_2_256", {}),
                           official=("sdt", dict(embed_dims=256, num_classes=10, T=4, pooling_stat="0011"))),
    "v1_cifar_2_512": dict(family="v1", batch=16, size=32, ours=("sdt_cifar10_2_512", {}),
                           official=("sdt", dict(embed_dims=512, num_classes=10, T=4, pooling_stat="0011"))),
    "v2_cifar_32": dict(family="v2", batch=16, size=32, ours=("sdt_v2_8_512", dict(img_size=32, T=4, **_V2_CIFAR)),
                        official=("Spiking_vit_MetaFormer", dict(T=4, **_V2_CIFAR))),
    "v2_8_384_64px": dict(family="v2", batch=8, size=64, ours=("sdt_v2_8_384", dict(img_size=64, T=1)),
                          official=("metaspikformer_8_384", dict(T=1))),
    "v3_s_64px": dict(family="v3", batch=16, size=64, ours=("sdt_v3_s", dict(img_size=64)),
                      official=("Efficient_Spiking_Transformer_s", {})),
    "v3_m_64px": dict(family="v3", batch=16, size=64, ours=("sdt_v3_m", dict(img_size=64)),
                      official=("Efficient_Spiking_Transformer_m", {})),
}
PRECISIONS = ("fp32", "bf16")
# the neuron before the head on each side (official, ours): its input, the token-mean features, is compared too,
# since at initialisation that neuron may stay silent and leave every logit at the head's bias
HEAD_NEURON = {"v1": ("head_lif", "head_lif"), "v2": ("lif", "lif"), "v3": ("spike", "spike")}
LOGIT_TOL = 1e-4


class Refusal(Exception):
    """A setup problem: printed as one line, no traceback."""


# ------------------------------------------------------------------------------------------------ official side
def find_checkout(root: Path, family: str) -> Path | None:
    """``root`` itself if it is a checkout of ``family``'s repository, else a direct sub-folder that is."""
    marker = REPOS[family][1]
    for cand in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (cand / marker).is_file():
            return cand
    return None


def _torch_backend_neurons() -> None:
    """Make SpikingJelly 0.0.0.0.12's multi-step neurons take ``backend="torch"`` whatever the caller asks (the
    official files ask for "cupy", which needs a GPU); the arithmetic is the same."""
    try:
        from spikingjelly.clock_driven import neuron
    except ImportError as e:
        raise Refusal(f"the official V1/V2 code needs SpikingJelly 0.0.0.0.12 (spikingjelly.clock_driven; {e}): "
                      f"pip install --no-deps --target official-sj spikingjelly==0.0.0.0.12 einops torchinfo, then "
                      f"pass --official-sj official-sj") from None
    for cls in (neuron.MultiStepLIFNode, neuron.MultiStepParametricLIFNode):
        if getattr(cls.__init__, "_torch_backend", False):
            continue
        init = cls.__init__

        def patched(self, *args, _init=init, **kwargs):
            kwargs["backend"] = "torch"
            _init(self, *args, **kwargs)

        patched._torch_backend = True
        cls.__init__ = patched


def _load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except ImportError as e:
        raise Refusal(f"the official code in {path} could not be imported ({e}); V2/V3 need einops and torchinfo, "
                      f"V1/V2 SpikingJelly 0.0.0.0.12: pip install --no-deps --target official-sj "
                      f"spikingjelly==0.0.0.0.12 einops torchinfo, then pass --official-sj official-sj") from None
    return mod


class Official:
    """The official model of a configuration, with what its training loop does around it (reset_net, tuple
    outputs) so that both sides are driven by the same code."""

    def __init__(self, cfg: dict, checkout: Path):
        import torch  # noqa: F401  (before the official files, which import it too)

        fam, (builder, kw) = cfg["family"], cfg["official"]
        kw = dict(kw)
        T = kw.pop("T", None)
        self.reset = lambda: None
        if fam in ("v1", "v2"):
            _torch_backend_neurons()
            from spikingjelly.clock_driven import functional

            self.reset = lambda: functional.reset_net(self.model)
        if fam == "v1":
            sys.path.insert(0, str(checkout))  # model/spikeformer.py imports its sibling package "module"
            try:
                from model.spikeformer import SpikeDrivenTransformer
            except ImportError as e:
                raise Refusal(f"the official V1 code in {checkout} could not be imported ({e})") from None
            s = cfg["size"]
            self.model = SpikeDrivenTransformer(img_size_h=s, img_size_w=s, in_channels=3, num_heads=8,
                                                mlp_ratios=4, depths=2, T=T, spike_mode="lif", **kw)
        else:
            mod = _load_file(checkout / REPOS[fam][1], f"official_{fam}_models")
            if builder == "Spiking_vit_MetaFormer":  # the zoo's arguments with other dims and classes
                s = cfg["size"]
                self.model = mod.Spiking_vit_MetaFormer(img_size_h=s, img_size_w=s, patch_size=16, in_channels=3,
                                                        mlp_ratios=4, depths=8, sr_ratios=1,
                                                        embed_dim=list(kw.pop("embed_dim")), **kw)
            else:
                self.model = getattr(mod, builder)(**kw)
        if T is not None and fam == "v2":
            self.model.T = T  # V2's training script sets T this way

    def __call__(self, x):
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out  # V1 returns (logits, hook)


def _ours(cfg: dict):
    import spikedriven as sd

    name, kw = cfg["ours"]
    try:
        return sd.create_model(name, **kw)
    except (KeyError, ValueError) as e:
        if name not in sd.list_models():
            raise Refusal(f"{name} is not registered in this spikedriven ({sd.__file__}): skipped") from None
        raise Refusal(f"could not build {name}: {e}") from None


def _batch(cfg: dict, num_classes: int):
    import torch

    g = torch.Generator().manual_seed(0)
    B, S = cfg["batch"], cfg["size"]
    return torch.randn(B, 3, S, S, generator=g), torch.randint(0, num_classes, (B,), generator=g)


def _num_classes(model) -> int:
    return int(getattr(model, "num_classes"))


# ------------------------------------------------------------------------------------------------ child processes
def check(cfg_key: str, checkout: Path, weights: Path) -> dict:
    """Official model -> one training-mode batch -> state_dict (saved for the timing processes) -> ours, strictly;
    parameter counts and eval logits compared."""
    import torch

    from spikedriven.inference import prepare_inference

    cfg = CONFIGS[cfg_key]
    torch.manual_seed(0)
    off = Official(cfg, checkout)
    x, _ = _batch(cfg, _num_classes(off.model))
    with torch.no_grad():  # BN running statistics of a real batch instead of (0, 1)
        off.model.train()
        off(x)
        off.reset()
    state = off.model.state_dict()
    torch.save(state, weights)
    ours = _ours(cfg)
    ours.load_state_dict(state, strict=True)
    n_off = sum(p.numel() for p in off.model.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    off.model.eval()
    n_off_name, n_ours_name = HEAD_NEURON[cfg["family"]]
    with torch.inference_mode():
        ref, f_ref = _with_input_of(off.model, n_off_name, lambda: off(x))
        off.reset()
        plain, f_plain = _with_input_of(ours, n_ours_name, lambda: ours.eval()(x))
        fast_model = prepare_inference(ours)
        fast, f_fast = _with_input_of(fast_model, n_ours_name, lambda: fast_model(x))

    def diff(a, b):
        return float((a.float() - b.float()).abs().max()) if a is not None and b is not None \
            and a.shape == b.shape else float("nan")

    return dict(params_official=n_off, params_ours=n_ours, max_diff_eval=diff(plain, ref),
                max_diff_prepared=diff(fast, ref), logit_scale=float(ref.abs().max()),
                features_diff_eval=diff(f_plain, f_ref), features_diff_prepared=diff(f_fast, f_ref),
                features_scale=float(f_ref.abs().max()) if f_ref is not None else float("nan"))


def _with_input_of(model, name: str, fn):
    """``fn()`` and the input of ``model``'s submodule ``name`` during it (None if there is no such module)."""
    mod = dict(model.named_modules()).get(name)
    seen = []
    h = mod.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone())) if mod else None
    try:
        out = fn()
    finally:
        if h:
            h.remove()
    return out, (seen[-1] if seen else None)


def timed(cfg_key: str, side: str, precision: str, checkout: Path, weights: Path, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    cfg = CONFIGS[cfg_key]
    state = torch.load(weights, weights_only=True)
    torch.manual_seed(0)
    if side == "official":
        off = Official(cfg, checkout)
        model, run, reset = off.model, off, off.reset
    else:
        model = _ours(cfg)
        run, reset = model, (lambda: None)
    model.load_state_dict(state, strict=True)
    x, y = _batch(cfg, _num_classes(model))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = precision == "bf16"

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        reset()

    model.train()
    for _ in range(2):  # warm-up: kernel compilation, allocator (glibc raises its mmap threshold after the first step)
        train_step()
    t = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_dt = (time.perf_counter() - t) / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.eval()
    if side == "ours":
        from spikedriven.inference import prepare_inference

        run = prepare_inference(model)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        run(x)
        reset()
        t = time.perf_counter()
        for _ in range(steps):
            run(x)
            reset()
        eval_dt = (time.perf_counter() - t) / steps
    B = cfg["batch"]
    return dict(train_img_s=B / train_dt, eval_img_s=B / eval_dt, peak_rss_mb=peak_mb)


# ------------------------------------------------------------------------------------------------ driver
def cpu_description() -> str:
    """lscpu's model name and the SIMD flags that decide fp32/bf16 speed."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU (lscpu not available)"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = info.get("Model name", "unknown CPU").strip()
    flags = info.get("Flags", "").split()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{name}, {os.cpu_count()} logical CPUs, flags: {' '.join(simd) or 'no avx2'}"


def _child(args: list[str], env: dict) -> tuple[dict | None, str]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        return json.loads(lines[-1]), ""
    err = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
    return None, err


def _ratio(a, b):
    return a / b if a and b else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-dir", type=Path,
                    help="a checkout of an official repository, or a folder holding checkouts")
    ap.add_argument("--family", choices=sorted(REPOS), help="only this family (default: every family found)")
    ap.add_argument("--official-sj", type=Path,
                    help="folder with SpikingJelly 0.0.0.0.12 (+ einops, torchinfo), put first on the official "
                         "side's path (default: none, they must be importable as installed)")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="default: every config of the families")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best counts (default: 3)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement after two warm-up steps (default: 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process (default: 2)")
    ap.add_argument("--check-only", action="store_true", help="only the same-weights checks, no timing")
    ap.add_argument("--json", type=Path, help="also write every measurement to this file")
    ap.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if args._child:
            kind, cfg_key, checkout, weights, *rest = args._child
            if kind == "check":
                res = check(cfg_key, Path(checkout), Path(weights))
            else:
                res = timed(cfg_key, rest[0], rest[1], Path(checkout), Path(weights), args.steps, args.threads)
            print(json.dumps(res))
            return 0
        return _drive(args)
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _drive(args) -> int:
    if args.official_dir is None:
        raise Refusal("--official-dir is required: a checkout of the official code (see --help for how to get it)")
    root = args.official_dir.expanduser()
    if not root.is_dir():
        raise Refusal(f"--official-dir {root} is not a folder; clone the official code first (see --help)")
    if args.official_sj is not None and not (args.official_sj / "spikingjelly").is_dir():
        raise Refusal(f"--official-sj {args.official_sj} holds no spikingjelly package; create it with pip install "
                      f"--no-deps --target {args.official_sj} spikingjelly==0.0.0.0.12 einops torchinfo")
    if min(args.rounds, args.steps, args.threads) < 1:
        raise Refusal("--rounds, --steps and --threads must be >= 1")
    families = [args.family] if args.family else sorted(REPOS)
    checkouts = {f: find_checkout(root, f) for f in families}
    if args.family and checkouts[args.family] is None:
        raise Refusal(f"{root} is not a checkout of {REPOS[args.family][0]} (no {REPOS[args.family][1]}) and holds "
                      f"none: git clone {REPOS[args.family][0]}")
    if not any(checkouts.values()):
        raise Refusal(f"{root} holds no checkout of the official repositories: "
                      + "; ".join(f"git clone {u}" for u, _ in REPOS.values()))
    configs = [c for c in (args.configs or CONFIGS) if CONFIGS[c]["family"] in families]
    env_ours = dict(os.environ)
    env_off = dict(os.environ)
    if args.official_sj is not None:
        env_off["PYTHONPATH"] = os.pathsep.join(
            [str(args.official_sj.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])
    print(f"CPU: {cpu_description()}; {args.threads} threads per process, {args.rounds} round(s) of {args.steps} "
          f"step(s), best round counts", flush=True)
    for f in families:
        print(f"official {f}: {checkouts[f] or 'not found (skipped): git clone ' + REPOS[f][0]}", flush=True)
    import spikedriven as sd

    registered = set(sd.list_models())
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="bench_vs_official_") as tmp:
        for c in configs:
            co = checkouts[CONFIGS[c]["family"]]
            if co is None:
                continue
            if CONFIGS[c]["ours"][0] not in registered:
                print(f"{c}: skipped: {CONFIGS[c]['ours'][0]} is not registered in this spikedriven "
                      f"({sd.__file__})", flush=True)
                continue
            weights = Path(tmp) / f"{c}.pt"
            res, err = _child(["--_child", "check", c, str(co), str(weights)], env_off)
            if res is None:
                print(f"{c}: check not run: {err}", flush=True)
                failed |= "skipped" not in err
                continue
            # features NaN (no module of that name on one side): the logits alone decide
            ok = (res["params_official"] == res["params_ours"] and res["max_diff_eval"] <= LOGIT_TOL
                  and res["max_diff_prepared"] <= LOGIT_TOL
                  and not res["features_diff_eval"] > LOGIT_TOL and not res["features_diff_prepared"] > LOGIT_TOL)
            print(f"{c}: parameters official {res['params_official']:,} / ours {res['params_ours']:,}; eval max "
                  f"|diff| (ours as built / after prepare_inference): logits {res['max_diff_eval']:.2e} / "
                  f"{res['max_diff_prepared']:.2e} (logits up to {res['logit_scale']:.3g}), features before the "
                  f"head neuron {res['features_diff_eval']:.2e} / {res['features_diff_prepared']:.2e} (up to "
                  f"{res['features_scale']:.3g}): {'OK' if ok else 'MISMATCH'}", flush=True)
            if not ok:
                failed = True
            if not ok or args.check_only:
                continue
            best: dict = {}
            for r in range(args.rounds):
                for p in args.precisions:
                    sides = ("official", "ours") if r % 2 == 0 else ("ours", "official")
                    for side in sides:
                        m, err = _child(["--steps", str(args.steps), "--threads", str(args.threads), "--_child",
                                         "time", c, str(co), str(weights), side, p],
                                        env_off if side == "official" else env_ours)
                        if m is None:
                            print(f"  {c} {side} {p} round {r + 1}: FAILED: {err}", flush=True)
                            failed = True
                            continue
                        print(f"  round {r + 1} {p:4s} {side:8s} train {m['train_img_s']:8.2f} img/s  eval "
                              f"{m['eval_img_s']:8.2f} img/s  peak RSS {m['peak_rss_mb']:6.0f} MB", flush=True)
                        b = best.setdefault((p, side), dict(m))
                        b["train_img_s"] = max(b["train_img_s"], m["train_img_s"])
                        b["eval_img_s"] = max(b["eval_img_s"], m["eval_img_s"])
                        b["peak_rss_mb"] = min(b["peak_rss_mb"], m["peak_rss_mb"])
            for (p, side), b in best.items():
                rows.append(dict(config=c, precision=p, side=side, **b, check=res))
    _table(rows, args.precisions)
    if args.json:
        args.json.write_text(json.dumps(dict(cpu=cpu_description(), threads=args.threads, rounds=args.rounds,
                                             steps=args.steps, rows=rows), indent=1))
    return 1 if failed else 0


def _table(rows: list[dict], precisions: list[str]) -> None:
    by = {(r["config"], r["precision"], r["side"]): r for r in rows}
    if not by:
        return
    print("\n| config | precision | official train / eval img/s | ours train / eval img/s | train × | eval × | "
          "peak RSS official / ours (ours %) |")
    print("|---|---|---|---|---|---|---|")
    for c in dict.fromkeys(r["config"] for r in rows):
        ref32 = by.get((c, "fp32", "official"))
        for p in precisions:
            o, u = by.get((c, p, "official")), by.get((c, p, "ours"))
            if not (o and u):
                continue
            print(f"| {c} | {p} | {o['train_img_s']:.2f} / {o['eval_img_s']:.2f} | {u['train_img_s']:.2f} / "
                  f"{u['eval_img_s']:.2f} | {_ratio(u['train_img_s'], o['train_img_s']):.2f} | "
                  f"{_ratio(u['eval_img_s'], o['eval_img_s']):.2f} | {o['peak_rss_mb']:.0f} / {u['peak_rss_mb']:.0f} "
                  f"MB ({u['peak_rss_mb'] / o['peak_rss_mb']:.0%}) |")
            if p == "bf16" and ref32:
                print(f"| {c} | ours bf16 vs official fp32 | | | {_ratio(u['train_img_s'], ref32['train_img_s']):.2f}"
                      f" | {_ratio(u['eval_img_s'], ref32['eval_img_s']):.2f} | |")


if __name__ == "__main__":
    sys.exit(main())
