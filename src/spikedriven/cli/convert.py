"""``spikedriven convert SRC DST``: a checkpoint (.pth.tar/.pth/.pt) as .safetensors, read safely."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("convert", help="checkpoint (.pth.tar/.pth/.pt) -> .safetensors, read safely",
                       description="Read a checkpoint without running any code in it (weights_only) and write its "
                                   "state_dict as .safetensors (atomically).")
    p.add_argument("src", help="checkpoint to read: official .pth.tar/.pth, ours (.pt), or .safetensors")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--ema", action="store_true", help="take the EMA weights (state_dict_ema) instead of the model's")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST if it exists (never SRC, a directory or a device) (default: refused)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import load_checkpoint, save_safetensors
    from ..outputs import check_output

    check_output(args.dst, inputs=[args.src], overwrite=args.overwrite, option="DST")
    sd, meta = load_checkpoint(args.src, use_ema=args.ema)
    md = {"source": str(args.src)}
    for k in ("epoch", "arch", "family", "metric"):
        if k in meta:
            md[k] = str(meta[k])
    save_safetensors(sd, args.dst, metadata=md)
    print(f"wrote {args.dst}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()):,} elements")
    return 0
