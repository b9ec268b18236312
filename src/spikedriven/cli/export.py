"""``spikedriven export``: a model's inference form as ONNX, TorchScript or a torch.export ExportedProgram."""
from __future__ import annotations

from .common import add_model_arguments, model_from_args, positive_int

FORMATS = ("onnx", "torchscript", "exported-program")  # = spikedriven.export.FORMATS (that module imports torch)


def register(sub) -> None:

    p = sub.add_parser("export", help="write a model for deployment: ONNX, TorchScript or ExportedProgram",
                       description="Export the inference form of a model (BatchNorm and RepConvs folded, eval mode) "
                                   "with a dynamic batch dimension, then run the file on a few inputs and print its "
                                   "largest logit difference from the eager model. Spikes stay float tensors of 0/1 "
                                   "and every layer runs densely: nothing event-driven is exported (README, "
                                   "Deployment).")
    add_model_arguments(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="file format")
    p.add_argument("--out", required=True, help="file to write (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--check-samples", type=positive_int, default=8,
                   help="test samples of the model's dataset (random inputs when it has none here) the file is "
                        "checked on against the eager model (default: 8)")
    p.set_defaults(func=run)


def _check_inputs(model, meta, config, n: int):
    """``(inputs, description)``: ``n`` test samples through the model's recipe, else random inputs."""
    from ..training.inputs import dataset_inputs, random_inputs, recipe_for_model

    r, _ = recipe_for_model(model, meta, config)
    if r is not None:
        try:
            x, _, what = dataset_inputs(r, limit=n)
            return x, what
        except (OSError, ValueError, KeyError, RuntimeError):  # the dataset is not on this machine
            pass
    return random_inputs(model, n, 1)


def run(args) -> int:
    from pathlib import Path

    from ..export import export_model

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # before building anything
        raise FileExistsError(f"--out {out} already exists; pass --overwrite to replace it")
    model, meta = model_from_args(args)
    x, what = _check_inputs(model, meta, args.config, args.check_samples)
    info = export_model(model, args.format, out, overwrite=args.overwrite, check_inputs=x)
    shape = ", ".join(map(str, info["input_shape"]))
    print(f"wrote {out} ({args.format}, {getattr(model, 'model_name', 'model')} in inference form: BN/RepConv "
          f"folded; input [{shape}] float32, batch dynamic)")
    if info["max_abs_diff"] is None:
        print("not checked: onnxruntime is not installed (pip install 'spikedriven[export]')")
    else:
        print(f"max |logit difference| from the eager model on {what}: {info['max_abs_diff']:.2e}")
    return 0
