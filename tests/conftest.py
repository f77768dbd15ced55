"""Shared fixtures: the real default model, loaded once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ollama_py import settings
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.model import Model
from ollama_py.store import default_model
from tests import fixtures_models
from tests.server_harness import LiveServer, default_server


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model.ensure(settings.load().cache)


@pytest.fixture(scope="session")
def f16_model_path() -> Path:
    """The default model dequantized to F16 (generated once, cached)."""
    return fixtures_models.f16_model(settings.load().cache)


@pytest.fixture(scope="session")
def model(model_path: Path) -> Iterator[Model]:
    with Model(model_path) as loaded:
        yield loaded


@pytest.fixture
def ctx(model: Model) -> Iterator[Context]:
    with Context(model, ContextOptions(n_ctx=1024, n_batch=256, n_seq_max=1)) as context:
        yield context


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server on a fresh store holding the default model; a module may define its own instead."""
    with default_server(tmp_path_factory.mktemp("store")) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client
