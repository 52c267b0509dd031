"""The copy warm-up: its sequences, and that it teaches a from-scratch model to copy."""

from __future__ import annotations

import random

import torch

from agents.nano import CI_CONFIG, build_model, build_tokenizer
from spo_core.learner.copy_warmup import copy_sequence, copy_warmup


def test_sequences_repeat_the_bracketed_payload() -> None:
    rng = random.Random(0)
    for _ in range(200):
        context, target = copy_sequence(rng)
        payload = context[context.index("[") + 1 : context.index("]")]
        assert target == payload + "}" and context.endswith("{")
        assert 3 <= len(payload) <= 24 and set(payload) <= set("0123456789 +-*/()")


def test_copy_loss_falls_and_training_is_deterministic() -> None:
    tokenizer = build_tokenizer()
    torch.set_num_threads(1)
    losses = []
    weights = []
    for _ in range(2):
        model = build_model(CI_CONFIG, tokenizer)
        first = copy_warmup(model, tokenizer, steps=1, batch_size=16, lr=3e-3, seed=0)
        model = build_model(CI_CONFIG, tokenizer)
        last = copy_warmup(model, tokenizer, steps=60, batch_size=16, lr=3e-3, seed=0)
        losses.append((first, last))
        weights.append(next(model.parameters()).detach().clone())
    assert losses[0] == losses[1] and torch.equal(weights[0], weights[1])
    first, last = losses[0]
    assert last < first - 0.5  # the payload's characters are learnt at least as unigrams
