"""The spo_gym_tool_agent loop inside verl 0.9.1: real verl objects (Hydra-composed config,
``AgentLoopWorker``, ``RLHFDataset``, the agent-loop registry, TransferQueue's field layout), the
real Docker sandbox, and the CI nano model served on the CPU by ``LocalLLMServerClient``.

Behaviours a small model does not show on demand (no code block, a hanging cell, a container
that dies mid-cell, a server failure) are played by :class:`ReplayPolicy`, a policy that replays
fixed turns through the same local server.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, get_type_hints

import docker
import hydra
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytest_asyncio
import ray
import torch
import transfer_queue as tq
import verl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopOutput,
    AgentLoopWorker,
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.rollout.replica import TokenOutput as VerlTokenOutput

from agents.hf_policy import HFPolicy
from agents.policy import SamplingParams, TokenOutput
from envs.tasks import Task, Tier
from sandbox.reaper import LABEL_OWNER, LABEL_POOL
from spo_core.verl.agent_loop import SPOGymAgentLoop
from spo_core.verl.data import verl_rows
from spo_core.verl.fields import AGENT_NAME, SPOExtraFields
from spo_core.verl.gym_config import GymConfigError, SPOGymConfig, resolve_env_id
from spo_core.verl.local_server import LocalLLMServerClient
from spo_core.verl.row import EpisodeRow, RowError
from spo_core.verl.server_policy import PromptTooLongError
from spo_core.verl.worker_pool import close_worker_pools, worker_pool

ROOT = Path(__file__).resolve().parents[3]
PROMPT_LENGTH, RESPONSE_LENGTH = 192, 320  # the CI nano's context is 512
SANDBOX = {"memory_mb": 512}  # every Docker test shares this worker pool
VERL_PARAMS = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}
CODE = "<code>\n```python\n{}\n```\n</code>"


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_config(ci_nano: Path) -> DictConfig:
    """verl's ppo_trainer config, composed by Hydra, sized for the CI nano model."""
    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=[
                "actor_rollout_ref.rollout.name=vllm",
                f"actor_rollout_ref.model.path={ci_nano}",
                f"actor_rollout_ref.rollout.prompt_length={PROMPT_LENGTH}",
                f"actor_rollout_ref.rollout.response_length={RESPONSE_LENGTH}",
                f"data.max_prompt_length={PROMPT_LENGTH}",
                f"data.max_response_length={RESPONSE_LENGTH}",
            ],
        )


def with_block(base: DictConfig, **block: Any) -> DictConfig:
    """``base`` with a ``spo_gym`` block: the nano env, 3 turns, one warm container."""
    config = copy.deepcopy(base)
    defaults = {"env": "retoolnano", "max_turns": 3, "sandbox_pool": 1, "sandbox": SANDBOX}
    with open_dict(config):
        config.spo_gym = {**defaults, **block}
    return config


@pytest.fixture(scope="module")
def tokenizer(ci_nano: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(ci_nano)


@pytest_asyncio.fixture(scope="module", autouse=True)
async def pools() -> AsyncIterator[None]:
    """The module's agent loops share this process's worker pools; removed at the end."""
    yield
    await close_worker_pools()


class RecordingServer(LocalLLMServerClient):
    """The local server, keeping every request and reply by verl request id."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: dict[str, list[tuple[list[int], dict[str, Any], VerlTokenOutput]]] = defaultdict(
            list
        )

    async def generate(  # type: ignore[override]
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kw: Any
    ) -> VerlTokenOutput:
        sent = dict(sampling_params)
        out = await super().generate(
            request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, **kw
        )
        self.log[request_id].append((list(prompt_ids), sent, out))
        return out


class ReplayPolicy:
    """A policy that answers each call with the next of ``turns`` (cut at ``max_tokens``; an
    end-of-turn token follows a turn that does not end with a stop string); it raises once
    the script is over. ``served`` is set after each call."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, turns: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.turns = list(turns)
        self.served = asyncio.Event()
        self.calls = 0

    version = 0
    max_context_tokens = 512

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        if self.calls >= len(self.turns):
            raise RuntimeError("the inference backend is down")
        text = self.turns[self.calls]
        self.calls += 1
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not any(text.endswith(s) for s in sampling.stop):
            ids.append(self.tokenizer.eos_token_id)
        ids = ids[: sampling.max_tokens]
        self.served.set()
        return TokenOutput(tuple(ids), tuple(-0.25 - 0.001 * i for i in range(len(ids))), "stop")

    async def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        raise NotImplementedError


def tasks(n: int) -> list[Task]:
    return Tier.parse("d2o1").tasks(n, seed=0)


def dataset_row(task: Task, index: int, env: str = "retoolnano") -> dict[str, Any]:
    """A row as ``spo-gym data prepare`` writes it, at position ``index``."""
    (row,) = verl_rows([task], split="train", env=env)
    row["extra_info"]["index"] = index
    return row


def dataset_items(
    rows: list[dict[str, Any]], config: DictConfig, tokenizer: PreTrainedTokenizerBase, tmp: Path
) -> dict[str, Any]:
    """The rows written to parquet, read by verl's RLHFDataset and collated as its loader does."""
    path = tmp / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    dataset = RLHFDataset(str(path), tokenizer, config.data)
    return collate_fn([dataset[i] for i in range(len(rows))])


def verl_kwargs(task: Task, index: int = 0, **extra: Any) -> dict[str, Any]:
    """What verl passes to ``run`` for a row: its columns plus RLHFDataset's additions."""
    row = dataset_row(task, index)
    row.pop("agent_name")
    return {
        **row,
        "raw_prompt": row["prompt"],
        "index": index,
        "tools_kwargs": {},
        "interaction_kwargs": {},
        **extra,
    }


def instantiate(config: DictConfig, server: Any, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The agent loop made as ``AgentLoopWorker._run_agent_loop`` makes it, per sample."""
    return hydra.utils.instantiate(
        config=_agent_loop_registry[AGENT_NAME],
        trainer_config=DictConfigWrap(config=config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type="qwen3",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
    )


async def replay(
    config: DictConfig, tokenizer: PreTrainedTokenizerBase, turns: Sequence[str], task: Task
) -> tuple[AgentLoopOutput, ReplayPolicy]:
    policy = ReplayPolicy(tokenizer, turns)
    loop = instantiate(config, LocalLLMServerClient(policy, config), tokenizer)
    return await loop.run(dict(VERL_PARAMS, logprobs=True), **verl_kwargs(task)), policy


def text_of(tokenizer: PreTrainedTokenizerBase, output: AgentLoopOutput, mask: int) -> str:
    ids = [t for t, m in zip(output.response_ids, output.response_mask, strict=True) if m == mask]
    return str(tokenizer.decode(ids))


def check_extra_fields(extra: Mapping[str, Any]) -> None:
    """verl's keys and every SPOExtraFields key, with their types."""
    for key in ("min_global_steps", "max_global_steps"):
        assert isinstance(extra[key], int)
    assert extra["turn_scores"] == [] and extra["tool_rewards"] == []
    hints = get_type_hints(SPOExtraFields)
    for key, hint in hints.items():
        origin = getattr(hint, "__origin__", hint)
        assert isinstance(extra[key], origin), (key, extra[key])
    assert len(extra["spo_policy_versions"]) == extra["spo_turns"]
    assert set(extra["spo_timings"]) == {"llm_s", "sandbox_s", "grader_s", "total_s"}


# -- registration and configuration --------------------------------------------------------


def test_import_verl_registers_the_loop_in_a_fresh_process() -> None:
    code = (
        "import json, verl\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry\n"
        "print(json.dumps(_agent_loop_registry))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    registry = json.loads(done.stdout.strip().splitlines()[-1])
    assert registry[AGENT_NAME] == {"_target_": "spo_core.verl.agent_loop.SPOGymAgentLoop"}


def test_block_defaults_values_and_errors(base_config: DictConfig) -> None:
    assert SPOGymConfig.from_verl(base_config) == SPOGymConfig()
    assert SPOGymConfig() == SPOGymConfig(env="retool", max_turns=8, sandbox_pool=16)
    config = with_block(base_config, env_kwargs={"demonstrations": 1}, tracker={"rho": 0.9})
    block = SPOGymConfig.from_verl(config)  # other parts' keys (tracker) are theirs
    assert block.env_kwargs == {"demonstrations": 1}
    assert block.sandbox_config().warm == 1 and block.sandbox_config().memory_mb == 512
    bad: list[tuple[dict[str, Any], str]] = [
        ({"max_turns": 0}, "spo_gym.max_turns must be an integer >= 1, got 0"),
        ({"max_turns": "8"}, "spo_gym.max_turns must be an integer >= 1"),
        ({"sandbox_pool": -1}, "spo_gym.sandbox_pool must be an integer >= 0"),
        ({"env": ""}, "spo_gym.env must be a non-empty string"),
        ({"env_kwargs": {"pool": 1}}, "spo_gym.env_kwargs.pool"),
        ({"env_kwargs": {"generation": {"max_turns": 2}}}, "set spo_gym.max_turns instead"),
        ({"sandbox": {"memory_mb": 1}}, "spo_gym.sandbox: memory_mb"),
        ({"sandbox": {"warm": 3}}, "set spo_gym.sandbox_pool instead"),
        ({"sandbox_pool": 100}, "exceeds the pool's max_containers"),
    ]
    for values, message in bad:
        with pytest.raises(GymConfigError, match=message):
            SPOGymConfig.from_verl(with_block(base_config, **values))


def test_env_names_resolve_to_registered_ids() -> None:
    assert resolve_env_id("retool") == "spo_gym/ReTool-v0"
    assert resolve_env_id("ReToolNano-v0") == "spo_gym/ReToolNano-v0"
    assert resolve_env_id("spo_gym/retoolnano") == "spo_gym/ReToolNano-v0"
    assert resolve_env_id("spo_gym/ReTool-v0") == "spo_gym/ReTool-v0"
    with pytest.raises(GymConfigError, match="no registered env is named 'calculator'"):
        resolve_env_id("calculator")
    with pytest.raises(GymConfigError, match="no registered env"):
        resolve_env_id("retool-v7")


# -- the local server ----------------------------------------------------------------------


async def test_local_server_speaks_verls_generate(
    base_config: DictConfig, ci_nano: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    server = LocalLLMServerClient.from_pretrained(ci_nano, base_config, num_threads=1, seed=0)
    try:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Compute 2 + 3."}], add_generation_prompt=True
        )
        prompt = list(prompt["input_ids"] if isinstance(prompt, Mapping) else prompt)
        out = await server.generate(
            "r1",
            prompt_ids=prompt,
            sampling_params={**VERL_PARAMS, "logprobs": True, "max_tokens": 6},
        )
        assert isinstance(out, VerlTokenOutput) and 1 <= len(out.token_ids) <= 6
        assert out.log_probs is not None and len(out.log_probs) == len(out.token_ids)
        assert all(p <= 0 for p in out.log_probs) and out.stop_reason == "completed"
        assert out.extra_fields == {"global_steps": 0, "min_global_steps": 0, "max_global_steps": 0}
        # verl's default budget: the response length, within the prompt plus response length.
        out = await server.generate("r2", prompt_ids=prompt, sampling_params={"temperature": 0})
        assert out.log_probs is None and len(out.token_ids) <= RESPONSE_LENGTH
        for params, message in [
            ({"repetition_penalty": 1.1}, "repetition_penalty"),
            ({"min_p": 0.1}, "min_p"),
            ({"ignore_eos": True}, "ignore_eos"),
        ]:
            with pytest.raises(ValueError, match=message):
                await server.generate("r3", prompt_ids=prompt, sampling_params=params)
        with pytest.raises(ValueError, match="no room to generate"):
            await server.generate("r4", prompt_ids=[5] * 512, sampling_params={})
        with pytest.raises(ValueError, match="text models"):
            await server.generate("r5", prompt_ids=prompt, sampling_params={}, image_data=[1])
    finally:
        await server.policy.aclose()  # type: ignore[attr-defined]


# -- whole episodes --------------------------------------------------------------------------


@pytest.mark.docker
async def test_nano_episodes_through_verls_agent_loop_worker(
    base_config: DictConfig, ci_nano: Path, tmp_path: Path
) -> None:
    """Rows of the data-prepare schema, loaded by RLHFDataset and played by AgentLoopWorker,
    come out padded with the masks and log-probs of exactly what the server sampled."""
    config = with_block(base_config)
    with open_dict(config):
        config.actor_rollout_ref.rollout.temperature = 0  # the CI nano calls its tool greedily
    rows = [dataset_row(task, i) for i, task in enumerate(tasks(3))]
    policy = HFPolicy.from_pretrained(ci_nano, num_threads=1, seed=0)
    server = RecordingServer(policy, config)
    try:
        worker = AgentLoopWorker(config, server)
        items = dataset_items(rows, config, worker.tokenizer, tmp_path)
        out = await worker.generate_sequences(DataProto.from_single_dict(items))
    finally:
        await policy.aclose()
    b = len(rows)
    assert out.batch["prompts"].shape == (b, PROMPT_LENGTH)
    assert out.batch["responses"].shape == (b, RESPONSE_LENGTH)
    assert out.batch["input_ids"].shape == (b, PROMPT_LENGTH + RESPONSE_LENGTH)
    extra = out.non_tensor_batch
    tool_tokens = 0
    for i in range(b):
        attention = out.batch["attention_mask"][i]
        prompt = out.batch["prompts"][i][attention[:PROMPT_LENGTH].bool()].tolist()
        valid = attention[PROMPT_LENGTH:].bool()
        response = out.batch["responses"][i][valid].tolist()
        mask = out.batch["response_mask"][i][valid].tolist()
        logprobs = out.batch["rollout_log_probs"][i][valid]
        assert not out.batch["response_mask"][i][~valid].any()
        # The episode's calls, found by their first prompt: each continued exactly the
        # context so far (nothing re-tokenized), and the mask is 1 on their tokens only.
        (calls,) = [c for c in server.log.values() if c[0][0] == prompt]
        offset = 0
        sampled_at: list[int] = []
        served: list[float] = []
        for call_prompt, params, reply in calls:
            assert call_prompt == prompt + response[:offset]
            assert params["stop"] == ["</code>"] and params["logprobs"] is True
            assert params["temperature"] == 0 and params["top_k"] == -1
            assert response[offset : offset + len(reply.token_ids)] == reply.token_ids
            sampled_at += range(offset, offset + len(reply.token_ids))
            served += reply.log_probs
            offset += len(reply.token_ids)
            while offset < len(mask) and mask[offset] == 0:  # the tool output it got
                offset += 1
        assert offset == len(response)
        assert [k for k, m in enumerate(mask) if m == 1] == sampled_at
        assert torch.equal(logprobs[sampled_at], torch.tensor(served, dtype=torch.float32))
        outside = [k for k in range(len(mask)) if k not in set(sampled_at)]
        assert not logprobs[outside].any()
        tool_tokens += len(outside)
        # The reward sits on the last response token; the extra fields are columns.
        reward = out.batch["rm_scores"][i].sum().item()
        assert out.batch["rm_scores"][i][len(response) - 1].item() == reward
        fields = {k: extra[k][i] for k in extra if k.startswith("spo_") or "global_steps" in k}
        check_extra_fields({**fields, "turn_scores": [], "tool_rewards": []})
        assert fields["spo_prompt_key"] == rows[i]["prompt_key"]
        assert not fields["spo_masked"] and fields["spo_policy_versions"] == [0] * len(calls)
        assert extra["acc"][i] == reward
    assert tool_tokens > 0, "the CI nano ran no cell: the tool-output mask went untested"


@pytest.mark.docker
async def test_outputs_round_trip_into_transfer_queue_fields(
    base_config: DictConfig, ci_nano: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """Sampled episodes become the fields AgentLoopWorkerTQ puts into TransferQueue."""
    config = with_block(base_config)
    server = LocalLLMServerClient.from_pretrained(ci_nano, config, num_threads=1, seed=1)
    fields = []
    try:
        for session, task in enumerate(tasks(2)):
            kwargs = verl_kwargs(task, uid=f"u{session}", global_steps=7, session_id=session)
            loop = instantiate(config, server, tokenizer)
            assert isinstance(loop, SPOGymAgentLoop)
            output = await loop.run(dict(VERL_PARAMS, logprobs=False), **kwargs)
            field = output.as_dict()
            field.update(kwargs)
            field["loss_mask"] = field["response_mask"]
            fields.append(field)
    finally:
        await server.policy.aclose()  # type: ignore[attr-defined]
    td = list_of_dict_to_tensordict(fields)
    for i, field in enumerate(fields):
        n = len(field["responses"])
        assert td["responses"][i].shape == (n,) and td["rollout_log_probs"][i].shape == (n,)
        assert td["rm_scores"][i][-1].item() == td["rm_scores"][i].sum().item()
        mask = td["response_mask"][i].bool()
        assert (td["rollout_log_probs"][i][mask] <= 0).all()  # requested whatever verl says
        assert not td["rollout_log_probs"][i][~mask].any()
        extra = td[i]["extra_fields"]
        check_extra_fields(extra)
        # The local server's weights are version 0, whatever step dispatched the row.
        assert (extra["min_global_steps"], extra["max_global_steps"]) == (0, 0)
        assert extra["spo_prompt_key"] == td[i]["prompt_key"] == field["prompt_key"]
        assert extra["spo_finished_at"] > 0 and not extra["spo_masked"]


@pytest.mark.docker
def test_v1_agent_loop_workers_put_episodes_into_transfer_queue(
    clean_queue: None,
    base_config: DictConfig,
    ci_nano: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
) -> None:
    """verl's V1 path: AgentLoopManagerTQ's Ray actors (where ``import verl`` registers the
    loop) load the local server's model and play the rows against Docker; each finished
    episode lands in TransferQueue with its staleness tags, as the V1 trainer dispatches."""
    config = with_block(base_config)
    with open_dict(config):
        config.actor_rollout_ref.rollout.agent.num_workers = 1
    rows = [dataset_row(task, i) for i, task in enumerate(tasks(2))]
    items = dataset_items(rows, config, tokenizer, tmp_path)
    items["uid"] = np.array([str(uuid.uuid4()) for _ in rows], dtype=object)
    batch = tu.get_tensordict(items)
    tu.assign_non_tensor_data(batch, "global_steps", 3)
    uids = list(batch["uid"])
    server = LocalLLMServerClient.from_pretrained(ci_nano, config, num_threads=1, seed=0)
    manager = AgentLoopManagerTQ.create(config, llm_client=server)
    (worker,) = manager.agent_loop_workers
    tags = [{"is_prompt": True, "status": "pending", "global_steps": 3} for _ in uids]
    tq.kv_batch_put(keys=uids, partition_id="train", tags=tags)
    manager.generate_sequences(batch)
    deadline = time.monotonic() + 300
    while True:
        listing = tq.kv_list("train")["train"]
        if all(listing[u]["status"] in ("finished", "failure") for u in uids):
            break
        assert time.monotonic() < deadline, listing
        time.sleep(0.2)
    keys = [f"{u}_0_0" for u in uids]  # uid, sample of rollout.n, output of the loop
    assert [listing[u]["status"] for u in uids] == ["finished", "finished"]
    fields = ["responses", "response_mask", "rollout_log_probs", "rm_scores", "extra_fields"]
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
    for i, key in enumerate(keys):
        tag = listing[key]
        assert tag["status"] == "success" and tag["global_steps"] == 3
        assert (tag["min_global_steps"], tag["max_global_steps"]) == (0, 0)
        assert tag["response_len"] == len(data["responses"][i]) <= RESPONSE_LENGTH
        mask = data["response_mask"][i].bool()
        assert not data["rollout_log_probs"][i][~mask].any()
        extra = data[i]["extra_fields"]
        check_extra_fields(extra)
        assert extra["spo_prompt_key"] == rows[i]["prompt_key"]
        assert data["rm_scores"][i].sum().item() == extra["reward_extra_info"]["acc"]
    # A graceful exit removes the worker's sandbox containers (atexit).
    pid = ray.get(worker.__ray_call__.remote(lambda self: os.getpid()))
    ray.wait([worker.__ray_terminate__.remote()], timeout=60)  # it ends by dying
    client = docker.from_env()
    owned = {"label": LABEL_OWNER}
    deadline = time.monotonic() + 30
    while any(
        f":{pid}:" in c.labels.get(LABEL_OWNER, "") for c in client.containers.list(filters=owned)
    ):
        assert time.monotonic() < deadline, "the worker's sandbox containers outlived it"
        time.sleep(0.5)


@pytest.mark.docker
async def test_an_answer_without_code_is_scored(
    base_config: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> None:
    config = with_block(base_config)
    task = tasks(1)[0]
    out, _ = await replay(config, tokenizer, [f"So \\boxed{{{task.answer}}}."], task)
    assert (out.reward_score, out.extra_fields["spo_termination"]) == (1.0, "answer")
    assert out.response_mask == [1] * len(out.response_ids) and out.num_turns == 2
    out, _ = await replay(config, tokenizer, ["I do not know."], task)
    extra = out.extra_fields
    assert (out.reward_score, extra["spo_termination"], extra["spo_masked"]) == (
        0.0,
        "no_answer",
        False,
    )
    assert extra["reward_extra_info"] == {"acc": 0.0}
    check_extra_fields(extra)


@pytest.mark.docker
async def test_a_turn_cut_by_its_token_limit_ends_the_episode_unscored(
    base_config: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> None:
    """The server says "completed" for a cut turn too; a full-length turn with no stop string
    is read as cut: never run, never graded (ReToolNano allows 200 tokens a turn)."""
    task = tasks(1)[0]
    rambling = "x" * 250 + f" \\boxed{{{task.answer}}}"
    out, _ = await replay(with_block(base_config), tokenizer, [rambling], task)
    extra = out.extra_fields
    assert len(out.response_ids) == 200 and out.reward_score == 0.0
    assert (extra["spo_termination"], extra["spo_env_termination"]) == (
        "token_budget",
        "turn_tokens",
    )
    assert not extra["spo_masked"]


@pytest.mark.docker
async def test_hanging_code_and_a_dead_container_are_observations_and_scored(
    base_config: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> None:
    task = tasks(1)[0]
    answer = f"\\boxed{{{task.answer}}}"
    # A cell that outlives its timeout: the model reads the timeout and goes on.
    # (A longer observation limit than ReToolNano's 160 characters keeps the reasons whole.)
    generation = {"max_observation_chars": 400}
    config = with_block(base_config, env_kwargs={"tool_timeout_s": 1.0, "generation": generation})
    out, _ = await replay(config, tokenizer, [CODE.format("while True: pass"), answer], task)
    assert not out.extra_fields["spo_masked"] and out.reward_score == 1.0
    assert "timed out" in text_of(tokenizer, out, mask=0)
    # The container dies while a cell runs: an observation too, and the episode goes on.
    config = with_block(base_config, env_kwargs={"tool_timeout_s": 60.0, "generation": generation})
    pool = await worker_pool(SPOGymConfig.from_verl(config).sandbox_config())
    policy = ReplayPolicy(tokenizer, [CODE.format("import time\ntime.sleep(60)"), answer])
    loop = instantiate(config, LocalLLMServerClient(policy, config), tokenizer)
    episode = asyncio.ensure_future(loop.run(dict(VERL_PARAMS, logprobs=True), **verl_kwargs(task)))
    await policy.served.wait()
    await asyncio.sleep(1.5)
    client = docker.from_env()
    for container in client.containers.list(filters={"label": f"{LABEL_POOL}={pool.pool_id}"}):
        await asyncio.to_thread(container.kill)
    out = await asyncio.wait_for(episode, 120)
    extra = out.extra_fields
    assert not extra["spo_masked"] and out.reward_score == 1.0, extra["spo_mask_reason"]
    assert extra["spo_turns"] == 2 and extra["spo_termination"] == "answer"
    assert "the sandbox container died" in text_of(tokenizer, out, mask=0)


async def test_no_sandbox_or_a_failed_server_masks_without_raising(
    base_config: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> None:
    task = tasks(1)[0]
    config = with_block(base_config, sandbox={"docker_url": "unix:///nonexistent/docker.sock"})
    out, _ = await replay(config, tokenizer, [CODE.format("print(1)")], task)
    extra = out.extra_fields
    assert (extra["spo_masked"], extra["spo_termination"], out.reward_score) == (
        True,
        "masked",
        0.0,
    )
    assert "Docker daemon" in extra["spo_mask_reason"] and extra["reward_extra_info"] == {
        "acc": None
    }
    check_extra_fields(extra)
    # A server that fails on the first turn: nothing sampled, one placeholder token (mask 0).
    out, _ = await replay(config, tokenizer, [], task)
    assert (
        out.extra_fields["spo_masked"] and "backend is down" in out.extra_fields["spo_mask_reason"]
    )
    assert (out.response_mask, out.response_logprobs) == ([0], [0.0])
    fields = out.as_dict()
    assert fields["rm_scores"].tolist() == [0.0] and fields["responses"].shape == (1,)


async def test_a_prompt_longer_than_prompt_length_is_a_clear_error(
    base_config: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> None:
    config = with_block(base_config, sandbox={"docker_url": "unix:///nonexistent/docker.sock"})
    with open_dict(config):
        config.actor_rollout_ref.rollout.prompt_length = 64
    with pytest.raises(PromptTooLongError, match=r"prompt is \d+ tokens, over .*prompt_length=64"):
        await replay(config, tokenizer, ["unused"], tasks(1)[0])


def test_rows_with_numpy_columns_and_bad_fields() -> None:
    task = tasks(1)[0]
    kwargs = verl_kwargs(task, session_id=np.int64(2), global_steps=np.array(5))
    kwargs["raw_prompt"] = np.array(kwargs["raw_prompt"], dtype=object)
    row = EpisodeRow.parse(kwargs)
    assert (row.task.key, row.task.answer, row.env) == (task.key, task.answer, "retoolnano")
    assert (row.sample_index, row.global_steps, row.task.problem) == (2, 5, task.problem)
    for change, message in [
        ({"reward_model": {}}, "reward_model.ground_truth"),
        ({"raw_prompt": [], "prompt": []}, "'raw_prompt' must be a non-empty list"),
        ({"prompt_key": 3}, "'prompt_key' must be a non-empty string"),
        ({"extra_info": {"answer_order": "x"}}, "extra_info.answer_order"),
    ]:
        with pytest.raises(RowError, match=message):
            EpisodeRow.parse({**kwargs, **change})
