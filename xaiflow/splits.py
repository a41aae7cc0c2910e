"""Train/val/test assignment by specimen, stratified by label, reproducible by seed.

Near-duplicate images of one specimen must never sit in two splits (that leaks), so whole
groups (specimens) are assigned. Real specimens often hold images of several classes (34 of
the 37 UHCS specimens do), so stratification works on each group's class counts: groups
are placed one by one, rarest classes first, into the split that brings every class's and
the overall split sizes closest to the requested fractions. When a class has at least as
many specimens as there are splits, every split gets at least one of them, so rare classes
can be evaluated.

A source may give the splits itself (:func:`given_splits`: a split column of the CSV, the
synthetic source's ``splits``), e.g. a held-out design made by the lab; ingest then keeps them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from xaiflow.errors import XaiflowError
from xaiflow.schema import SPLIT, SPLITS
from xaiflow.sources.base import SampleRef


class SplitError(XaiflowError):
    """The splits a source gives are unusable; the message names the samples (file/row) and values."""


def _where(ref: SampleRef) -> str:
    return ref.origin or ref.uri or ref.id


def given_splits(refs: Sequence[SampleRef], limit: int = 5) -> list[str] | None:
    """The split each sample's source gives (its metadata ``split``), in order; None when no sample
    carries one (ingest then splits by specimen). A source that gives a split for some samples must
    give one for all, each must be one of :data:`~xaiflow.schema.SPLITS`, and the images of one
    specimen (group) must share one: otherwise a :class:`SplitError` names the offending samples."""
    if not any(SPLIT in r.metadata for r in refs):
        return None
    values = [r.metadata.get(SPLIT) for r in refs]
    missing = [r for r, v in zip(refs, values) if v is None or v == ""]
    if missing:
        shown = "; ".join(_where(r) for r in missing[:limit]) + (" ..." if len(missing) > limit else "")
        raise SplitError(f"the split is given for {len(refs) - len(missing)} of {len(refs)} samples but not for "
                         f"{len(missing)}: {shown}; give every sample a split (train, val or test), or none and "
                         "let ingest split by specimen")
    bad = [(r, v) for r, v in zip(refs, values) if v not in SPLITS]
    if bad:
        shown = "; ".join(f"{_where(r)}: {v!r}" for r, v in bad[:limit]) + (" ..." if len(bad) > limit else "")
        raise SplitError(f"{len(bad)} sample(s) with a split other than {', '.join(SPLITS)}: {shown}")
    first: dict[str, SampleRef] = {}
    for r in refs:  # a specimen's images are near-duplicates: in two splits they would leak
        other = first.setdefault(r.group, r)
        if other.metadata[SPLIT] != r.metadata[SPLIT]:
            raise SplitError(f"specimen {r.group!r} is in two splits: {other.metadata[SPLIT]} ({_where(other)}) and "
                             f"{r.metadata[SPLIT]} ({_where(r)}); give all images of a specimen one split")
    return [str(v) for v in values]


def assign_splits(groups: list[str], labels: list[str], fractions: dict[str, float], seed: int) -> list[str]:
    """Split name per sample (same order as ``groups``/``labels``)."""
    names = [s for s, f in fractions.items() if f > 0]
    frac = np.array([fractions[s] for s in names])
    classes = sorted(set(labels))
    cidx = {c: i for i, c in enumerate(classes)}
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(classes)))
    for g, lab in zip(groups, labels):
        counts[g][cidx[lab]] += 1
    total = sum(counts.values())
    n_total = total.sum()
    class_groups = Counter(c for g in counts for c in np.flatnonzero(counts[g]))

    rng = np.random.default_rng(seed)
    order = list(counts)
    rng.shuffle(order)
    # groups holding the rarest classes first; the seed orders groups within that
    order.sort(key=lambda g: min(total[np.flatnonzero(counts[g])]))

    placed = np.zeros((len(names), len(classes)))
    split_of: dict[str, int] = {}
    seeded: set[tuple[int, int]] = set()  # (class, split) pairs that already hold a group
    for g in order:
        c = counts[g]
        # splits still missing this group's rarest class (if that class can cover every split)
        need: list[int] = []
        for k in sorted(np.flatnonzero(c), key=lambda k: class_groups[k]):
            if class_groups[k] >= len(names):
                need = [s for s in range(len(names)) if (k, s) not in seeded]
                if need:
                    break
        candidates = need or range(len(names))
        best, best_cost = None, np.inf
        for s in candidates:
            trial = placed.copy()
            trial[s] += c
            # per-class fractions (rare classes count as much as common ones) and split sizes
            cost = ((trial / total - frac[:, None]) ** 2).sum()
            cost += (((trial.sum(1) / n_total) - frac) ** 2).sum() * len(classes)
            if cost < best_cost:
                best, best_cost = s, cost
        placed[best] += c
        split_of[g] = best
        seeded.update((k, best) for k in np.flatnonzero(c))
    return [names[split_of[g]] for g in groups]
