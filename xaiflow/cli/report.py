"""``xaiflow shortcut`` and ``xaiflow report``: the verdict and the HTML report of a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from xaiflow.cli.common import (WorkspaceOption, dataset_option, emit, float_list, model_option,
                                reporting_errors, say, split_list, warn, wrote)

COMPARE_HELP = "a model trained on images resampled to one pixel size (id or unique prefix)"
BY_HELP = "metadata that should not matter, binned (no masks; default source_um_per_px)"
BINS_HELP = "comma-separated bin edges (default: half decades)"
EVIDENCE_HELP = ("mask classes whose removal should hurt the model, e.g. carbide_network,spheroidite, or per image "
                 "label network=carbide_network,*=spheroidite (default: structure, for synthetic masks)")
SUSPECT_HELP = ("mask classes whose content should not matter (content swap), e.g. databar (default: shortcut, for "
                "synthetic masks; none otherwise)")
CONFIG_HELP = "run config whose `shortcut:` section gives these settings (options override it)"

EvidenceOption = typer.Option(None, "--evidence", help=EVIDENCE_HELP)
SuspectOption = typer.Option(None, "--suspect", help=SUSPECT_HELP)
ConfigOption = typer.Option(None, "--config", help=CONFIG_HELP)
PairsOption = typer.Option(None, "--pairs-per-sample", min=1, max=50, help="content swaps per judged sample "
                                                                            "(default 2)")
SeedOption = typer.Option(None, "--seed", help="seed of the swap pairing, random content and bootstrap (default 0)")


def shortcut_options(config: Optional[Path], evidence: Optional[str], suspect: Optional[str], pairs: Optional[int],
                     seed: Optional[int]) -> dict[str, Any]:
    """The evidence/suspect settings of the verdict: the config's `shortcut:` section, then the options."""
    from xaiflow.config import ShortcutConfig, load_section

    base = (load_section(config, "shortcut") if config else ShortcutConfig()).model_dump()
    given = {"evidence": evidence, "suspect": suspect, "pairs_per_sample": pairs, "seed": seed}
    return {**base, **{k: v for k, v in given.items() if v is not None}}


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        warn(warning)


def shortcut(
    workspace: str = WorkspaceOption,
    model: Optional[str] = model_option(),
    dataset: Optional[str] = dataset_option(),
    evidence: Optional[str] = EvidenceOption,
    suspect: Optional[str] = SuspectOption,
    run_config: Optional[Path] = ConfigOption,
    pairs_per_sample: Optional[int] = PairsOption,
    seed: Optional[int] = SeedOption,
    compare_model: Optional[str] = typer.Option(None, "--compare-model", help=COMPARE_HELP),
    by: Optional[str] = typer.Option(None, "--by", help=BY_HELP),
    bins: Optional[str] = typer.Option(None, "--bins", help=BINS_HELP),
    split: str = typer.Option("test", "--split", help="samples judged without masks"),
) -> None:
    """Shortcut verdict: does the model use the evidence (e.g. the microstructure) or a suspect region (a data bar)?
    With --json: the whole report (verdict, reasons, every measurement) as one JSON document."""
    from xaiflow.conclusion import conclusion
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.shortcut import shortcut_report

    with reporting_errors():
        options = shortcut_options(run_config, evidence, suspect, pairs_per_sample, seed)
        catalog = ModelCatalog(workspace)
        entry = catalog.resolve(model, dataset=dataset)
        compare_model = catalog.get(compare_model).model_id if compare_model else None  # a prefix: the full id
        rep = shortcut_report(workspace, entry.model_id, dataset, compare_model=compare_model, by=by,
                              bins=float_list(bins, "--bins"), split=split, **options)
        print_warnings(rep.warnings)
        say(f"[bold]{rep.verdict}[/] ({rep.kind} evidence, {rep.n_samples} samples, balanced accuracy "
            f"{rep.balanced_accuracy:.3f}, chance {rep.chance:.3f}, accuracy {rep.accuracy:.3f})",
            **rep.to_dict(), conclusion=conclusion(rep))
        say(conclusion(rep), markup=False)
        for reason in rep.reasons:
            say(f"  - {reason}", markup=False)


def report(
    workspace: str = WorkspaceOption,
    model: Optional[str] = model_option(),
    dataset: Optional[str] = dataset_option(),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help="folder (default: <workspace>.reports/<model>)"),
    evidence: Optional[str] = EvidenceOption,
    suspect: Optional[str] = SuspectOption,
    run_config: Optional[Path] = ConfigOption,
    pairs_per_sample: Optional[int] = PairsOption,
    seed: Optional[int] = SeedOption,
    compare_model: Optional[str] = typer.Option(None, "--compare-model", help=COMPARE_HELP),
    methods: Optional[str] = typer.Option(None, "--methods", help="saliency keys (default: all stored)"),
    by: Optional[str] = typer.Option(None, "--by", help=BY_HELP),
    bins: Optional[str] = typer.Option(None, "--bins", help=BINS_HELP),
) -> None:
    """Self-contained HTML report: conclusion, shortcut verdict, overlays, class means, metrics, agreement, mask mass."""
    from xaiflow.models.catalog import ModelCatalog
    from xaiflow.report import write_report

    with reporting_errors():
        options = shortcut_options(run_config, evidence, suspect, pairs_per_sample, seed)
        catalog = ModelCatalog(workspace)
        entry = catalog.resolve(model, dataset=dataset)
        compare_model = catalog.get(compare_model).model_id if compare_model else None  # a prefix: the full id
        path = write_report(workspace, entry.model_id, dataset, output, compare_model=compare_model,
                            methods=split_list(methods), by=by, bins=float_list(bins, "--bins"),
                            shortcut_options=options)
        print_warnings(json.loads((path.parent / "shortcut.json").read_text())["warnings"])
        emit(report=str(path))
        wrote(path)
