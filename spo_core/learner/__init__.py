"""The SPO learner and what runs around it: the training loop, offline values, held-out
evaluation, metrics and learning curves. Unlike the rest of :mod:`spo_core`, this subpackage
drives the rollout engine and the sandbox (it imports :mod:`agents`, :mod:`envs` and
:mod:`sandbox`)."""
