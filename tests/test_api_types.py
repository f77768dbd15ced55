"""The wire types: what decodes, what is refused and how the refusal names the field."""

from __future__ import annotations

import msgspec
import pytest

from ollama_py.api import codec, native, openai
from ollama_py.api.options import Options, from_parameters


def test_ollama_client_bodies_decode() -> None:
    body = (b'{"model":"m","messages":[{"role":"USER","content":"hi","images":["aGk="]}],"tools":[],'
            b'"stream":false,"format":"json","options":{"temperature":0.2,"stop":["x"]},"keep_alive":"5m",'
            b'"think":"high"}')
    req = codec.decode(body, native.ChatRequest)
    assert req.messages is not None and req.messages[0].role == "user"  # roles are lower-cased as in Ollama
    assert req.options == Options(temperature=0.2, stop=["x"]) and req.think == "high"


def test_nulls_are_not_given_as_in_go() -> None:
    req = codec.decode(b'{"model":"m","options":null,"format":null,"images":null}', native.GenerateRequest)
    assert req.options is None and req.format is None


@pytest.mark.parametrize("body, message", [
    (b"", "missing request body"),
    (b"[1]", "Expected `object`, got `array`"),
    (b'{"model":"m","stream":"yes"}', "at `$.stream`"),
    (b'{"model":"m","options":{"num_predict":-3}}', "at `$.options.num_predict`"),
    (b'{"model":"m","options":{"top_k":1.5}}', "at `$.options.top_k`"),
    (b'{"model":"m","messages":[{"content":"x"}]}', "missing required field `role` - at `$.messages[0]`"),
])
def test_bad_native_bodies_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(codec.BadRequest, match=message.replace("[", r"\[").replace("$", r"\$")):
        codec.decode(body, native.ChatRequest)


@pytest.mark.parametrize("body, where", [
    (b'{"model":"m","messages":[]}', "$.messages"),
    (b'{"model":"m","messages":[{"role":"robot","content":"x"}]}', "$.messages[0].role"),
    (b'{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}', "$.messages[0].content[0].type"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}', "$.n"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}', "$.temperature"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}',
     "$.response_format.type"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"sometimes"}', "$.tool_choice"),
])
def test_bad_openai_bodies_name_the_field(body: bytes, where: str) -> None:
    with pytest.raises(codec.BadRequest) as info:
        codec.decode(body, openai.ChatCompletionRequest)
    assert where in str(info.value)


def test_openai_sdk_extras_are_ignored() -> None:
    body = (b'{"model":"m","messages":[{"role":"developer","content":"be brief"}],"user":"u",'
            b'"parallel_tool_calls":true,"metadata":{"a":"b"}}')
    assert codec.decode(body, openai.ChatCompletionRequest).messages[0].role == "developer"


def test_request_options_lie_over_modelfile_parameters() -> None:
    modelfile = from_parameters({"temperature": 0.1, "stop": ["<|im_end|>"], "num_ctx": 2048})
    merged = Options(temperature=0.9, num_predict=5).over(modelfile)
    assert (merged.temperature, merged.stop, merged.num_ctx, merged.num_predict) == (0.9, ["<|im_end|>"], 2048, 5)
    assert merged.load_part().num_ctx == 2048


def test_responses_omit_what_go_omits() -> None:
    chunk = native.GenerateResponse(model="m", created_at="t", response="", done=False)
    assert msgspec.json.decode(codec.encode(chunk)) == {"model": "m", "created_at": "t", "response": "", "done": False}
    message = native.ResponseMessage(role="assistant", content="")
    assert msgspec.json.decode(codec.encode(message)) == {"role": "assistant", "content": ""}
    details = msgspec.json.decode(codec.encode(native.ModelDetails()))
    assert set(details) == {"parent_model", "format", "family", "families", "parameter_size", "quantization_level"}
