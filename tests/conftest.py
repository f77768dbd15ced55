"""Shared fixtures: the real default model, loaded once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_py import settings
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.model import Model
from ollama_py.store import default_model


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model.ensure(settings.load().cache)


@pytest.fixture(scope="session")
def model(model_path: Path) -> Iterator[Model]:
    with Model(model_path) as loaded:
        yield loaded


@pytest.fixture
def ctx(model: Model) -> Iterator[Context]:
    with Context(model, ContextOptions(n_ctx=1024, n_batch=256, n_seq_max=1)) as context:
        yield context
