"""Talking to a SuperLink's Control API through Flower's own ``flwr`` CLI.

The CLI reads its connections from ``$FLWR_HOME/config.toml``. fedmed keeps a
private FLWR_HOME per coordinator state folder or per submitting user (never
``~/.flwr``) holding one connection named ``fedmed`` — the coordinator's address
and the federation CA — so every ``flwr`` call here names that connection and
nothing else in the user's Flower set-up is read or changed.

Flower's ``flwr run`` rewrites a legacy ``[tool.flwr.federations]`` section of the
app folder it is given (measured: it comments it out in place), so fedmed never
points it at a federation folder from the repository: see :mod:`fedmed.deploy.submit`.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedmed.deploy.errors import DeployError
from fedmed.deploy.processes import flower_command, flower_env

CONNECTION = "fedmed"


@dataclass(frozen=True)
class Connection:
    """A private FLWR_HOME with one connection to a coordinator."""

    home: Path
    address: str
    ca_cert: Path

    def write(self) -> Connection:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = "# Written by fedmed: the coordinator this FLWR_HOME talks to.\n"
        config += tomli_w.dumps({"superlink": {
            "default": CONNECTION,
            CONNECTION: {"address": self.address, "root-certificates": str(self.ca_cert)},
        }})
        (self.home / "config.toml").write_text(config, encoding="utf-8")
        return self

    @classmethod
    def read(cls, home: Path) -> Connection:
        """The connection a coordinator wrote into its FLWR_HOME (see :meth:`write`)."""
        path = Path(home) / "config.toml"
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))["superlink"][CONNECTION]
            return cls(Path(home), str(table["address"]), Path(table["root-certificates"]))
        except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
            raise DeployError(f"{path}: no fedmed connection to a coordinator ({exc})") from None

    def env(self) -> dict[str, str]:
        """The environment of a ``flwr`` call: this home, no runtime installs, no colours."""
        return flower_env(
            FLWR_HOME=str(self.home),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            NO_COLOR="1",
            TERM="dumb",
            COLUMNS="200",
        )

    def run(self, args: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``flwr ARGS`` with this connection; DeployError if it hangs past ``timeout``."""
        try:
            return subprocess.run(
                [flower_command("flwr"), *args],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise DeployError(
                f"flwr {' '.join(args[:2])} got no answer from {self.address} in {timeout:.0f} s"
            ) from None

    def run_json(self, args: Sequence[str], timeout: float = 60.0) -> dict[str, Any]:
        """``flwr ARGS --format json``, parsed; the CLI's own error message on failure."""
        result = self.run([*args, "--format", "json"], timeout)
        start = result.stdout.find("{")
        try:
            document = json.loads(result.stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            document = {}
        if not isinstance(document, dict) or "success" not in document:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise DeployError(
                f"flwr {' '.join(args[:2])} failed: {detail[-1] if detail else 'no output'}"
            )
        return document
