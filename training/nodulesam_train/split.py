"""Patient-grouped, class-stratified train/val/test split (the LIDC data README's procedure).

Each patient has a vector (cases of class 0, cases of class 1, ..., 1). Patients are shuffled
with a seeded ``numpy.random.default_rng``, then stably sorted by decreasing number of cases.
Each patient goes to the split with the largest weighted relative deficit
``sum_k v_k (T_k - A_k) / T_k``, where ``T`` is the split's target share of the totals and ``A``
what it already holds. No patient is in two splits.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
PROPORTIONS = (1902, 265, 475)  # target case proportions (72.0 / 10.0 / 18.0 %)
SEED = 20240532


def stratified_group_split(patient_ids: Sequence[str], classes: Sequence[int],
                           proportions: Sequence[float] = PROPORTIONS,
                           names: Sequence[str] = SPLIT_NAMES, seed: int = SEED,
                           n_classes: int | None = None) -> list[str]:
    """The split name of every case (same order as ``patient_ids`` / ``classes``)."""
    patient_ids = [str(p) for p in patient_ids]
    classes = [int(c) for c in classes]
    if len(patient_ids) != len(classes):
        raise ValueError("patient_ids and classes differ in length")
    if not patient_ids:
        return []
    n_classes = n_classes or (max(classes) + 1)
    vectors: OrderedDict[str, np.ndarray] = OrderedDict()
    for pid in sorted(set(patient_ids)):
        vectors[pid] = np.zeros(n_classes + 1)
        vectors[pid][-1] = 1.0
    for pid, cls in zip(patient_ids, classes):
        vectors[pid][cls] += 1
    patients = list(vectors)
    rng = np.random.default_rng(seed)
    patients = [patients[i] for i in rng.permutation(len(patients))]
    patients.sort(key=lambda p: -vectors[p][:-1].sum())  # stable
    shares = np.asarray(proportions, float) / float(np.sum(proportions))
    totals = np.sum(list(vectors.values()), axis=0)
    targets = shares[:, None] * totals[None, :]
    held = np.zeros_like(targets)
    assignment = {}
    safe = np.where(targets > 0, targets, 1.0)
    for pid in patients:
        v = vectors[pid]
        deficit = ((v[None, :] * (targets - held) / safe) * (targets > 0)).sum(axis=1)
        s = int(np.argmax(deficit))
        assignment[pid] = names[s]
        held[s] += v
    return [assignment[p] for p in patient_ids]


def split_table(patient_ids, classes, splits, names: Sequence[str] = SPLIT_NAMES) -> list[dict]:
    """Rows ``{split, patients, cases, class_0, class_1, ...}`` like the data README's table."""
    n_classes = max(int(c) for c in classes) + 1 if len(classes) else 0
    rows = []
    for name in list(names) + ["total"]:
        idx = [i for i, s in enumerate(splits) if name == "total" or s == name]
        row = {"split": name, "patients": len({patient_ids[i] for i in idx}), "cases": len(idx)}
        for k in range(n_classes):
            row[f"class_{k}"] = sum(1 for i in idx if int(classes[i]) == k)
        rows.append(row)
    return rows
