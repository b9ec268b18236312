"""``spikedriven``: the command line, one module per command, on top of the library (which never imports it).

Each command module has ``register(subparsers)``; parsers are built without importing torch, and a command
imports what it needs when it runs. Nothing reaches the user as a traceback: a user's mistake (a bad value, a
missing or damaged file, a busy run folder) ends in one line on stderr and exit code 2; an unexpected internal
error in one line with a hint and exit code 1 (``SPIKEDRIVEN_TRACEBACK=1`` re-raises it with its traceback).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

COMMANDS = ("models", "forward", "verify", "convert", "train", "energy", "viz", "infer", "stream", "export")

# what a user's mistake raises (bad values, files, busy folders, diverged training, a missing optional package)
USER_ERRORS = (ValueError, TypeError, KeyError, LookupError, OSError, RuntimeError, ArithmeticError, ImportError,
               EOFError)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block): ``spikedriven train: error: ... (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    p = _Parser(prog="spikedriven", description="Spike-driven Transformer family: models, training, "
                "evaluation, energy, verification and event-driven inference.")
    p.add_argument("--version", action="version", version=f"spikedriven {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    p.commands = sub.choices  # name -> its parser (errors about its arguments are reported by it)
    return p


def one_line(e: BaseException) -> str:
    """An exception's message on one line. An error raised inside a DataLoader worker arrives wrapped in a
    "Caught X in DataLoader worker process N. Original Traceback ..." text: the original message is taken out."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    text = str(msg)
    if "Original Traceback" in text:
        from ..data.static import worker_error_message

        text = worker_error_message(text)
    out = ""
    for ln in (ln.strip() for ln in text.splitlines()):
        if ln:
            out += ln if not out else (" " if out.endswith(":") else "; ") + ln
    return out or type(e).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"spikedriven: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand's usage, not the top-level one
        getattr(parser, "commands", {}).get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(os.environ.get("SPIKEDRIVEN_TRACEBACK"))
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"spikedriven {args.command}: interrupted", file=sys.stderr)
            return 130
        except USER_ERRORS as e:
            if debug:
                raise
            print(f"spikedriven {args.command}: error: {one_line(e)}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001 - never a raw traceback
            if debug:
                raise
            print(f"spikedriven {args.command}: internal error: {type(e).__name__}: {one_line(e)} (a bug or an "
                  f"unhandled case; SPIKEDRIVEN_TRACEBACK=1 shows the traceback)", file=sys.stderr)
            return 1
