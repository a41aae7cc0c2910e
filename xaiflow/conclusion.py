"""The plain-language conclusion of a shortcut verdict, for a materials scientist.

:func:`conclusion` turns a :class:`~xaiflow.shortcut.ShortcutReport` into a short paragraph:
what the model relies on, how sure the test is (the deciding number with its interval and
chance level), and what to do next. It opens the HTML report and is printed by
``xaiflow shortcut``; the numbers behind it are in the report's shortcut section.
"""

from __future__ import annotations

from xaiflow.report_units import UNITS
from xaiflow.shortcut import (
    INCONCLUSIVE,
    SHORTCUT,
    STRUCTURE,
    ShortcutReport,
    collapses,
    follows,
)


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def _names(classes: list[str], fallback: str) -> str:
    return " and ".join(c.replace("_", " ") for c in classes) or fallback


def _swap_sentence(rep: ShortcutReport, suspect: str) -> str | None:
    """How the content swap decided, or None when it did not."""
    swap, th = rep.content_swap, rep.thresholds
    if not swap or not swap.get("n_pairs"):
        return None
    for key, what in (("follow_donor", "the donor image's class"), ("follow_donor_prediction",
                                                                   "the class the model gives the donor image")):
        f = swap[key]
        if follows(f, th):
            return (f"The model's predictions follow the content of the {suspect}: pasting the {suspect} of an image "
                    f"of another class into an image changes the prediction to {what} in {_pct(f['rate'])} "
                    f"(95% CI {_pct(f['ci'][0])}-{_pct(f['ci'][1])}) of {f['n']} swaps, against "
                    f"{_pct(f['chance'])} for the unedited images and {_pct(f['reference'])} with the {suspect} of "
                    "a random image.")
    if collapses(swap, th):
        c = swap["conditions"]
        return (f"The model's predictions depend on the content of the {suspect}: with the {suspect} of an image of "
                f"another class pasted in, its balanced accuracy falls from {c['original']['balanced_accuracy']:.2f} "
                f"to {c['swap']['balanced_accuracy']:.2f} (with that of a random image, to "
                f"{c['random_image']['balanced_accuracy']:.2f}).")
    return None


def _masks(rep: ShortcutReport) -> str:
    evidence, suspect = _names(rep.evidence, "class-defining structures"), _names(rep.suspect, "suspect region")
    drops = rep.ablation.get("drop", {})
    if rep.verdict == SHORTCUT:
        first = _swap_sentence(rep, suspect)
        if first is None:
            split = rep.shortcut_split
            if split.get("usable") and split.get("gap", 0) >= rep.thresholds["split_gap"]:
                first = (f"The model is right far more often where the {suspect} agrees with the class (balanced "
                         f"accuracy {split['balanced_accuracy_with']:.2f}) than where it does not "
                         f"({split['balanced_accuracy_without']:.2f}).")
            else:
                first = (f"Moving the {suspect} to other positions lowers the model's balanced accuracy by "
                         f"{drops.get('shortcut_moved', float('nan')):.2f}.")
        return (f"{first} It has probably learned the {suspect}, not the {evidence}. Next: remove or blank the "
                f"{suspect} (crop it off at ingest, or train on images without it), retrain, and run this check "
                "again; do not trust its attribution maps as a picture of the microstructure until then.")
    if rep.verdict == STRUCTURE:
        swap = rep.content_swap
        extra = ""
        if swap and swap.get("n_pairs"):
            f = swap["follow_donor"]
            extra = (f" Swapping the {suspect} between images of different classes changes little: the prediction "
                     f"follows the donor's class in {_pct(f['rate'])} of {f['n']} swaps (unedited images "
                     f"{_pct(f['chance'])}).")
        return (f"The model relies on the {evidence}: removing those regions lowers its balanced accuracy from "
                f"{rep.balanced_accuracy:.2f} by {drops.get('structure', float('nan')):.2f}.{extra} Next: check on "
                "held-out images whether its maps point at the same regions an expert would (`xaiflow evaluate`, "
                "the localization metrics).")
    return _inconclusive(rep, f"what it uses ({evidence} or {suspect})")


def _inconclusive(rep: ShortcutReport, what: str) -> str:
    chance = rep.chance
    if rep.balanced_accuracy < chance + rep.thresholds["above_chance"]:
        return (f"The model barely beats chance on these images (balanced accuracy {rep.balanced_accuracy:.2f}, "
                f"chance {chance:.2f}), and nothing shows it following a suspect region, so there is little learned "
                f"behaviour to explain. Next: check the labels and the split, train longer or on more data, then run "
                "this check again.")
    return (f"The tests cannot tell {what} the model relies on: neither removing the evidence nor changing the "
            "suspect region moves its balanced accuracy past the thresholds. Next: read the numbers below, and "
            "consider a control model trained without the suspect information.")


def _metadata(rep: ShortcutReport) -> str:
    meta = rep.metadata
    by = ("pixel size (magnification)" if "um_per_px" in meta["by"]
          else UNITS.get(meta["by"], (str(meta["by"]).replace("_", " "), ""))[0])
    base = meta["scale_baseline"]["balanced_accuracy"]
    if rep.verdict == SHORTCUT and rep.compare and \
            rep.balanced_accuracy - rep.compare["balanced_accuracy"] >= rep.thresholds["compare_drop"]:
        return (f"A control model trained on images resampled to one pixel size reaches balanced accuracy "
                f"{rep.compare['balanced_accuracy']:.2f} against this model's {rep.balanced_accuracy:.2f}: this model "
                f"has probably learned the {by}, not only the microstructure. Next: prefer the control model, or "
                "train on images of one pixel size.")
    if rep.verdict == SHORTCUT:
        return (f"The model's predictions follow the {by} more closely than the true classes do (Cramer's V "
                f"{meta['cramers_v_predicted']:.2f} against {meta['cramers_v_label']:.2f}); a guess from the {by} "
                f"alone reaches balanced accuracy {base:.2f}, the model {rep.balanced_accuracy:.2f}. It has probably "
                f"learned the {by}, not the microstructure. Next: train a control model on images resampled to one "
                "pixel size (geometry target_um_per_px) and pass it as --compare-model.")
    if rep.verdict == STRUCTURE:
        return (f"The model does better than a guess from the {by} alone (balanced accuracy "
                f"{rep.balanced_accuracy:.2f} against {base:.2f}) and its predictions do not follow the {by} more "
                "than the classes do: it uses more than the magnification. Next: with expert masks, check whether "
                "its maps point at the class-defining structures.")
    return _inconclusive(rep, f"whether the microstructure or the {by}")


def conclusion(rep: ShortcutReport) -> str:
    """A short paragraph for a materials scientist: what the model relies on, how sure, what next
    (and that the judged images include its training images, when they do)."""
    text = _masks(rep) if rep.kind == "masks" else _metadata(rep)
    if rep.verdict == INCONCLUSIVE and rep.kind == "masks" and not rep.suspect:
        text += " No suspect mask class was named, so no content swap was run (--suspect)."
    if rep.training_overlap:
        seen = sum(rep.training_overlap.values())
        text += (f" Caution: {seen} of the {rep.n_samples} judged images were used to train or validate the model, "
                 "which flatters it.")
    return text
