"""``spikedriven viz rates|raster|attention``: pictures of a model on one input."""
from __future__ import annotations

from .common import add_model_arguments, model_from_args, nonneg_int, positive_int


def register(sub) -> None:
    p = sub.add_parser("viz", help="pictures: firing-rate bars, spike raster, attention maps",
                       description="Write a PNG for a model on one input (a test sample of a dataset, random input, "
                                   "or an image file, prepared with the model's recipe): per-layer firing rates, a "
                                   "spike raster of one neuron layer (time steps, or tokens when T=1), or the "
                                   "attention maps of one block (V1: SDSA channel mask and Q maps; V2: per-head "
                                   "Q, K, each token's share of K^T V and the output spikes).")
    p.add_argument("what", choices=["rates", "raster", "attention"], help="which picture")
    add_model_arguments(p)
    p.add_argument("--image", help="image file (PNG/JPG) as the input, prepared with the model's recipe")
    p.add_argument("--data", default="digits",
                   help="input when no --image is given: a dataset name (its test split) or random (default: digits)")
    p.add_argument("--data-root", help="dataset folder for --data NAME (default: the dataset's usual location)")
    p.add_argument("--index", type=nonneg_int, default=0, help="sample index in the --data test split (default: 0)")
    p.add_argument("--layer", help="neuron layer of the raster (default: the first attention block's q_lif, e.g. "
                                   "block.0.attn.q_lif for V1, block3.0.attn.q_lif for V2)")
    p.add_argument("--n-neurons", type=positive_int, default=64, help="neurons shown in the raster (default: 64)")
    p.add_argument("--block", type=nonneg_int, default=0,
                   help="attention block of the attention maps, counted over the whole model (default: 0)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not calibrate the BatchNorm statistics of an untrained model before drawing")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (never an input of the command, a directory or a device) "
                        "(default: refused)")
    p.set_defaults(func=run)


def _load_input(args, model, meta):
    """One input, prepared like the model's evaluation data, and a few random ones for BN calibration."""
    from ..data.info import canonical_name
    from ..training.inputs import dataset_inputs, image_inputs, random_inputs, recipe_for_model, with_dataset

    if args.data == "random" and not args.image:
        return random_inputs(model, 1, 0)[0]
    r, src = recipe_for_model(model, meta, args.config)
    if r is None:
        raise ValueError(f"{'--image' if args.image else '--data ' + args.data}: {src}")
    if args.image:
        return image_inputs(r, [args.image])[0]
    r = with_dataset(r, canonical_name(args.data), args.data_root)
    try:
        return dataset_inputs(r, indices=[args.index])[0]
    except IndexError as e:
        raise ValueError(f"--index {args.index}: {e}") from None


def run(args) -> int:
    import torch

    from ..energy import profile_model
    from ..probe import bn_is_calibrated, calibrate_bn
    from ..training.inputs import random_inputs
    from ..outputs import check_output
    from ..viz import plot_attention_maps, plot_firing_rates, plot_spike_raster

    check_output(args.out, inputs=[args.checkpoint, args.config, args.image], overwrite=args.overwrite,
                 option="--out")
    model, meta = model_from_args(args)
    from ..layers.attention import Attention

    depth = sum(isinstance(m, Attention) for m in model.modules())
    if args.what == "attention" and depth and args.block >= depth:
        raise ValueError(f"--block {args.block}: the model has {depth} attention block(s), numbered 0..{depth - 1}")
    x = _load_input(args, model, meta)
    if not args.no_calibrate and not bn_is_calibrated(model):
        calibrate_bn(model, [torch.cat([x, random_inputs(model, 7, 1)[0]])])
        print("untrained model: BatchNorm statistics calibrated so that neurons fire")
    if args.what == "rates":
        plot_firing_rates(profile_model(model, [x]), args.out)
    elif args.what == "raster":
        plot_spike_raster(model, x, args.layer, args.out, n_neurons=args.n_neurons)
    else:
        plot_attention_maps(model, x, args.out, block=args.block)
    print(f"wrote {args.out}")
    return 0
