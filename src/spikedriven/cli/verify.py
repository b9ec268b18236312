"""``spikedriven verify``: prove the spike-driven property of a model on an input (exit 1 if it does not hold)."""
from __future__ import annotations

from .common import LazyChoices, add_model_arguments, attention_names, positive_int, shortcut_names


def register(sub) -> None:
    p = sub.add_parser("verify", help="prove the spike-driven property of a model on an input",
                       description="Run a model and check that every conv/linear input except the encoding layer is "
                                   "binary and the attention uses only masks and additions. Exit code 1 if not.")
    add_model_arguments(p)
    p.add_argument("--attn-mode", choices=LazyChoices(attention_names), metavar="NAME",
                   help="swap the attention (V1 family ablations: the registered attention classes)")
    p.add_argument("--shortcut", choices=LazyChoices(shortcut_names), metavar="NAME", help="swap the shortcut (V1 family ablations)")
    p.add_argument("--batch", type=positive_int, default=2, help="random input batch (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the input (default: 0)")
    p.add_argument("--quiet", action="store_true", help="print only the verdict and the violations")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..verify import verify_spike_driven
    from .common import model_from_args

    overrides = {k: v for k, v in (("attn_mode", args.attn_mode), ("shortcut", args.shortcut)) if v}
    model = model_from_args(args, **overrides)[0]
    rep = verify_spike_driven(model, batch=args.batch, seed=args.seed)
    if args.quiet:
        print("\n".join(rep.summary().splitlines()[: 2 if rep.bn_calibrated_on_input else 1]))
        for c in rep.violations:
            print(f"  VIOLATION {c.kind} {c.name}: offending values {c.offending} ({c.note})")
    else:
        print(rep.summary())
    return 0 if rep.ok else 1
