"""The ``xaiflow`` command line (typer): one module per group of commands, each a thin wrapper
over a library call; :mod:`xaiflow.cli.common` holds the argument convention every command
follows and the error handling. ``app`` is the console script's entry point."""

from xaiflow.cli.app import app

__all__ = ["app"]
