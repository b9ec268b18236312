"""``spikedriven viz rates|raster|attention``: pictures of a model on one input."""
from __future__ import annotations

from .common import add_model_arguments, model_from_args


def register(sub) -> None:
    p = sub.add_parser("viz", help="pictures: firing-rate bars, spike raster, SDSA attention maps",
                       description="Write a PNG for a model on one input (a digits sample, random input, or an image "
                                   "file): per-layer firing rates, a spike raster of one neuron layer, or the SDSA "
                                   "attention maps of one block.")
    p.add_argument("what", choices=["rates", "raster", "attention"], help="which picture")
    add_model_arguments(p)
    p.add_argument("--image", help="image file (PNG/JPG) as the input (default: --data)")
    p.add_argument("--data", default="digits", choices=["digits", "random"],
                   help="input when no --image is given (default: digits)")
    p.add_argument("--index", type=int, default=0, help="sample index in --data digits (default: 0)")
    p.add_argument("--layer", default="block.0.attn.q_lif", help="neuron layer of the raster (default: %(default)s)")
    p.add_argument("--n-neurons", type=int, default=64, help="neurons shown in the raster (default: 64)")
    p.add_argument("--block", type=int, default=0, help="encoder block of the attention maps (default: 0)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not calibrate the BatchNorm statistics of an untrained model before drawing")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=run)


def _load_input(args, model):
    import torch

    from ..data.samples import digits_batches, random_batches, to_model_input

    size = model.img_size
    if args.image:
        import numpy as np
        from PIL import Image

        im = np.asarray(Image.open(args.image).convert("RGB"), dtype="float32") / 255.0
        return to_model_input(torch.from_numpy(im).permute(2, 0, 1).unsqueeze(0), model, size)
    if args.data == "digits" and model.in_channels != 2:
        batch = next(digits_batches(model, 1, max(args.index, 0) + 1, size))
        if not 0 <= args.index < len(batch):
            raise ValueError(f"--index {args.index}: the digits data has samples 0..{len(batch) - 1}")
        return batch[args.index:args.index + 1]
    return next(random_batches(model, 1, 1, size, 0))


def run(args) -> int:
    import torch

    from ..data.samples import random_batches
    from ..energy import profile_model
    from ..probe import bn_is_calibrated, calibrate_bn
    from ..viz import plot_attention_maps, plot_firing_rates, plot_spike_raster

    model = model_from_args(args)[0]
    x = _load_input(args, model)
    if not args.no_calibrate and not bn_is_calibrated(model):
        calib = [x]
        if model.in_channels != 2:
            calib = [torch.cat([x, next(random_batches(model, 1, 7, model.img_size, 1))])]
        calibrate_bn(model, calib)
        print("untrained model: BatchNorm statistics calibrated so that neurons fire")
    if args.what == "rates":
        plot_firing_rates(profile_model(model, [x]), args.out)
    elif args.what == "raster":
        plot_spike_raster(model, x, args.layer, args.out, n_neurons=args.n_neurons)
    else:
        plot_attention_maps(model, x, args.out, block=args.block)
    print(f"wrote {args.out}")
    return 0
