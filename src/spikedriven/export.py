"""Export a model in its inference form (BN and RepConvs folded, eval mode) to ONNX, TorchScript or a
``torch.export`` ExportedProgram, with a dynamic batch dimension, and check the file against the eager model.

What survives export (see README "Deployment"): the network's arithmetic, exactly. Spikes are float tensors of
0/1 values and every layer runs densely as ordinary tensor ops (convs, matmuls); the neuron's time loop is
unrolled (T is fixed in the file); nothing is event-driven. The fused LIF kernels (C++ / Triton) are not in the
file: while a model is traced or exported, every neuron runs its reference (plain tensor ops, same spikes; see
``kernels.resolve_backend``), and the forward skips its data-dependent input check (``layers.ops.is_exporting``).

Nothing here depends on the model family: a family whose forward is traceable exports as is. A family that needs
a different example input registers it in :data:`EXAMPLE_INPUTS`.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = ["FORMATS", "EXAMPLE_INPUTS", "export_model", "example_input", "inference_form", "check_export"]

FORMATS = ("onnx", "torchscript", "exported-program")
ONNX_OPSET = 17

# family name -> fn(model, batch) giving an example input batch; the default is random_inputs (images, or event
# frames [B, T, 2, H, W] for 2-channel models)
EXAMPLE_INPUTS: dict[str, Callable[[nn.Module, int], torch.Tensor]] = {}


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    fn = EXAMPLE_INPUTS.get(getattr(model, "model_family", ""))
    if fn is not None:
        return fn(model, batch)
    from .training.inputs import random_inputs

    return random_inputs(model, batch, 0)[0]


def inference_form(model: nn.Module) -> nn.Module:
    """Eval-mode copy with BN and RepConvs folded and no gradients (what is exported), in NCHW layout: an ONNX
    graph is NCHW, and the eager copy it is checked against must round as it does (with channels_last a V3
    quantiser input at a k + 0.5 tie can round the other way)."""
    from .inference import prepare_inference

    return prepare_inference(model, fold=True, channels_last=False)


def _write_onnx(model, x, path: str) -> None:
    kw = dict(input_names=["input"], output_names=["logits"], opset_version=ONNX_OPSET)
    try:  # the TorchScript-based exporter: seconds, where the dynamo one takes minutes on these models
        torch.onnx.export(model, (x,), path, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kw)
    except TypeError:  # a torch without the legacy exporter
        torch.onnx.export(model, (x,), path, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), **kw)


def _write_torchscript(model, x, path: str) -> None:
    torch.jit.save(torch.jit.trace(model, (x,), check_trace=False), path)


def _exported_program(model, x):
    return torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))


def _write_exported(model, x, path: str) -> None:
    buf = io.BytesIO()  # through a buffer: torch.export.save wants a name ending in .pt2, the temporary file's does not
    torch.export.save(_exported_program(model, x), buf)
    Path(path).write_bytes(buf.getvalue())


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "exported-program": _write_exported}


def _load_runner(fmt: str, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function running the exported file on a batch (ONNX through onnxruntime)."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    if fmt == "torchscript":
        m = torch.jit.load(path, map_location="cpu")
        return lambda x: m(x)
    m = torch.export.load(io.BytesIO(Path(path).read_bytes())).module()
    return lambda x: m(x)


@torch.no_grad()
def check_export(model: nn.Module, fmt: str, path: str | os.PathLike, inputs: torch.Tensor) -> float:
    """Largest absolute logit difference between the exported file and the (inference-form) ``model`` on
    ``inputs``, run as one batch (its size need not be the export's example batch: the batch is dynamic)."""
    run = _load_runner(fmt, str(path))
    ref = model.eval()(inputs.float())
    got = run(inputs.float())
    if got.shape != ref.shape:
        raise RuntimeError(f"the exported {fmt} file returns shape {tuple(got.shape)}, the model {tuple(ref.shape)}")
    return float((got.float() - ref.float()).abs().max())


def export_model(model: nn.Module, fmt: str, out: str | os.PathLike, *, example: torch.Tensor | None = None,
                 overwrite: bool = False, check_inputs: torch.Tensor | None = None) -> dict:
    """Write ``model``'s inference form to ``out`` as ``fmt`` (onnx | torchscript | exported-program), atomically
    (a temporary file renamed into place); an existing ``out`` is refused unless ``overwrite``.

    Returns ``{"path", "format", "input_shape", "max_abs_diff"}``: the largest logit difference between the file
    and the eager inference form on ``check_inputs`` (default: the example batch), when it could be run (ONNX
    needs onnxruntime; None otherwise).
    """
    from .checkpoint import atomic_write_bytes

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401 - torch.onnx.export needs it
        except ImportError:
            raise ImportError("ONNX export needs the onnx package: pip install 'spikedriven[export]'") from None
    form = inference_form(model)
    x = (example if example is not None else example_input(form)).float()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input checks: Python ifs on static shapes
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's note on the TorchScript-based ONNX exporter
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write_bytes(out, lambda tmp: _WRITERS[fmt](form, x, tmp))
    diff = None
    try:
        diff = check_export(form, fmt, out, check_inputs if check_inputs is not None else x)
    except ImportError:  # onnxruntime missing: the file is written, only unchecked
        pass
    return {"path": str(out), "format": fmt, "input_shape": ["batch", *x.shape[1:]], "max_abs_diff": diff}
