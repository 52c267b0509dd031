"""Registers spo-gym's estimator, trainer mode and agent loop with verl.

The ``verl.plugins`` entry point names this module, so ``import verl`` imports it in every
process. verl swallows plugin import errors at debug level; importing this module directly
surfaces them.
"""

from __future__ import annotations

# Each import registers one thing with verl.
from spo_core.verl import advantage, agent_loop, trainer  # noqa: F401
