"""Run the ``xaiflow`` CLI in this test process: real exit codes, separate stdout/stderr.

A subprocess per call paid 3-5 s of imports (torch, xarray, dask, typer) each time; in-process
the app is parsed and run exactly as ``python -m xaiflow.cli ARGS`` would (click's standalone
mode: usage errors exit 2, ``typer.Exit`` codes kept), with ``sys.stdout``/``sys.stderr``
captured by typer's ``CliRunner``. What a separate process would have kept to itself is
restored after each call so that tests stay independent of their order:

* logging: the root handlers are emptied during the call, so the CLI's ``logging.basicConfig``
  writes log records to the captured stderr as in a real run; handlers and the levels of the
  loggers the CLI sets are put back afterwards;
* ``os.environ`` (the runtime unsets ``MALLOC_TRIM_THRESHOLD_``; Dask's nanny may set variables),
  the Dask config, the working directory and torch's thread count.

An exception the CLI does not handle gives exit code 1 and its traceback at the end of stderr,
as the interpreter would print it. A Dask client left open by a command fails the call.

One test (``tests/test_cli.py::test_installed_entry_point``) still runs the installed entry
point in a real subprocess, so packaging stays covered.
"""

from __future__ import annotations

import copy
import logging
import os
import traceback
from dataclasses import dataclass

import dask
import torch
from distributed import default_client
from typer.testing import CliRunner

from xaiflow.cli import app

#: loggers whose level ``xaiflow.cli.main`` sets
_CLI_LOGGERS = ("", "xaiflow", "distributed")


@dataclass
class CliResult:
    """What ``subprocess.run(..., capture_output=True, text=True)`` would return, minus the process."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(*args: str) -> CliResult:
    """``xaiflow ARGS`` in-process (arguments are converted with ``str``)."""
    argv = tuple(str(a) for a in args)
    root = logging.getLogger()
    handlers, levels = root.handlers[:], {n: logging.getLogger(n).level for n in _CLI_LOGGERS}
    environ, cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    dask_cfg = copy.deepcopy(dask.config.config)
    client_before = _default_client()
    root.handlers[:] = []
    try:
        res = CliRunner().invoke(app, list(argv), prog_name="xaiflow")
    finally:
        root.handlers[:] = handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        _restore_dict(os.environ, environ)
        os.chdir(cwd)
        _restore_dict(dask.config.config, dask_cfg)  # key by key: cluster threads may be reading it
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*res.exc_info))
    client_after = _default_client()
    assert client_after is client_before, f"xaiflow {' '.join(argv)} left a Dask client open: {client_after}"
    return CliResult(argv, res.exit_code, res.stdout, stderr)


def _restore_dict(current, saved: dict) -> None:
    """Make ``current`` (a dict or ``os.environ``) equal to ``saved`` without emptying it in between."""
    for key in set(current) - set(saved):
        del current[key]
    for key, value in saved.items():
        if current.get(key) != value:
            current[key] = value


def _default_client():
    """The current default ``distributed.Client``, None if there is none."""
    try:
        return default_client()
    except ValueError:
        return None
