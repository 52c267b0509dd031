"""Registers spo-gym's estimator, trainer mode and agent loop with verl.

The ``verl.plugins`` entry point names this module, so ``import verl`` imports it in every
process. verl swallows plugin import errors at debug level; importing this module directly
surfaces them.
"""

from __future__ import annotations

import spo_core.verl.advantage
import spo_core.verl.trainer  # noqa: F401
