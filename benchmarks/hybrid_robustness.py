"""How much to trust the hybrid's tuning: split-half re-selection and a paired bootstrap.

    python benchmarks/hybrid_robustness.py [--sweeps out/sweep] [--repeats 2000]

Reads the ``per_case.npz`` that ``benchmarks/hybrid_sweep.py`` wrote for ``val`` and ``test``.

1. Split-half re-selection: the 224 val + test cases are split at random into two halves, many
   times. On one half the selection rule picks a setting (the highest mean DSC among those whose
   mean recall is at least nnU-Net's); on the other half we record how that pick compares with
   nnU-Net alone. This measures the tuning procedure, not one lucky split.
2. Paired bootstrap of the default setting on each split: the 95 % interval of its mean DSC and
   mean recall minus nnU-Net's, resampling cases.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT = "0+2px t=0 mean0.7"


def load(folder: Path):
    data = np.load(folder / "per_case.npz")
    return list(data["names"]), data["dsc"].astype(float), data["recall"].astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=Path, default=REPO / "out" / "sweep")
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    splits = {name: load(args.sweeps / name) for name in ("val", "test")}
    names = splits["val"][0]
    assert names == splits["test"][0], "val and test sweeps ran different grids"
    dsc = np.concatenate([splits[s][1] for s in splits], axis=1)      # [setting, case]; row 0 nnU-Net
    recall = np.concatenate([splits[s][2] for s in splits], axis=1)
    n = dsc.shape[1]

    gains, recall_gains, picks = [], [], {}
    for _ in range(args.repeats):
        order = rng.permutation(n)
        tune, hold = order[: n // 2], order[n // 2:]
        ok = recall[1:, tune].mean(axis=1) >= recall[0, tune].mean()
        candidates = np.flatnonzero(ok) + 1
        if not candidates.size:
            continue
        pick = candidates[np.argmax(dsc[candidates][:, tune].mean(axis=1))]
        picks[names[pick]] = picks.get(names[pick], 0) + 1
        gains.append(dsc[pick, hold].mean() - dsc[0, hold].mean())
        recall_gains.append(recall[pick, hold].mean() - recall[0, hold].mean())
    gains, recall_gains = np.array(gains), np.array(recall_gains)
    print(f"split-half re-selection over {len(gains)} random halves of {n} cases:")
    print(f"  held-out DSC gain over nnU-Net: median {np.median(gains):+.4f}, "
          f"5-95 % [{np.percentile(gains, 5):+.4f}, {np.percentile(gains, 95):+.4f}], > 0 in {np.mean(gains > 0):.0%}")
    print(f"  held-out recall gain: median {np.median(recall_gains):+.4f}, "
          f"5-95 % [{np.percentile(recall_gains, 5):+.4f}, {np.percentile(recall_gains, 95):+.4f}], "
          f">= 0 in {np.mean(recall_gains >= 0):.0%}")
    print(f"  both DSC > 0 and recall >= 0 in {np.mean((gains > 0) & (recall_gains >= 0)):.0%}")
    print("  most frequent picks:", ", ".join(f"{k} ({v})" for k, v in sorted(picks.items(), key=lambda kv: -kv[1])[:4]))

    row = names.index(DEFAULT)
    for split, (_, d, r) in splits.items():
        m = d.shape[1]
        samples = rng.integers(0, m, size=(args.repeats, m))
        dd = (d[row][samples] - d[0][samples]).mean(axis=1)
        rr = (r[row][samples] - r[0][samples]).mean(axis=1)
        print(f"default ({DEFAULT}) on {split} ({m} cases): DSC gain {d[row].mean() - d[0].mean():+.4f} "
              f"[95 % {np.percentile(dd, 2.5):+.4f}, {np.percentile(dd, 97.5):+.4f}], recall gain "
              f"{r[row].mean() - r[0].mean():+.4f} [95 % {np.percentile(rr, 2.5):+.4f}, {np.percentile(rr, 97.5):+.4f}]")


if __name__ == "__main__":
    main()
