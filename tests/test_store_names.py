"""Model names: Ollama's defaults and display, and every way a name could escape the store."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from ollama_py.store import names
from ollama_py.store.names import InvalidNameError, ModelName


@pytest.mark.parametrize(("text", "full", "shown"), [
    ("smollm2:135m", "registry.ollama.ai/library/smollm2:135m", "smollm2:135m"),
    ("llama3.2", "registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest"),
    ("jmorgan/tiny:v1", "registry.ollama.ai/jmorgan/tiny:v1", "jmorgan/tiny:v1"),
    ("localhost:5000/team/model:q4_0", "localhost:5000/team/model:q4_0", "localhost:5000/team/model:q4_0"),
    ("https://registry.ollama.ai/library/smollm2:135m", "registry.ollama.ai/library/smollm2:135m", "smollm2:135m"),
    ("_under/x_y.z-w:T.1-2_3", "registry.ollama.ai/_under/x_y.z-w:T.1-2_3", "_under/x_y.z-w:T.1-2_3"),
])
def test_defaults_and_display(text: str, full: str, shown: str) -> None:
    name = names.parse(text)
    assert str(name) == full
    assert name.display() == shown


def test_manifest_path_is_four_parts_under_manifests() -> None:
    name = names.parse("smollm2:135m")
    assert name.manifest_path == PurePosixPath("registry.ollama.ai/library/smollm2/135m")


def test_huggingface_names() -> None:
    name = names.parse("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M")
    assert (name.host, name.namespace, name.model, name.tag) == (
        "hf.co", "bartowski", "SmolLM2-135M-Instruct-GGUF", "Q4_K_M")
    assert name.is_huggingface
    assert names.parse("huggingface.co/unsloth/Qwen3-0.6B-GGUF").tag == "latest"
    assert not names.parse("smollm2").is_huggingface


def test_matching_ignores_case_but_keeps_it() -> None:
    upper, lower = names.parse("SmolLM2:135M"), names.parse("smollm2:135m")
    assert upper.same(lower)
    assert upper.key == lower.key
    assert upper.display() == "SmolLM2:135M"


def test_names_are_hashable_values() -> None:
    assert {names.parse("a:b"): 1}[names.parse("a:b")] == 1


@pytest.mark.parametrize(("text", "says"), [
    ("", "required"),
    ("../evil", "'..'"),
    ("library/../x", "'..'"),
    ("a/b/..", "'..'"),
    ("model:..", "'..'"),
    ("x..y", "'..'"),
    ("/etc/passwd", "path"),
    ("\\\\server\\share", "path"),
    ("C:/models/x", "path"),
    ("%2e%2e/model", "'%'"),
    ("model%2f..", "'%'"),
    ("a/b/c/d", "[host/]"),
    ("model:", "empty"),
    ("ns//model", "empty"),
    ("a:b:c", "more than one ':'"),
    (".hidden", "must start"),
    ("-dash", "must start"),
    ("name with space", "must start"),
    ("emoji🙂", "must start"),
    ("nul\x00byte", "must start"),
    ("new\nline", "must start"),
    ("ns.dot/model", "namespace"),
    ("model@sha256-" + "0" * 64, "'@'"),
    ("m" * 81, "longer than 80"),
    ("ns/model:" + "t" * 81, "longer than 80"),
    ("h" * 351 + "/ns/model", "longer than 350"),
    ("x" * 1000, "longer than"),
])
def test_hostile_names_are_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(InvalidNameError) as err:
        names.parse(text)
    assert says in str(err.value)


def test_from_manifest_path_round_trips_and_refuses_strays() -> None:
    name = names.parse("hf.co/user/repo:Q8_0")
    assert names.from_manifest_path(name.manifest_path) == name
    for stray in ["registry.ollama.ai/library/m/.partial-abc", "registry.ollama.ai/library/m",
                  "registry.ollama.ai/library/m/latest~"]:
        with pytest.raises(InvalidNameError):
            names.from_manifest_path(PurePosixPath(stray))


@pytest.mark.parametrize("parts", [
    {"host": "..", "namespace": "library", "model": "m", "tag": "latest"},
    {"host": "registry.ollama.ai", "namespace": "library", "model": "a/../../b", "tag": "latest"},
    {"host": "registry.ollama.ai", "namespace": "library", "model": "m", "tag": ""},
    {"host": "/etc", "namespace": "library", "model": "m", "tag": "latest"},
])
def test_model_name_built_directly_is_checked_too(parts: dict[str, str]) -> None:
    with pytest.raises(InvalidNameError):
        ModelName(**parts)


def test_model_name_is_frozen() -> None:
    name = ModelName(host="h", namespace="n", model="m", tag="t")
    with pytest.raises(AttributeError):
        name.model = "other"  # type: ignore[misc]
