"""Fixtures for the verl tests: a real TransferQueue on the session's Ray cluster, composed
verl configs, and a small training set in verl's parquet schema."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs.tasks import Tier
from spo_core.verl.data import verl_rows


@pytest.fixture(scope="session")
def transfer_queue(ray_cluster: str) -> Iterator[None]:
    """TransferQueue's controller and one storage unit (2 cores here), for the whole session."""
    import transfer_queue as tq
    from omegaconf import OmegaConf

    tq.init(
        OmegaConf.create(
            {
                "backend": {
                    "SimpleStorage": {"num_data_storage_units": 1, "total_storage_size": 4096}
                }
            }
        )
    )
    try:
        yield
    finally:
        tq.close()


@pytest.fixture
def clean_queue(transfer_queue: None) -> Iterator[None]:
    """Every partition empty before and after the test."""
    import transfer_queue as tq

    def clear() -> None:
        for partition, items in (tq.kv_list() or {}).items():
            if items:
                tq.kv_clear(keys=list(items), partition_id=partition)

    clear()
    yield
    clear()


def write_training_set(path: Path, n: int) -> list[str]:
    """``n`` arithmetic prompts as ``spo-gym data prepare`` writes them; their keys."""
    tasks = Tier.parse("d2o1").tasks(n, seed=0)
    pq.write_table(pa.Table.from_pylist(verl_rows(tasks, split="train", env="retool")), path)
    return [t.key for t in tasks]


@pytest.fixture(scope="session")
def nano_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) nano model folder: verl reads its config and tokenizer."""
    from agents.nano.model import CI_CONFIG, save_nano

    return save_nano(tmp_path_factory.mktemp("nano"), CI_CONFIG)


ComposeFn = Callable[..., object]


@pytest.fixture
def spo_config(tmp_path: Path, nano_folder: Path) -> Callable[..., object]:
    """The shipped ``configs/verl/spo_smoke.yaml``, pointed at a small training set."""
    from spo_core.verl.launch import compose_config

    def make(
        n_prompts: int = 12,
        extra: tuple[str, ...] = (),
        offline: Callable[[list[str]], dict[str, list[float]]] | None = None,
    ):
        train = tmp_path / "train.parquet"
        keys = write_training_set(train, n_prompts)
        overrides = [
            "data.train_batch_size=4",
            f"data.train_files={train}",
            f"data.val_files={train}",
            "data.dataloader_num_workers=0",
            f"actor_rollout_ref.model.path={nano_folder}",
            f"trainer.default_local_dir={tmp_path / 'checkpoints'}",
        ]
        if offline is not None:
            path = tmp_path / "offline_values.jsonl"
            path.write_text(
                "".join(
                    json.dumps({"key": k, "scores": s}) + "\n" for k, s in offline(keys).items()
                )
            )
            overrides += ["spo_gym.cold_start=false", f"spo_gym.offline_values={path}"]
        return compose_config("spo_smoke", [*overrides, *extra]), keys

    return make
