"""``spikedriven energy``: firing rates, FLOPs/SOPs and energy per layer; ``--theory``: VSA vs SSA vs SDSA."""
from __future__ import annotations

from .common import add_model_arguments, model_from_args, positive_float, positive_int, unit_float


def register(sub) -> None:
    p = sub.add_parser(
        "energy", help="firing rates, FLOPs/SOPs and energy per layer; --theory: VSA vs SSA vs SDSA",
        description="Measured mode (default): run the model over data and report per-layer input firing rates, "
                    "FLOPs, SOPs, MAC/AC and energy. --uniform-rate R: the same report from shapes only, every "
                    "AC layer at rate R. --theory: operation counts and energy of VSA, SSA and SDSA.")
    add_model_arguments(p)
    p.add_argument("--T", type=positive_int, help="override the number of time steps")
    p.add_argument("--img-size", type=positive_int, help="input size (default: the model's)")
    p.add_argument("--data", default="random",
                   help="random, or a dataset name (digits, fashion-mnist, cifar10, ...): its test split, prepared "
                        "with the model's recipe (default: random)")
    p.add_argument("--data-root", help="dataset folder for --data NAME (default: the dataset's usual location)")
    p.add_argument("--batches", type=positive_int, default=2, help="batches to run (default: 2)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="samples per batch (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs / the dataset subset (default: 0)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not calibrate BatchNorm statistics of an untrained model on the data")
    p.add_argument("--uniform-rate", type=unit_float, help="no data: every AC layer's input at this rate")
    p.add_argument("--sdsa-rate", type=unit_float, help="K*V non-zero fraction for --uniform-rate (default rate^2)")
    p.add_argument("--theory", action="store_true", help="VSA vs SSA vs SDSA comparison and the 87.2x analysis")
    p.add_argument("--N", type=positive_int, help="tokens for --theory (default: the model's)")
    p.add_argument("--D", type=positive_int, help="channels for --theory (default: the model's)")
    p.add_argument("--rate", type=unit_float, default=0.14, help="uniform rate for --theory")
    p.add_argument("--rate-kv", type=unit_float, help="K*V non-zero fraction for --theory (default rate^2)")
    p.add_argument("--e-mac", type=positive_float, default=4.6, help="pJ per MAC (default: 4.6, 45 nm fp32)")
    p.add_argument("--e-ac", type=positive_float, default=0.9, help="pJ per AC (default: 0.9, 45 nm fp32)")
    p.add_argument("--first-layer-T", action="store_true", help="multiply the encoding layer's MACs by T")
    p.add_argument("--event-first-layer", choices=["ac", "mac"], default="ac",
                   help="DVS input: count the encoding layer as ACs weighted by event count (default) or MACs")
    p.add_argument("--csv", help="write the per-layer report as CSV")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--plot", help="write a firing-rate bar chart (PNG)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --csv/--json/--plot files (never an input of the command, a directory or "
                        "a device) (default: refused)")
    p.set_defaults(func=run)



def _batches(args, model, meta, size):
    """The measured inputs: random, or a dataset's test split prepared with the model's recipe."""
    from ..data.info import canonical_name
    from ..training.inputs import dataset_inputs, random_inputs, recipe_for_model, with_dataset

    n = args.batches * args.batch_size
    if args.data == "random":
        return list(random_inputs(model, n, args.seed, size)[0].split(args.batch_size)), "random inputs"
    r, src = recipe_for_model(model, meta, args.config)
    if r is None:
        raise ValueError(f"--data {args.data}: {src}")
    r = with_dataset(r, canonical_name(args.data), args.data_root, head=model.num_classes)
    if args.img_size:
        r["img_size"] = args.img_size
    x, _, desc = dataset_inputs(r, n, args.seed)
    return list(x.split(args.batch_size)), f"{desc}, prepared by {src}"


def run(args) -> int:
    from ..energy import analyze_87x, energy_from_config, profile_model, theoretical_report
    from ..outputs import check_outputs
    from ..probe import bn_is_calibrated, calibrate_bn

    # before any work: an output never replaces an input, a device or (without --overwrite) an existing file
    check_outputs({"--csv": args.csv, "--json": args.json, "--plot": args.plot},
                  inputs=[args.checkpoint, args.config, args.data], overwrite=args.overwrite)
    overrides = {"T": args.T} if args.T else {}
    if args.theory:
        if args.N and args.D:
            N, D, T, L = args.N, args.D, args.T or 4, 1
        else:
            m = model_from_args(args, **overrides)[0]
            N = args.N or ((args.img_size or m.img_size) // m.downsample) ** 2
            D, T, L = args.D or m.embed_dim, m.T, m.depth
        print(theoretical_report(N, D, T, rate=args.rate, rate_kv=args.rate_kv, e_mac=args.e_mac, e_ac=args.e_ac))
        print(f"\n(x {L} blocks for the whole network)" if L > 1 else "")
        print(f"\nthe paper's 'up to 87.2x': which assumption gives it? (N={N}, D={D}, T={T})")
        for h in analyze_87x(N, D, T, rate=args.rate, rate_kv=args.rate_kv or 0.02, e_mac=args.e_mac, e_ac=args.e_ac):
            need = h["value_for_target"]
            reach = (f"87.2x needs {h['free_parameter']} = {need:.4g}" if 0 <= need <= 1 else
                     f"87.2x is impossible here: it would need {h['free_parameter']} = {need:.4g}, and a rate lies in "
                     f"[0, 1]")
            print(f"  {h['ratio']:12.1f}x  {h['hypothesis']}\n{'':17s}at {h['free_parameter']} = {h['value_used']:.4g}; "
                  + reach)
        return 0
    if args.uniform_rate is not None:
        if args.config or not args.model:  # a YAML, a checkpoint that names its model, or the default
            rep = energy_from_config(model_from_args(args, **overrides)[0], args.uniform_rate, sdsa_rate=args.sdsa_rate,
                                     e_mac=args.e_mac, e_ac=args.e_ac, first_layer_T=args.first_layer_T,
                                     img_size=args.img_size)
        else:
            rep = energy_from_config(args.model, args.uniform_rate, sdsa_rate=args.sdsa_rate, e_mac=args.e_mac,
                                     e_ac=args.e_ac, first_layer_T=args.first_layer_T, img_size=args.img_size,
                                     **overrides)
    else:
        from ..bounds import check_fits_in_memory, forward_bytes

        model, meta = model_from_args(args, **overrides)
        size = args.img_size or model.img_size
        n_in = args.batch_size * args.batches * model.in_channels * size * size * (model.T if model.in_channels == 2
                                                                                    else 1)
        check_fits_in_memory(forward_bytes(model, args.batch_size, size) + 4 * n_in,
                             f"--batch-size {args.batch_size} x --batches {args.batches} at {size}x{size}")
        batches, where = _batches(args, model, meta, size)
        if not args.no_calibrate and not bn_is_calibrated(model):
            calibrate_bn(model, batches)
            print("untrained model: BatchNorm statistics calibrated on the data so that neurons fire")
        rep = profile_model(model, batches, e_mac=args.e_mac, e_ac=args.e_ac, first_layer_T=args.first_layer_T,
                            event_first_layer=args.event_first_layer)
        rep.notes.append(f"data: {where}, {rep.n_samples} samples at {size}x{size}")
    print(rep.table())
    if args.csv:
        rep.to_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        from ..viz import plot_firing_rates

        plot_firing_rates(rep, args.plot)
        print(f"wrote {args.plot}")
    return 0


