"""Images: a model with a projector takes them through every API, and reuses what its slots already hold.

The projector is tiny and random (tests/fixtures_models.py): what the model
says about an image means nothing, but every image is a known number of
tokens, so counts show whether it reached the model and whether it was
prefilled again.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest
from PIL import Image

import build_backend
from ollama_py import settings
from ollama_py.llama.model import Model
from ollama_py.llama.mtmd import ImageChunk, ImageError, Projector
from ollama_py.store import create, modelfile, names
from ollama_py.store.manifests import MEDIA_PROJECTOR, Store
from tests import fixtures_models
from tests.server_harness import MODEL, LiveServer

VISION = "smol-vision"
IMAGE_TOKENS = fixtures_models.PROJECTOR_IMAGE_TOKENS
OPTIONS = {"num_predict": 2, "temperature": 0, "seed": 1}


def _picture(kind: str, size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=kind)
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature and IHDR claiming these dimensions, with a few bytes of data after."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x10IDAT" + zlib.compress(b"\x00" * 64)[:8]


PNG = _picture("PNG")
JPEG = _picture("JPEG", (48, 64), (10, 120, 240))
MALFORMED = {
    "not an image": b"hello, I am text and not a picture at all",
    "truncated": PNG[:len(PNG) // 2],
    "huge dimensions": _png_header(100_000, 100_000),
    "empty dimensions": _png_header(0, 0),
}


@pytest.fixture(scope="module")
def projector_path() -> Path:
    return fixtures_models.projector(settings.load().cache)


@pytest.fixture(scope="module")
def client(server: LiveServer, model_path: Path, projector_path: Path) -> Iterator[ollama.Client]:
    """The server, holding VISION: the default model's GGUF and the projector, both sent as `files`."""
    client = ollama.Client(host=server.url, timeout=300)
    files = {"model.gguf": client.create_blob(model_path), "mmproj.gguf": client.create_blob(projector_path)}
    assert list(client.create(VISION, files=files, stream=True))[-1].status == "success"
    yield client


# ---- the build ----------------------------------------------------------------------


def test_a_cached_build_without_mtmd_is_not_reused(tmp_path: Path) -> None:
    """A build made before mtmd was a target builds it (in the same cmake tree) instead of shipping without."""
    (tmp_path / "build.json").write_text('{"targets": ["llama", "llama-common", "ggml-rpc-server"]}')
    assert not build_backend._has_targets(tmp_path)
    (tmp_path / "build.json").write_text(f'{{"targets": {list(build_backend.TARGETS)!r}}}'.replace("'", '"'))
    assert build_backend._has_targets(tmp_path)


# ---- the binding --------------------------------------------------------------------


def test_the_projector_turns_an_image_into_rows_of_the_models_width(model: Model, projector_path: Path) -> None:
    with Projector(projector_path, model) as projector:
        with projector.bitmap(PNG) as bitmap:
            assert bitmap.size == (40, 30)
            parts = projector.tokenize(f"look: {projector.marker} what is it?", [bitmap])
        images = [p for p in parts if isinstance(p, ImageChunk)]
        assert len(images) == 1 and images[0].n_tokens == IMAGE_TOKENS
        rows = projector.embeddings(images[0])
        assert len(rows) == IMAGE_TOKENS and {len(r) for r in rows} == {model.n_embd}
        assert any(abs(v) > 1e-6 for v in rows[0])
        for bad in MALFORMED.values():
            if bad.startswith(b"\x89PNG") and bad is not MALFORMED["truncated"]:
                continue  # dimensions are refused at the edge (the server reads the header)
            with pytest.raises(ImageError):
                projector.bitmap(bad)
    assert images[0].closed  # the projector freed its chunks before itself


# ---- the store ----------------------------------------------------------------------


def test_a_second_from_stores_the_projector_layer(model_path: Path, projector_path: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store", noprune=True)
    parsed = modelfile.parse(f"FROM {projector_path}\nFROM {model_path}\n")  # either order
    name = create.create(store, names.parse("seeing"), parsed, base_dir=tmp_path)
    manifest = store.read(name)
    assert [layer.media_type for layer in manifest.layers][:2] == [
        "application/vnd.ollama.image.model", MEDIA_PROJECTOR]
    assert create.to_modelfile(store, name).projectors == [str(store.blobs.path(manifest.layers[1].digest))]
    with pytest.raises(create.CreateError, match="must be a projector"):
        create.create(store, names.parse("twice"), modelfile.parse(f"FROM {model_path}\nFROM {model_path}\n"),
                      base_dir=tmp_path)


def test_the_cli_creates_from_a_modelfile_with_two_froms(client: ollama.Client, server: LiveServer,
                                                          model_path: Path, projector_path: Path,
                                                          tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(f"FROM {model_path}\nFROM {projector_path}\nPARAMETER temperature 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")} | {"OLLAMA_HOST": server.url}
    made = subprocess.run([sys.executable, "-m", "ollama_py.cli.main", "create", "smol-vision-cli"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert made.returncode == 0, made.stderr
    assert "vision" in (client.show("smol-vision-cli").capabilities or [])
    client.delete("smol-vision-cli")


def test_only_a_model_with_a_projector_shows_vision(client: ollama.Client) -> None:
    assert "vision" in (client.show(VISION).capabilities or [])
    assert "vision" not in (client.show(MODEL).capabilities or [])


# ---- the engine ---------------------------------------------------------------------


def test_an_image_is_counted_once_then_served_from_the_slot(client: ollama.Client, server: LiveServer) -> None:
    def chat(messages: list[dict[str, object]]) -> dict[str, object]:
        with server.client() as http:
            reply = http.post("/api/chat", json={"model": VISION, "messages": messages, "stream": False,
                                                 "options": OPTIONS})
        assert reply.status_code == 200, reply.text
        return reply.json()

    question = "What is in this picture?"
    text_only = chat([{"role": "user", "content": question}])
    first_turn = [{"role": "user", "content": question, "images": [_b64(PNG)]}]
    first = chat(first_turn)
    assert first["prompt_eval_count"] == text_only["prompt_eval_count"] + IMAGE_TOKENS
    second = chat([*first_turn, {"role": "assistant", "content": first["message"]["content"]},
                   {"role": "user", "content": "And its colour?"}])
    assert second["prompt_eval_count"] > first["prompt_eval_count"]
    # Everything the first request held, its image's tokens among them, came from the slot: the image was
    # not prefilled (nor encoded) again.
    assert second["prompt_eval_cached_count"] >= first["prompt_eval_count"] - 1


def test_png_and_jpeg_reach_the_model(client: ollama.Client) -> None:
    text_only = client.generate(VISION, "Describe it.", options=OPTIONS).prompt_eval_count
    for picture in (PNG, JPEG):
        answer = client.generate(VISION, "Describe it.", images=[picture], options=OPTIONS)
        assert answer.prompt_eval_count == text_only + IMAGE_TOKENS
    chat_text = client.chat(VISION, messages=[{"role": "user", "content": "Describe it."}], options=OPTIONS)
    chat_image = client.chat(VISION, messages=[{"role": "user", "content": "Describe it.", "images": [JPEG]}],
                             options=OPTIONS)
    assert chat_image.prompt_eval_count == chat_text.prompt_eval_count + IMAGE_TOKENS


def test_two_images_in_one_message(client: ollama.Client) -> None:
    text_only = client.generate(VISION, "Compare them.", options=OPTIONS).prompt_eval_count
    answer = client.generate(VISION, "Compare them.", images=[PNG, JPEG], options=OPTIONS)
    assert answer.prompt_eval_count == text_only + 2 * IMAGE_TOKENS


def test_a_raw_prompt_places_its_images(client: ollama.Client) -> None:
    plain = client.generate(VISION, "Say hi:", raw=True, options=OPTIONS).prompt_eval_count
    tagged = client.generate(VISION, "[img-0] Say hi:", raw=True, images=[PNG], options=OPTIONS)
    untagged = client.generate(VISION, "Say hi:", raw=True, images=[PNG], options=OPTIONS)
    assert untagged.prompt_eval_count == plain + IMAGE_TOKENS
    assert tagged.prompt_eval_count >= plain + IMAGE_TOKENS


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_image_is_a_400_and_the_server_goes_on(client: ollama.Client, server: LiveServer,
                                                           kind: str) -> None:
    with server.client() as http:
        for route, body in (("/api/generate", {"prompt": "What is it?", "images": [_b64(MALFORMED[kind])]}),
                            ("/api/chat", {"messages": [{"role": "user", "content": "What is it?",
                                                         "images": [_b64(MALFORMED[kind])]}]})):
            for stream in (False, True):
                refused = http.post(route, json={"model": VISION, "stream": stream, "options": OPTIONS, **body})
                assert refused.status_code == 400, (route, stream, refused.text)
                assert "image" in refused.json()["error"]
        bad_base64 = http.post("/api/generate", json={"model": VISION, "prompt": "x", "images": ["%%%not base64"]})
        assert bad_base64.status_code == 400
    assert client.generate(VISION, "Still there?", images=[PNG], options=OPTIONS).done


def test_images_are_refused_where_they_cannot_be_used(client: ollama.Client, server: LiveServer) -> None:
    for call in (lambda: client.generate(MODEL, "What is it?", images=[PNG], options=OPTIONS),
                 lambda: client.generate(MODEL, "What is it?", raw=True, images=[PNG], options=OPTIONS),
                 lambda: client.chat(MODEL, messages=[{"role": "user", "content": "hi", "images": [PNG]}])):
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 400
        assert "does not support" in refused.value.error
    with server.client() as http:
        insert = http.post("/api/generate", json={"model": VISION, "prompt": "def f(", "suffix": "return 1",
                                                  "images": [_b64(PNG)], "stream": False})
        assert insert.status_code == 400


# ---- the clients --------------------------------------------------------------------


def test_the_openai_sdk_sends_image_parts_as_data_urls(client: ollama.Client, server: LiveServer) -> None:
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=300)

    def ask(*parts: dict[str, object]) -> int:
        reply = sdk.chat.completions.create(model=VISION, max_tokens=2, temperature=0, seed=1, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is in the picture?"}, *parts]}])
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    image = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{_b64(JPEG)}"}}
    assert ask(image) == ask() + IMAGE_TOKENS
    with pytest.raises(openai.BadRequestError, match="not remote URLs"):
        ask({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}})


def test_a_projector_for_another_width_is_refused_and_the_server_goes_on(client: ollama.Client,
                                                                        model_path: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "mmproj-512.gguf"
    fixtures_models.random_projector(wrong, n_embd_text=512)
    files = {"model.gguf": client.create_blob(model_path), "mmproj.gguf": client.create_blob(wrong)}
    assert list(client.create("smol-vision-wrong", files=files, stream=True))[-1].status == "success"
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate("smol-vision-wrong", "What is it?", images=[PNG], options=OPTIONS)
    assert refused.value.status_code == 400
    assert "projector" in refused.value.error
    client.delete("smol-vision-wrong")
    assert client.generate(VISION, "Still there?", images=[PNG], options=OPTIONS).done
