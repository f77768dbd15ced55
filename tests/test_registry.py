"""Pull and push against Debian's real `docker-registry` on loopback: round trip, skipping, auth, tokens.

The fixtures and helpers here (a store holding the default model, settings
that ignore the user's credentials, a model's answer) serve the other
registry and Hugging Face tests too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ollama_py import settings as settings_module
from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import GenerationRequest, Sampling
from ollama_py.llama.model import Model
from ollama_py.settings import Settings
from ollama_py.store import create, names, registry
from ollama_py.store.create import ProgressUpdate
from ollama_py.store.manifests import MEDIA_MODEL, Store
from ollama_py.store.modelfile import Modelfile
from ollama_py.store.registry import RegistryError
from tests.test_registry_harness import PASSWORD, USER, FakeRegistry, Proxy, RegistryProcess, running_registry

def isolated_settings(root: Path, **overrides: object) -> Settings:
    """Settings for a store under `root` that ignore the user's own credentials."""
    isolated: dict[str, object] = {"models": root, "noprune": False, "registry_credentials": "",
                                   "registry_auth": root / "no-credentials.json"}
    return dataclasses.replace(settings_module.load(), **{**isolated, **overrides})  # type: ignore[arg-type]


def answer(path: Path, question: str) -> str:
    """The model's greedy answer to one question: proof that a pulled model runs."""

    async def ask() -> str:
        with Model(path) as model:
            runner = Runner(model, RunnerOptions(num_ctx=256, num_parallel=1, num_batch=64))
            try:
                prompt = tuple(model.vocab.tokenize(
                    f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", parse_special=True))
                request = GenerationRequest(id="q", prompt=prompt, sampling=Sampling(temperature=0, num_predict=12))
                async with contextlib.aclosing(runner.submit(request)) as events:
                    return "".join([event.text async for event in events])
            finally:
                runner.close()

    return asyncio.run(ask())


def statuses(updates: list[ProgressUpdate]) -> list[str]:
    """Progress statuses in order, repeats folded, as a progress bar shows them."""
    out: list[str] = []
    for update in updates:
        if not out or out[-1] != update.status:
            out.append(update.status)
    return out


def model_digest(store: Store, name: names.ModelName) -> str:
    layer = store.read(name).layer(MEDIA_MODEL)
    assert layer is not None
    return layer.digest


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> tuple[Store, Settings]:
    """A store holding smollm2:135m, imported from the real GGUF: the model the tests push."""
    root = tmp_path_factory.mktemp("source")
    s = isolated_settings(root)
    store = Store.from_settings(s)
    create.import_default(store, s)
    return store, s


@pytest.fixture
def empty(tmp_path: Path) -> tuple[Store, Settings]:
    root = tmp_path / "store"
    s = isolated_settings(root)
    return Store.from_settings(s), s


def push_default(source: tuple[Store, Settings], host: str, *, settings: Settings | None = None,
                 progress: Callable[[ProgressUpdate], None] | None = None) -> names.ModelName:
    """Pushes smollm2:135m as host/library/smollm2:135m; returns that name."""
    store, s = source
    name = names.parse(f"{host}/library/smollm2:135m")
    store.copy(names.parse("smollm2:135m"), name)
    registry.push(store, name, settings=settings or s, insecure=True, progress=progress)
    return name


def test_push_then_pull_gives_the_same_model_and_it_runs(tmp_path: Path, source: tuple[Store, Settings],
                                                         empty: tuple[Store, Settings]) -> None:
    store, _ = source
    with running_registry(tmp_path / "registry") as reg:
        pushed: list[ProgressUpdate] = []
        name = push_default(source, reg.host, progress=pushed.append)
        digest = model_digest(store, name)
        size = store.blobs.size(digest)
        assert statuses(pushed)[0] == "retrieving manifest"
        assert f"pushing {digest[7:19]}" in statuses(pushed)
        assert statuses(pushed)[-2:] == ["pushing manifest", "success"]
        assert [(u.completed, u.total) for u in pushed if u.digest == digest][-1] == (size, size)

        local, s = empty
        pulled: list[ProgressUpdate] = []
        assert registry.pull(local, name, settings=s, insecure=True, progress=pulled.append) == name
        assert statuses(pulled)[0] == "pulling manifest"
        assert statuses(pulled)[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        assert [u.completed for u in pulled if u.digest == digest][-1] == size

        assert local.read_bytes(name) == store.read_bytes(name)
        for blob in store.read(name).digests():
            assert local.blobs.path(blob).read_bytes() == store.blobs.path(blob).read_bytes()
        assert sorted(local.blobs.root.iterdir()) == sorted(local.blobs.path(d) for d in local.read(name).digests())
        assert "Paris" in answer(local.blobs.path(digest), "What is the capital of France?")


def test_pull_skips_blobs_already_in_the_store(tmp_path: Path, source: tuple[Store, Settings],
                                               empty: tuple[Store, Settings]) -> None:
    with running_registry(tmp_path / "registry") as reg:
        name = push_default(source, reg.host)
        proxy = Proxy(reg.host)
        try:
            local, s = empty
            via_proxy = names.parse(f"{proxy.host}/library/smollm2:135m")
            registry.pull(local, via_proxy, settings=s, insecure=True)
            first = sum(proxy.blob_bytes.values())
            blobs = len(local.read(via_proxy).digests())
            # Each blob once, and a one-byte range probe per blob (two for the large one, hf_transfer's own).
            assert 0 <= first - local.read(via_proxy).size <= blobs + 1
            again: list[ProgressUpdate] = []
            registry.pull(local, via_proxy, settings=s, insecure=True, progress=again.append)
            assert sum(proxy.blob_bytes.values()) == first
            assert "verifying sha256 digest" in statuses(again) and statuses(again)[-1] == "success"
        finally:
            proxy.close()
        assert local.read_bytes(via_proxy) == source[0].read_bytes(name)


def test_pull_of_a_changed_tag_removes_the_layers_only_the_old_one_used(
        tmp_path: Path, source: tuple[Store, Settings], empty: tuple[Store, Settings]) -> None:
    store, s = source
    with running_registry(tmp_path / "registry") as reg:
        name = push_default(source, reg.host)
        local, ls = empty
        registry.pull(local, name, settings=ls, insecure=True)
        old = local.read(name).digests()
        create.create(store, name, Modelfile(from_="smollm2:135m", system="You answer in one word."),
                      base_dir=tmp_path)
        registry.push(store, name, settings=s, insecure=True)
        updates: list[ProgressUpdate] = []
        registry.pull(local, name, settings=ls, insecure=True, progress=updates.append)
        assert statuses(updates)[-3:] == ["writing manifest", "removing unused layers", "success"]
        new = local.read(name).digests()
        assert set(local.blobs.digests()) == new
        assert model_digest(local, name) in old & new


def test_unknown_model_is_404_and_writes_nothing(tmp_path: Path, empty: tuple[Store, Settings]) -> None:
    local, s = empty
    with running_registry(tmp_path / "registry") as reg:
        with pytest.raises(RegistryError) as err:
            registry.pull(local, names.parse(f"{reg.host}/library/missing:latest"), settings=s, insecure=True)
    assert err.value.status == 404
    assert "not found" in str(err.value)
    assert local.models() == []


def test_https_unless_insecure(empty: tuple[Store, Settings]) -> None:
    local, s = empty
    plain = FakeRegistry({})
    try:
        with pytest.raises(RegistryError) as err:
            registry.pull(local, names.parse(f"{plain.host}/library/m:latest"), settings=s)
    finally:
        plain.close()
    assert f"GET https://{plain.host}/v2/library/m/manifests/latest" in str(err.value)
    assert plain.requests == []  # a TLS handshake is not an HTTP request: nothing went out in the clear


# -- authentication --------------------------------------------------------------


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with running_registry(tmp_path_factory.mktemp("private"), users={USER: PASSWORD}) as reg:
        yield reg


def test_htpasswd_registry_round_trip_with_credentials(private_registry: RegistryProcess,
                                                       source: tuple[Store, Settings], empty: tuple[Store, Settings],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store, s = source
    with_credentials = dataclasses.replace(s, registry_credentials=f"{private_registry.host}={USER}:{PASSWORD}")
    name = push_default(source, private_registry.host, settings=with_credentials)

    local, ls = empty
    # The credentials file, in the format `docker login` writes, works as well as the variable.
    auth_file = ls.models.parent / "docker-config.json"
    auth_file.write_text(json.dumps({"auths": {private_registry.host: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    registry.pull(local, name, settings=dataclasses.replace(ls, registry_auth=auth_file), insecure=True)
    assert local.read_bytes(name) == store.read_bytes(name)
    assert PASSWORD not in caplog.text
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in caplog.text


def test_htpasswd_registry_refuses_cleanly_without_credentials(private_registry: RegistryProcess,
                                                               source: tuple[Store, Settings],
                                                               empty: tuple[Store, Settings]) -> None:
    store, s = source
    name = names.parse(f"{private_registry.host}/library/smollm2:135m")
    store.copy(names.parse("smollm2:135m"), name)
    local, ls = empty
    for settings, expected in [(ls, "needs credentials"),
                               (dataclasses.replace(ls, registry_credentials=f"{private_registry.host}={USER}:wrong"),
                                f"refused the credentials for user '{USER}'")]:
        with pytest.raises(RegistryError) as pulling:
            registry.pull(local, name, settings=settings, insecure=True)
        assert pulling.value.status == 401
        assert expected in str(pulling.value)
        with pytest.raises(RegistryError) as pushing:
            registry.push(store, name, settings=dataclasses.replace(s, registry_credentials=settings.registry_credentials),
                          insecure=True)
        assert pushing.value.status == 401
        assert "wrong" not in str(pulling.value) + str(pushing.value)
    assert local.models() == []
    assert not local.blobs.root.exists() or list(local.blobs.root.iterdir()) == []


def test_bearer_token_from_the_registrys_own_realm(tmp_path: Path, source: tuple[Store, Settings],
                                                   empty: tuple[Store, Settings]) -> None:
    store, s = source
    with running_registry(tmp_path / "registry") as reg:
        proxy = Proxy(reg.host, token="t0ken")
        try:
            name = names.parse(f"{proxy.host}/library/smollm2:135m")
            creds = dataclasses.replace(s, registry_credentials=f"{proxy.host}={USER}:{PASSWORD}")
            store.copy(names.parse("smollm2:135m"), name)
            registry.push(store, name, settings=creds, insecure=True)
            local, ls = empty
            registry.pull(local, name, settings=dataclasses.replace(ls, registry_credentials=creds.registry_credentials),
                          insecure=True)
            assert local.read_bytes(name) == store.read_bytes(name)
            assert proxy.token_requests >= 2  # one for the push, one for the pull
        finally:
            proxy.close()


def test_token_that_expires_mid_pull_is_renewed(tmp_path: Path, source: tuple[Store, Settings],
                                                empty: tuple[Store, Settings]) -> None:
    with running_registry(tmp_path / "registry") as reg:
        name = push_default(source, reg.host)
        proxy = Proxy(reg.host, token="t0ken", revoke_after=1)  # good for the manifest only
        try:
            local, s = empty
            via_proxy = names.parse(f"{proxy.host}/library/smollm2:135m")
            registry.pull(local, via_proxy, settings=dataclasses.replace(
                s, registry_credentials=f"{proxy.host}={USER}:{PASSWORD}"), insecure=True)
        finally:
            proxy.close()
    assert proxy.token_requests == 2
    assert local.read_bytes(via_proxy) == source[0].read_bytes(name)


def test_token_realm_on_another_host_is_refused(empty: tuple[Store, Settings]) -> None:
    token_server = FakeRegistry({"/token": (200, {}, b'{"token": "stolen"}')}, host="127.0.0.2")
    challenge = {"WWW-Authenticate": f'Bearer realm="http://{token_server.host}/token",service="x",scope="y"'}
    fake = FakeRegistry({"/v2/library/m/manifests/latest": (401, challenge, b"")})
    local, s = empty
    try:
        with pytest.raises(RegistryError) as err:
            registry.pull(local, names.parse(f"{fake.host}/library/m:latest"),
                          settings=dataclasses.replace(s, registry_credentials=f"{fake.host}={USER}:{PASSWORD}"),
                          insecure=True)
    finally:
        fake.close()
        token_server.close()
    assert "realm host '127.0.0.2' does not match original host '127.0.0.1'" in str(err.value)
    assert token_server.requests == []
    assert PASSWORD not in str(err.value)


def test_credentials_file_entries(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://registry.example.com": {"auth": base64.b64encode(b"bob:pw:with:colons").decode()},
        "other.example.com:5000": {"username": "carol", "password": "x"},
        "broken.example.com": {"auth": "%%%"}}}))
    s = isolated_settings(tmp_path, registry_auth=path)
    assert registry.credentials(s, "registry.example.com") == ("bob", "pw:with:colons")
    assert registry.credentials(s, "other.example.com:5000") == ("carol", "x")
    assert registry.credentials(s, "broken.example.com") is None
    assert registry.credentials(s, "elsewhere.example.com") is None
    assert registry.credentials(dataclasses.replace(s, registry_credentials="elsewhere.example.com=dan:y"),
                                "elsewhere.example.com") == ("dan", "y")
    path.write_text("{not json")
    assert registry.credentials(s, "registry.example.com") is None


def test_settings_hide_secrets() -> None:
    loaded = settings_module.load({"OLLAMA_PY_REGISTRY_CREDENTIALS": f"host={USER}:{PASSWORD}", "HF_TOKEN": "hf_x"})
    assert PASSWORD not in repr(loaded) and "hf_x" not in repr(loaded)
    with pytest.raises(settings_module.SettingsError) as err:
        settings_module.load({"OLLAMA_PY_REGISTRY_CREDENTIALS": PASSWORD})
    assert PASSWORD not in str(err.value)


def wait_for(condition: Callable[[], bool]) -> None:
    """Polls a condition another thread or process makes true; the test fails if it never does (a generous
    guard: CI's two cores are often busy)."""
    deadline = time.monotonic() + 300
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        time.sleep(0.05)
