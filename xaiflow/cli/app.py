"""The ``xaiflow`` app: global options and the commands of every module, registered in one place."""

from __future__ import annotations

import logging

import typer

import xaiflow
from xaiflow.cli import (
    annotate,
    data,
    explain,
    human,
    importance,
    inspection,
    models,
    probe,
    query,
    report,
    studies,
)
from xaiflow.cli.common import GlobalOptionsGroup, emit, json_mode, out, reporting_errors
from xaiflow.plugins import load_plugins

app = typer.Typer(help="xaiflow: what did the network learn from these micrographs? Every command takes the "
                       "workspace as -w/--workspace (or $XAIFLOW_WORKSPACE); config-driven commands take the run "
                       "config as their first argument; the global options -v/--verbose and --json (one JSON "
                       "document on stdout, for scripts) work anywhere on the line.",
                  cls=GlobalOptionsGroup, no_args_is_help=True, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        if json_mode():
            emit(version=xaiflow.__version__)
        else:
            out.print(f"xaiflow {xaiflow.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log details (and Dask's own messages)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as one JSON document on stdout (errors "
                                                       "as {\"error\": ...}); progress and logs go to stderr"),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("xaiflow").setLevel(logging.INFO if verbose else logging.WARNING)
    # distributed configures its own loggers at INFO when imported; keep the terminal for results
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.WARNING)
    with reporting_errors():
        load_plugins()  # a lab's own methods, metrics, extractors, sources ($XAIFLOW_PLUGINS)


for command in (data.ingest, data.info, models.train, models.models, models.predict, explain.attribute, explain.show,
                explain.evaluate, studies.features, report.shortcut, report.report,
                inspection.uncertainty, inspection.adversarial, inspection.concepts, probe.probe,
                importance.importance, annotate.annotate, human.human):
    app.command()(command)
app.add_typer(query.query_app, name="query")
app.add_typer(studies.study_app, name="study")
