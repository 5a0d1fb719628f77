"""The ``fedmed`` command line.

Every sub-command lives in its own module with a ``register(subparsers)``
function. Errors the user can fix (:class:`fedmed.errors.FedmedError`) are printed
as one line and exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import fedmed
from fedmed.errors import FedmedError

COMMAND_MODULES = (
    "fedmed.commands.run",
    "fedmed.commands.privacy",
    "fedmed.commands.site",
    "fedmed.commands.audit",
    "fedmed.commands.baseline",
    "fedmed.commands.generalization",
    "fedmed.commands.deploy",
    "fedmed.commands.models",
    "fedmed.commands.retrieve",
    "fedmed.commands.deid",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmed",
        description="Federated, privacy-preserving training for hospitals: Flower federations "
        "with DP-SGD, per-site privacy ledgers, node-side de-identification and signed audits.",
    )
    parser.add_argument("--version", action="version", version=f"fedmed {fedmed.__version__}")
    parser.add_argument(
        "--debug", action="store_true",
        help="show tracebacks on errors, and Flower's, Ray's and the simulated nodes' messages "
        "(otherwise in the run's simulation.log and Ray's logs)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FedmedError as exc:
        if args.debug:
            raise
        print(f"fedmed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedmed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
