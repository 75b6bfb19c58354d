"""Shared fixtures: tiny models built from configs (no downloads), small QA data."""
from __future__ import annotations

import os

import pytest
import torch

from lethe.data.synthetic import generate_authors
from lethe.model.build import build_tiny_model, train_tokenizer
from lethe.scenarios.fictitious import tokenizer_corpus

# under pytest-xdist every worker takes one core (and so do the processes its tests start); alone, the suite
# uses two
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smoke_data():
    return generate_authors("smoke", seed=0)


@pytest.fixture(scope="session")
def tokenizer(smoke_data):
    return train_tokenizer(tokenizer_corpus(smoke_data), vocab_size=400)


@pytest.fixture
def tiny_model(tokenizer):
    """A 2-layer, 32-wide Llama: fresh for every test (tests may train it)."""
    return build_tiny_model(tokenizer, "test", seed=0)
