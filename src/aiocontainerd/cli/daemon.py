"""``aiocontainerd``: run the daemon, or print its default config.

    aiocontainerd [--config F] [--root D] [--state D] [--address A] [--log-level L]
    aiocontainerd config default
    aiocontainerd config validate F

Without ``--config``, ``/etc/aiocontainerd/config.toml`` is read if it exists
(containerd reads ``/etc/containerd/config.toml`` the same way). Flags override
the config file. SIGTERM and SIGINT stop the daemon cleanly.
Exit status: 0 after a clean stop, 1 when the config is invalid or start-up fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ..version import light_metadata

with light_metadata():   # betterproto2 asks its version at import: keep importlib.metadata out
    import betterproto2  # noqa: F401

from .. import builtins, log
from ..config import Config, ConfigError, dump, load
from ..daemon import Daemon, StartError
from ..metadata import SchemaError
from ..plugin import PluginError

logger = logging.getLogger("aiocontainerd")
DEFAULT_CONFIG = "/etc/aiocontainerd/config.toml"


class Failed(Exception):
    """The command failed: its message goes to stderr as ``Error: <message>``, exit status 1."""


async def _serve(config: Config) -> None:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    # The process is the daemon's: what survived start-up (modules, classes, plugins,
    # compiled protos) lives as long as it does. Out of the collector's generations, a
    # full collection no longer walks it - one took ~17 ms on a daemon serving CRI, a
    # stall of whichever request it landed in. (Not in Daemon.start: an embedding
    # program's objects are not ours to freeze.)
    gc.freeze()
    try:
        await stop.wait()
        logger.info("received signal, shutting down")
    finally:
        await daemon.stop()
    logger.info("aiocontainerd stopped")


def run(config_path: str | None, root: str | None, state: str | None, address: str | None,
        log_level: str | None) -> None:
    """Run the daemon until SIGTERM/SIGINT (the command without a subcommand)."""
    if config_path is None and os.path.exists(DEFAULT_CONFIG):
        config_path = DEFAULT_CONFIG
    try:
        config = load(config_path, builtins.config_types())
    except ConfigError as e:
        raise Failed(str(e)) from None
    if root:
        config.root = root
    if state:
        config.state = state
    if address:
        config.grpc = dataclasses.replace(config.grpc, address=address)
    if log_level:
        config.debug = dataclasses.replace(config.debug, level=log_level)
    log.setup(config.debug.level, config.debug.format)
    try:
        asyncio.run(_serve(config))
    except (StartError, PluginError, SchemaError) as e:
        logger.critical(str(e))
        raise Failed(str(e)) from None
    except Exception as e:  # a plugin's unexpected failure during start
        logger.critical("daemon failed", exc_info=True)
        raise Failed(str(e)) from None


def config_default() -> None:
    """Print the complete default configuration as TOML."""
    sys.stdout.write(dump(Config(), builtins.config_types()))


def config_validate(path: str) -> None:
    """Check a config file (and its imports); print nothing and exit 0 when valid."""
    try:
        load(path, builtins.config_types())
    except ConfigError as e:
        raise Failed(str(e)) from None


def parser() -> argparse.ArgumentParser:
    """The command line (argparse, not click: an idle daemon should not hold a CLI toolkit)."""
    p = argparse.ArgumentParser(
        prog="aiocontainerd",
        description="aiocontainerd: containerd re-made in Python on one asyncio event loop.")
    p.add_argument("--config", "-c", dest="config_path", metavar="FILE",
                   help="TOML config file (containerd version-3 shape) "
                        f"[default: {DEFAULT_CONFIG} if it exists].")
    p.add_argument("--root", help="Persistent data folder (overrides config 'root').")
    p.add_argument("--state", help="Runtime state folder (overrides config 'state').")
    p.add_argument("--address", "-a", help="gRPC unix socket path (overrides [grpc] address).")
    p.add_argument("--log-level", "-l", choices=sorted(log.LEVELS), metavar="LEVEL",
                   help="Log level: %(choices)s (overrides [debug] level).")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    config = commands.add_parser("config", help="Configuration helpers.",
                                 description="Configuration helpers.")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    config_commands.add_parser("default", help=config_default.__doc__, description=config_default.__doc__)
    validate = config_commands.add_parser("validate", help=config_validate.__doc__,
                                          description=config_validate.__doc__)
    validate.add_argument("path")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The ``aiocontainerd`` command; returns its exit status."""
    args = parser().parse_args(argv)
    try:
        if args.command is None:
            run(args.config_path, args.root, args.state, args.address, args.log_level)
        elif args.config_command == "default":
            config_default()
        else:
            config_validate(args.path)
    except Failed as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
