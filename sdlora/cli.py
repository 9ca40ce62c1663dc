"""`sdlora` command line: a thin shell over the library.

Each subcommand lives in its own module under `sdlora.commands` with `register(subparsers)`, which adds its
parser and sets `handler=run`. Exit codes (DESIGN.md): 0 success, 2 bad input (`SdloraError`), 1 a failure during
work; 130 when a second Ctrl-C aborts (the first one stops training after the current step, saves, and exits 0).
Errors are one line on stderr; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from sdlora import __version__
from sdlora.errors import SdloraError
from sdlora.text import printable

# Subcommand modules, in the order `sdlora --help` lists them.
COMMAND_MODULES = ["train", "generate", "inspect", "convert", "merge", "resize", "dataset", "models", "caption",
                   "queue", "grid"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdlora", description="Stable Diffusion LoRA trainer.",
        epilog="exit codes: 0 success; 2 bad input (one line naming the key or file); 1 a failure during work; "
               "130 aborted by a second Ctrl-C (the first stops training after the step and saves, exit 0)")
    parser.add_argument("--version", action="version", version=f"sdlora {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sdlora.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sdlora.commands.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    from sdlora.commands import helptext

    helptext.apply(sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug may come anywhere on the line.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
    try:
        if not os.environ.get("SDLORA_SKIP_VERSION_CHECK"):
            from sdlora.versions import check_versions

            check_versions()
        return int(args.handler(args) or 0)
    except SdloraError as exc:
        if debug:
            raise
        print(f"sdlora {args.command}: error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (the first stops training cleanly, saves and exits 0)
        print(f"sdlora {args.command}: interrupted; nothing saved since the last checkpoint", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report a Ctrl-C'd command
    except Exception as exc:  # a failure during work: one line, exit 1
        if debug:
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"sdlora {args.command}: failed: {type(exc).__name__}: {detail} (rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1


def _one_line_warnings(command: str, default):
    """sdlora's own warnings (a skipped key, layers the model lacks) as one line each, like its errors."""
    package = os.path.dirname(os.path.abspath(__file__))

    def show(message, category, filename, lineno, file=None, line=None):
        if not os.path.abspath(filename).startswith(package + os.sep):
            return default(message, category, filename, lineno, file, line)
        print(f"sdlora {command}: warning: {printable(str(message))}", file=file or sys.stderr)
    return show


if __name__ == "__main__":
    sys.exit(main())
