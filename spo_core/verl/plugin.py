"""Registers spo-gym's estimator, trainer mode and agent loop with verl.

The ``verl.plugins`` entry point names this module, so ``import verl`` imports it in every
process. verl swallows plugin import errors at debug level; importing this module directly
surfaces them.
"""

from __future__ import annotations

from spo_core.verl import agent_loop  # noqa: F401  (registers the spo_gym_tool_agent loop)
