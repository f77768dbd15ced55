"""/api/push and /api/pull through the ollama client, against Debian's real docker-registry on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from ollama_py import settings
from ollama_py.store.manifests import Store
from tests.server_harness import MODEL, LiveServer, default_store, live_server, server_settings
from tests.test_registry import RegistryProcess, running_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with running_registry(tmp_path_factory.mktemp("registry")) as process:
        yield process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("store")
    cache = settings.load().cache
    config = dataclasses.replace(server_settings(root, cache), registry_auth=root / "no-credentials.json")
    with live_server(config, default_store(root, cache)) as live:
        yield live


def statuses(updates: list[ollama.ProgressResponse]) -> list[str]:
    out: list[str] = []
    for update in updates:
        if not out or out[-1] != update.status:
            out.append(update.status or "")
    return out


def test_push_then_pull_back_through_the_api(server: LiveServer, registry: RegistryProcess) -> None:
    client = ollama.Client(host=server.url)
    remote = f"{registry.host}/library/shared:v1"
    client.copy(MODEL, remote)
    pushed = statuses(list(client.push(remote, insecure=True, stream=True)))
    assert pushed[0] == "retrieving manifest" and pushed[-2:] == ["pushing manifest", "success"]
    client.delete(remote)
    updates = list(client.pull(remote, insecure=True, stream=True))
    pulled = statuses(updates)
    assert pulled[0] == "pulling manifest" and pulled[-1] == "success"
    assert {"verifying sha256 digest", "writing manifest"} <= set(pulled)
    assert remote in {m.model for m in client.list().models}
    assert client.generate(remote, "Hi", options={"num_predict": 3}).eval_count == 3
    client.delete(remote)


def test_pulling_a_missing_model(server: LiveServer, registry: RegistryProcess) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as whole:
        client.pull(f"{registry.host}/library/absent:latest", insecure=True)
    assert whole.value.status_code == 404 and "not found" in whole.value.error
    with pytest.raises(ollama.ResponseError) as streamed:  # after "pulling manifest": the error is the last line
        list(client.pull(f"{registry.host}/library/absent:latest", insecure=True, stream=True))
    assert "not found" in streamed.value.error


def test_pulling_the_default_model_needs_no_network(tmp_path: Path) -> None:
    cache = settings.load().cache
    with live_server(server_settings(tmp_path, cache), Store(tmp_path, noprune=True)) as live:
        client = ollama.Client(host=live.url)
        assert client.pull(MODEL).status == "success"
        assert [m.model for m in client.list().models] == [MODEL]
        assert client.pull(MODEL).status == "success"  # already there


def test_create_from_a_model_not_in_the_store_pulls_it_first(server: LiveServer, registry: RegistryProcess) -> None:
    client = ollama.Client(host=server.url)
    remote = f"{registry.host}/library/base:v1"
    client.copy(MODEL, remote)
    list(client.push(remote, insecure=True, stream=True))
    client.delete(remote)
    assert remote not in {m.model for m in client.list().models}
    updates = list(client.create("derived-from-remote", from_=remote, system="Answer briefly.", stream=True))
    seen = statuses(updates)
    assert seen[0] == "gathering model components" and seen[-1] == "success"
    assert seen.index("pulling manifest") < seen.index("writing manifest")
    assert seen.count("success") == 1  # the pull's own success does not end the create's stream
    listed = {m.model for m in client.list().models}
    assert {remote, "derived-from-remote:latest"} <= listed
    assert "SYSTEM Answer briefly." in (client.show("derived-from-remote").modelfile or "")
    with pytest.raises(ollama.ResponseError) as absent:
        client.create("never", from_=f"{registry.host}/library/absent:v1")
    assert absent.value.status_code == 404 and "not found" in absent.value.error
    client.delete("derived-from-remote")
    client.delete(remote)
