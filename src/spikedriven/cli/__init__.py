"""``spikedriven``: the command line, one module per command, on top of the library (which never imports it).

Each command module has ``register(subparsers)``; parsers are built without importing torch, and a command
imports what it needs when it runs. A user's mistake ends in one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("models", "forward", "verify", "convert", "train", "energy", "viz", "infer")


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    p = argparse.ArgumentParser(prog="spikedriven", description="Spike-driven Transformer family: models, training, "
                                "evaluation, energy, verification and event-driven inference.")
    p.add_argument("--version", action="version", version=f"spikedriven {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("SPIKEDRIVEN_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"spikedriven {args.command}: error: {msg}", file=sys.stderr)
        return 2
