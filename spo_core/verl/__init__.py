"""SPO and ReTool on verl 0.9.1, through verl's extension points (no copied trainer).

- :mod:`spo_core.verl.advantage`: the ``spo`` advantage estimator (``@register_adv_est``).
- :mod:`spo_core.verl.replay_buffer`: batches are the first B finished, unmasked trajectories.
- :mod:`spo_core.verl.trainer`: the ``spo`` single-stream trainer mode (``@register_trainer``).
- :mod:`spo_core.verl.agent_loop`: the ``spo_gym_tool_agent`` agent loop (``@register``).
- :mod:`spo_core.verl.local_server`: verl's ``server_manager`` served by a local policy, so
  agent loops run on a CPU.
- :mod:`spo_core.verl.checks`: refuses configurations that are not SPO under SPO's name.
- :mod:`spo_core.verl.data`: ``spo-gym data prepare`` (verl parquet keyed like ``spo-gym eval``).
- :mod:`spo_core.verl.launch` and :mod:`spo_core.verl.main`: ``./run_retool.sh --backend verl``
  and the Hydra entry it launches (configs in ``configs/verl``).
- :mod:`spo_core.verl.plugin`: registers all of them; loaded by ``import verl`` in every Ray
  process through the ``verl.plugins`` entry-point group.

verl is imported lazily: nothing here is imported by the CPU learner.
"""
