"""``xaiflow human``: humans and the model side by side (agreement of annotators, human class vs the
model's, and each attribution method's maps against the painted regions, with intervals and chance)."""

from __future__ import annotations

import typer

from xaiflow.cli.common import (
    WorkspaceOption,
    dataset_option,
    emit,
    json_mode,
    model_option,
    out,
    reporting_errors,
    rows_table,
)

MASKS_HELP = ("also compare with imported masks (masks/<dataset>) as annotator 'masks': the mask classes that make "
              "the region, e.g. 'structure', 'carbide+network' or per image class "
              "'network=carbide_network,*=particles' ('' or 'default': every class but the first)")


def human(
    workspace: str = WorkspaceOption,
    dataset: str | None = dataset_option(),
    model: str | None = model_option(),
    from_masks: str | None = typer.Option(None, "--from-masks", help=MASKS_HELP),
    methods: str | None = typer.Option(None, "--methods", help="comma-separated method keys (default: all stored)"),
    absolute: bool = typer.Option(False, "--absolute", help="score |map| instead of the signed map"),
    n_boot: int = typer.Option(1000, "--n-boot", min=10, max=100_000, help="bootstrap resamples of the samples"),
    seed: int = typer.Option(0, "--seed", help="seed of the bootstrap"),
) -> None:
    """Do experts agree with each other and with the model, and do the maps point where they painted? Reads
    annotations/<dataset> (`xaiflow annotate`) and/or imported masks, and the stored maps of the model; stores
    human/<dataset>/<model> and prints the tables. Every map number comes with a bootstrap 95% interval and
    its chance level; 'beats chance' means the interval lies above the chance level. With --json: the whole
    study as one JSON document."""
    from xaiflow import human as hm
    from xaiflow.cli.common import split_list

    with reporting_errors():
        selection = None if from_masks in (None, "", "default") else from_masks
        study = hm.run_study(workspace, dataset, model, methods=split_list(methods), from_masks=selection,
                             use_masks=from_masks is not None, absolute=absolute, n_boot=n_boot, seed=seed)
    if json_mode():
        emit(**study.to_dict())
        return
    for title, rows, columns in hm.printed_tables(study):
        out.print(rows_table(rows, columns, title=title))
    for line in hm.conclusions(study):
        out.print(line, markup=False, highlight=False)
    out.print(f"stored {study.group}")
