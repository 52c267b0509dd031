"""Batch evaluation: k samples per problem through the rollout engine and the sandbox, resumable
runs, pass@k / maj@k over equivalent answers / avg@k with intervals, plots, side-by-side
comparisons, and SPO's offline values.

* :mod:`~evals.job` — :class:`EvalConfig` and :func:`run_eval`, the job end to end;
* :mod:`~evals.datasets` — what ``--dataset`` accepts;
* :mod:`~evals.runner` / :mod:`~evals.worker` / :mod:`~evals.ray_runner` — playing samples
  locally or on a Ray cluster, retrying those lost to infrastructure;
* :mod:`~evals.store` / :mod:`~evals.sample` — a run's folder and its append-only sample log;
* :mod:`~evals.metrics` / :mod:`~evals.summary` — the figures;
* :mod:`~evals.regrade` — re-grading stored samples;
* :mod:`~evals.compare` / :mod:`~evals.report` / :mod:`~evals.plots` — tables and curves.
"""

from evals.job import EvalConfig, EvalOutcome, EvalProgress, plan_run, run_eval

__all__ = ["EvalConfig", "EvalOutcome", "EvalProgress", "plan_run", "run_eval"]
