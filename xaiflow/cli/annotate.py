"""``xaiflow annotate``: serve the expert annotation page of a dataset for one annotator."""

from __future__ import annotations

import webbrowser
from typing import Optional

import typer

from xaiflow.cli.common import WorkspaceOption, console, dataset_option, emit, out, publish, reporting_errors

ANNOTATOR_HELP = "who annotates: 1-64 letters, digits, '_', '.', '-' (initials or a staff id); stored with each answer"


def annotate(
    workspace: str = WorkspaceOption,
    dataset: Optional[str] = dataset_option(),
    annotator: str = typer.Option(..., "--annotator", help=ANNOTATOR_HELP),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="port on 127.0.0.1 (default: a free one)"),
    split: Optional[str] = typer.Option(None, "--split", help="annotate only this split (default: every sample)"),
    no_browser: bool = typer.Option(False, "--no-browser", help="print the URL without opening a browser"),
) -> None:
    """Serve the expert annotation page on 127.0.0.1 until Ctrl-C: the images one at a time (random order,
    stratified by class, label and model hidden); the expert picks a class with a confidence and paints
    the regions that decided it. Answers go to annotations/<dataset>; a new session resumes where the
    last one stopped. Set $XAIFLOW_ANNOTATE_AUTH_STRING=user:password for basic auth instead of a token."""
    from xaiflow.annotate.server import AnnotationServer, auth_from_env
    from xaiflow.annotate.session import AnnotationSession

    with reporting_errors():
        session = AnnotationSession(workspace, dataset, annotator, split=split)
        if session.next_position() is None:
            out.print(f"{annotator} has annotated all {session.total} images of {session.dataset}"
                      f"{f' ({split})' if split else ''}; nothing left to show")
            return
        server = AnnotationServer(session, port=port, auth=auth_from_env())
        interrupted = False
        try:
            emit(url=server.url, dataset=session.dataset, annotator=annotator, done=session.n_done,
                 total=session.total)
            publish()  # --json: the address now, the server runs until Ctrl-C
            out.print(f"annotating {session.dataset} as {annotator}: {session.n_done} of {session.total} done")
            out.print(f"open {server.url}", soft_wrap=True, highlight=False, markup=False)
            if server.auth is not None:
                out.print("log in with the user and password of $XAIFLOW_ANNOTATE_AUTH_STRING")
            out.print("every submission is stored at once; stop with Ctrl-C")
            if not no_browser:
                webbrowser.open(server.url)
            server.serve_forever()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            server.close()  # waits for a submission being written
        if interrupted:
            console.print(f"[yellow]stopped[/]: {session.n_done} of {session.total} annotated by {annotator}, "
                          "all stored; run the command again to go on")
            raise typer.Exit(code=130)
