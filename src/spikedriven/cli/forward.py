"""``spikedriven forward``: one forward pass on random input: logits, per-layer firing rates, parameter count."""
from __future__ import annotations

from .common import add_model_arguments, positive_int


def register(sub) -> None:
    p = sub.add_parser("forward", help="one forward pass on random input: logits, firing rates, parameter count")
    add_model_arguments(p)
    p.add_argument("--batch", type=positive_int, default=2, help="batch size (default: 2)")
    p.add_argument("--img-size", type=positive_int, help="input side in pixels (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the input (default: 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..probe import bn_is_calibrated, calibrate_bn, firing_rates
    from .common import model_from_args

    torch.manual_seed(args.seed)
    model = model_from_args(args)[0].eval()
    n_params = sum(p.numel() for p in model.parameters())
    size = args.img_size or model.img_size
    from ..bounds import check_fits_in_memory, forward_bytes

    check_fits_in_memory(forward_bytes(model, args.batch, size), f"a forward pass at --img-size {size} with "
                         f"--batch {args.batch}")  # before the input is allocated
    if model.in_channels == 2:
        x = torch.poisson(torch.full((args.batch, model.T, 2, size, size), 0.3))
        kind = f"random event counts [B={args.batch}, T={model.T}, 2, {size}, {size}]"
    else:
        x = torch.randn(args.batch, model.in_channels, size, size)
        kind = f"random normalised images [B={args.batch}, {model.in_channels}, {size}, {size}] repeated T={model.T}"
    if not bn_is_calibrated(model):
        calibrate_bn(model, [x])
        print("untrained model: BatchNorm statistics calibrated on this input so that neurons fire")
    rates = firing_rates(model, [x])
    with torch.no_grad():
        logits = model(x)
    print(f"model {model.model_name}: {n_params:,} parameters; input: {kind}")
    print(f"logits {tuple(logits.shape)}:")
    torch.set_printoptions(precision=4, linewidth=120, sci_mode=False)
    print(logits)
    print(f"firing rates of the {len(rates)} neuron layers that ran (fraction of 1s):")
    for n, r in rates.items():
        print(f"  {n:40s} {r:.4f}")
    print(f"mean firing rate {sum(rates.values()) / max(len(rates), 1):.4f}")
    return 0
