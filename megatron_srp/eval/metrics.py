"""Rates with confidence intervals, and classification reports."""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": (k / n) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = (),
                          positive: str = "unsafe") -> dict:
    """Accuracy, per-class precision / recall / F1, and the confusion matrix (rows: true, columns: predicted).

    A prediction outside ``labels`` (e.g. "none" when the model wrote no reflection) counts as wrong."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    labels = list(labels) or sorted(set(y_true) | set(y_pred))
    cols = labels + sorted(set(y_pred) - set(labels))
    pairs = Counter(zip(y_true, y_pred))
    per_class = {}
    for c in labels:
        tp = pairs[(c, c)]
        fp = sum(v for (t, p), v in pairs.items() if p == c and t != c)
        fn = sum(v for (t, p), v in pairs.items() if t == c and p != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[c] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn}
    n = len(y_true)
    report = {
        "n": n,
        "accuracy": sum(pairs[(c, c)] for c in labels) / n if n else None,
        "per_class": per_class,
        "confusion": {"labels": labels, "predicted": cols,
                      "matrix": [[pairs[(t, p)] for p in cols] for t in labels]},
    }
    if positive in per_class:
        neg = [t for t in y_true if t != positive]
        report["false_flag_rate"] = (sum(1 for t, p in zip(y_true, y_pred) if t != positive and p == positive)
                                     / len(neg)) if neg else None
    return report
