"""Train/val/test assignment by specimen, stratified by label, reproducible by seed.

Near-duplicate images of one specimen must never sit in two splits (that leaks), so whole
groups (specimens) are assigned. Real specimens often hold images of several classes (34 of
the 37 UHCS specimens do), so stratification works on each group's class counts: groups
are placed one by one, rarest classes first, into the split that brings every class's and
the overall split sizes closest to the requested fractions. When a class has at least as
many specimens as there are splits, every split gets at least one of them, so rare classes
can be evaluated.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np


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
