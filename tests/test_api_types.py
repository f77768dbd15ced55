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
    (b'{"model":"m","options":{"num_ctx":"8192"}}', "at `$.options.num_ctx`"),
    (b'{"model":"m","options":{"stop":"x"}}', "at `$.options.stop`"),  # FromMap: "must be of type array"
    (b'{"model":"m","options":{"repeat_last_n":-2}}', "at `$.options.repeat_last_n`"),
    (b'{"model":"m","think":"ultra"}', "at `$.think`"),  # api.ThinkValue refuses it on the native API
    (b'{"model":"m","messages":[{"content":"x"}]}', "missing required field `role` - at `$.messages[0]`"),
])
def test_bad_native_bodies_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(codec.BadRequest, match=message.replace("[", r"\[").replace("$", r"\$")):
        codec.decode(body, native.ChatRequest)


@pytest.mark.parametrize("body, where", [
    (b'{"model":"m","messages":[]}', "$.messages"),
    (b'{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}', "$.messages[0].content[0].type"),
    # Go's json refuses a number with a fraction for an int field; only `options` (a map) take one.
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":8.5}', "$.max_tokens"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"seed":"1"}', "$.seed"),
])
def test_bad_openai_bodies_name_the_field(body: bytes, where: str) -> None:
    with pytest.raises(codec.BadRequest) as info:
        codec.decode(body, openai.ChatCompletionRequest)
    assert where in str(info.value)


def test_null_means_absent_on_every_field() -> None:
    body = (b'{"model":"m","stream":null,"think":null,"truncate":null,"logprobs":null,"top_logprobs":null,'
            b'"messages":[{"role":"assistant","content":null,"thinking":null,"tool_name":null,'
            b'"tool_calls":[{"function":{"name":"f","arguments":{"x":null}}}]}],"options":{"temperature":null}}')
    req = codec.decode(body, native.ChatRequest)
    assert (req.stream, req.truncate, req.top_logprobs) == (True, True, 0)  # the defaults, as Go leaves them
    assert req.messages is not None and req.messages[0].content == ""
    assert req.messages[0].tool_calls is not None and req.messages[0].tool_calls[0].function.arguments == {"x": None}
    assert req.options == Options()


def test_integer_options_take_numbers_as_go_options_do() -> None:
    req = codec.decode(b'{"model":"m","options":{"num_ctx":8192.0,"top_k":3.9,"seed":-1.5}}', native.ChatRequest)
    assert req.options is not None and (req.options.num_ctx, req.options.top_k, req.options.seed) == (8192, 3, -1)


@pytest.mark.parametrize("given, kept", [
    ({"seed": 2**32 + 7}, {"seed": 7}),  # Go's uint32(seed)
    ({"num_predict": -9}, {"num_predict": -1}),  # any negative: no limit
    ({"num_ctx": 0}, {"num_ctx": 4}),  # Ollama's scheduler minimum
    ({"top_k": 2**40, "repeat_last_n": 2**40}, {"top_k": 2**31 - 1, "repeat_last_n": 2**31 - 1}),
    ({"num_keep": -(2**40), "num_gpu": -5}, {"num_keep": -1, "num_gpu": -1}),
    ({"temperature": 1e300, "repeat_penalty": -1e300}, {"temperature": 3.4028234663852886e38,
                                                        "repeat_penalty": -3.4028234663852886e38}),
])
def test_option_values_fit_their_c_types(given: dict[str, float], kept: dict[str, float]) -> None:
    options = msgspec.convert(given, Options)
    assert {k: getattr(options, k) for k in kept} == kept


def test_openai_values_ollama_takes_decode() -> None:
    body = (b'{"model":"m","n":2,"temperature":3,"top_p":7,"tool_choice":"any","response_format":{"type":"xml"},'
            b'"reasoning":{"effort":"ultra"},"messages":[{"role":"function","name":"f","content":"{}"},'
            b'{"role":"assistant","content":null,"function_call":{"name":"f","arguments":"{}"}}]}')
    req = codec.decode(body, openai.ChatCompletionRequest)
    assert (req.n, req.temperature, req.tool_choice, req.messages[0].role) == (2, 3.0, "any", "function")
    assert req.reasoning is not None and req.reasoning.effort == "ultra"


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
