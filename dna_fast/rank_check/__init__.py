"""Does the rating rank architectures like training them alone would? A two-level check on the user's data.

DNA (Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge Distillation", CVPR 2020,
arXiv:1911.13053) claims that block-wise distillation rates candidates correctly, so that the search beats random
selection. This module tests the claim on a run directory that holds a teacher, ratings and a search result:

* **Block level.** For each block, M candidates spread over each cell's rating range are trained alone, from fresh
  weights, on the same teacher features as the supernet (Adam, cosine decay), and their validation loss (the
  rating's ``loss`` definition: per-element MSE to the teacher's feature, BN in eval mode) is compared with the
  supernet's ratings. A few candidates are trained with other seeds: the seed noise.
* **Network level.** K architectures (spread over MACs, plus groups of equal MACs) are trained alone with the
  ``retrain`` recipe; their test accuracy is compared with the summed rating. The found architecture and R random
  ones of equal MACs are trained with S seeds each: found vs random beyond seed noise, or not.

Every comparison is reported as Kendall's tau-b and Spearman's rho between the *predicted* and the *measured*
quality, each with a seeded percentile-bootstrap 95 % interval. Orientation: positive = ranks correctly. A rating
(lower is better) predicts a low stand-alone loss / a high accuracy; the proxies MACs and params predict that bigger
is better. Statistics per block, per cell, pooled over blocks (stratified: only pairs within one block count) and
pooled within cells (pairs within one cell), so ratings that rank well inside a cell but not across cells show up.

Plain, testable statistics (:func:`kendall_tau`, :func:`spearman_rho`, :func:`stratified_tau`,
:func:`bootstrap_ci`) are compared with SciPy in the tests. The stage is resumable unit by unit: each stand-alone
model writes its result as it finishes (``rank_check/blocks/...json``, ``rank_check/networks/<name>/metrics.json``)
and a rerun skips it; ``rank_check/results.json``, the plots and ``rank_check/report.md`` are rebuilt after every
unit, so a stopped study still has honest partial results (``"complete": false`` and what remains).

The package, by concern: ``_stats`` (rank statistics and bootstrap intervals; NumPy / SciPy only), ``_calibration``
(per-cell calibration of a rating), ``_plan`` (what is trained: candidates, networks, ``plan.json``),
``_standalone`` (the teacher's block features and stand-alone training of one candidate block), ``_analysis``
(``results.json`` from the finished units), ``_report`` (``report.md``, plots, closing lines, ``units.csv``) and
``_units`` (the units' order and files, claims, :func:`run_units` / :func:`refresh`). The pipeline stage that runs it
is :mod:`dna_fast.stages.rank_check`.
"""

from __future__ import annotations

from ._analysis import (  # noqa: F401
    COST_METRICS,
    _metric_stats,
    _orient,
    analyze,
    block_found_vs_random,
    equal_macs_stats,
)
from ._calibration import calibrate_ratings, calibration_candidates, fit_cell_calibration, loo_calibrated  # noqa: F401
from ._plan import (  # noqa: F401
    _NOT_METRICS,
    _cell_shares,
    _CostModel,
    _unique_rows,
    attach_compare,
    build_plan,
    plan_entries,
    rating_metrics,
    select_block_candidates,
    select_block_found,
    select_networks,
    select_random_candidates,
)
from ._report import (  # noqa: F401
    _fmt_diffs,
    _fmt_rho,
    _fmt_stat,
    _judge,
    closing_lines,
    plot,
    units_table,
    write_section,
)
from ._standalone import _fresh_block, block_features, train_block_candidate  # noqa: F401
from ._stats import (  # noqa: F401
    MIN_BOOTSTRAP_N,
    _as_2d,
    _boot_indices,
    _boot_values,
    _groups,
    _interval,
    _num,
    _pair_sums,
    _pearson_rows,
    _ranks,
    _resamples,
    bootstrap_ci,
    bootstrap_diff_ci,
    count_near_pairs,
    found_vs_random,
    kendall_tau,
    rank_stats,
    seed_noise,
    spearman_rho,
    stratified_rho,
    stratified_tau,
)
from ._units import (  # noqa: F401
    _SAFE,
    _block_order,
    _claim_holder_alive,
    _claim_path,
    _dedupe,
    _spread_order,
    _unit_name,
    claim_unit,
    collect_units,
    refresh,
    run_units,
    unit_done,
    units,
)

__all__ = [
    "kendall_tau", "spearman_rho", "stratified_tau", "stratified_rho", "bootstrap_ci", "bootstrap_diff_ci",
    "rank_stats",
    "select_block_candidates", "train_block_candidate", "rating_metrics", "select_networks", "seed_noise",
    "found_vs_random", "analyze", "write_section", "closing_lines", "attach_compare", "COST_METRICS",
]
