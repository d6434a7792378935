"""Score drift, the pure part: histograms of defect scores and the population stability index.

A model's manifest may carry a reference score distribution (`Manifest.reference`, written by
`plcbridge validate-model PATH --reference FOLDER`): the histogram of the scores it gave to a
folder of reference images, over fixed bin edges in [0, 1]. The daemon keeps a window of live
scores per model (plcbridge/drift.py) and compares its histogram, over the same edges, with the
reference's by the population stability index (PSI):

    PSI = sum over bins i of (p_i - q_i) * ln(p_i / q_i)

with p_i the live share of bin i and q_i the reference share. It is 0 for identical
distributions, grows with any difference (it is symmetric in p and q: the sum of the
Kullback-Leibler divergences both ways) and has no upper bound. Rules of thumb from credit
scoring, where it comes from: below 0.1 no significant shift, 0.1 to 0.25 some, above 0.25 a
significant one (docs/drift.md says what it means for an inspection station and what not).

Choices, and why:

- **Empty bins.** ln(p/q) is infinite where one share is 0 and the other is not, so each share
  is floored at EPSILON = 1e-4 (a 0.01 % share) before the sum, as most PSI tools do, without
  renormalising. A bin empty in the reference that holds a share s of a live window then adds
  about s * ln(s / 1e-4): 5 % of the live scores where the reference had none gives 0.31.
  Bins empty on both sides add exactly 0.
- **Bin edges.** `reference_edges` puts the inner edges at the deciles of the reference scores
  (each reference bin holds about a tenth of the images, the usual way PSI is binned) plus the
  model's threshold (so that parts moving across the verdict always show), rounded to 6
  decimals, with 0 and 1 as the outer edges. Equal-width bins would put most of a good
  classifier's scores into the first bin (0 .. 0.1), where a darker line moving them from
  0.04 to 0.02 goes unseen. A reference whose scores are all equal has one bin at most: it is
  refused (there is no distribution to compare with).
- **Bin membership.** A bin holds [left edge, right edge); the last also holds its right edge
  (1.0). Scores outside [0, 1] (none, for a manifest's models) are clipped into the outer bins.
  The reference's counts and a live window's are made by the same `bin_index`.
- **Sampling noise.** Two samples of one distribution do not give PSI 0: with k bins, a window
  of n scores against a reference of m gives about (k - 1) * (1/n + 1/m) on average
  (`no_drift_psi`; the chi-square approximation), e.g. 0.03 for 10 bins, n = 500, m = 600, and
  up to about three times that in one window in a thousand. A window much smaller than 500 or a
  reference much smaller than a few hundred images makes the figure mostly noise.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

EPSILON = 1e-4  # the share an empty bin is counted with (see the module docstring)
REFERENCE_BINS = 10  # quantile bins of the reference: its deciles
EDGE_DECIMALS = 6  # edges as written in the manifest


def bin_index(score: float, edges: Sequence[float]) -> int:
    """The bin `score` falls in: [edges[i], edges[i+1]), the last bin closed; clipped into the
    outer bins. `edges` is strictly increasing with at least two values."""
    i = bisect.bisect_right(edges, score) - 1
    return min(max(i, 0), len(edges) - 2)


def histogram(scores: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts of `scores` per bin of `edges` (len(edges) - 1 bins); NaN scores are left out."""
    counts = [0] * (len(edges) - 1)
    for s in scores:
        if not math.isnan(s):
            counts[bin_index(s, edges)] += 1
    return counts


def psi(live: Sequence[int], reference: Sequence[int], eps: float = EPSILON) -> float:
    """The population stability index of two histograms over the same bins (counts, not
    shares): sum((p - q) * ln(p / q)), each share floored at `eps`. ValueError for histograms
    of different lengths or without any count."""
    if len(live) != len(reference):
        raise ValueError(f"histograms over different bins: {len(live)} and {len(reference)} counts")
    n, m = sum(live), sum(reference)
    if n <= 0 or m <= 0:
        raise ValueError("a histogram without any count has no distribution")
    total = 0.0
    for a, b in zip(live, reference):
        p, q = max(a / n, eps), max(b / m, eps)
        total += (p - q) * math.log(p / q)
    return total


def no_drift_psi(bins: int, window: int, reference: int) -> float:
    """About what PSI a window of `window` scores reads against a reference of `reference`
    scores over `bins` bins when nothing changed at all: (bins - 1) * (1/window + 1/reference)."""
    return (bins - 1) * (1 / window + 1 / reference)


def _quantile(sorted_scores: Sequence[float], q: float) -> float:
    """numpy's default (linear) quantile of sorted values."""
    pos = q * (len(sorted_scores) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_scores) - 1)
    return sorted_scores[lo] + (sorted_scores[hi] - sorted_scores[lo]) * (pos - lo)


def reference_edges(scores: Sequence[float], bins: int = REFERENCE_BINS, also: Iterable[float] = ()) -> list[float]:
    """Bin edges for a reference: 0, the inner `bins`-quantiles of `scores`, the values in
    `also` (the model's threshold), 1; rounded to EDGE_DECIMALS, duplicates merged. ValueError
    when fewer than two bins remain (every score the same) or no score is given."""
    finite = sorted(min(max(s, 0.0), 1.0) for s in scores if not math.isnan(s))
    if not finite:
        raise ValueError("no scores to make a reference of")
    inner = [_quantile(finite, k / bins) for k in range(1, bins)] + [float(x) for x in also]
    edges = sorted({0.0, 1.0} | {round(x, EDGE_DECIMALS) for x in inner if 0.0 < x < 1.0})
    edges = [e for e in edges if 0.0 <= e <= 1.0]
    if len(edges) < 3 or len({bin_index(s, edges) for s in finite}) < 2:
        scores_text = (f"the same score, {finite[0]:g}" if finite[0] == finite[-1] else
                       f"scores {finite[0]:g} .. {finite[-1]:g}, all in one bin")
        raise ValueError(f"the model gave every one of the {len(finite)} images {scores_text}: there is no "
                         "distribution to compare live scores with")
    return edges
