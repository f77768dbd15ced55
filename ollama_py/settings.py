"""Every setting, read once from the environment into one frozen object.

The names are Ollama's where Ollama has one, so that an existing setup keeps
working. A bad value fails at startup naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {raw!r}")


def _flash_attention(raw: str) -> str:
    """"auto" (on where the backend supports it, as llama-server decides), or a boolean as on / off."""
    if raw.strip().lower() == "auto":
        return "auto"
    return "on" if _bool(raw) else "off"


def _int(raw: str) -> int:
    return int(raw.strip())


def _path(raw: str) -> Path:
    return Path(raw.strip()).expanduser()


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _credentials(raw: str) -> str:
    host, sep, user_password = raw.strip().partition("=")
    if not (sep and host and ":" in user_password and user_password.partition(":")[0]):
        raise ValueError("expected HOST=USER:PASSWORD")  # the value itself is a secret: not repeated
    return raw.strip()


def _endpoint(raw: str) -> str:
    url = raw.strip().rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ValueError("expected an http:// or https:// URL")
    return url


def _endpoints(raw: str) -> tuple[str, ...]:
    items = _list(raw)
    for item in items:
        host, sep, port = item.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"expected HOST:PORT,..., got {item!r}")
    return items


def _proportions(raw: str) -> tuple[float, ...]:
    values = tuple(float(item) for item in _list(raw))
    if any(v < 0 for v in values) or (values and not sum(values)):
        raise ValueError("expected non-negative numbers, not all zero")
    return values


_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(raw: str) -> float:
    """Seconds, or a Go duration of one unit as Ollama's variables take it ("90s", "5m", "1h")."""
    unit = next((u for u in ("ms", "s", "m", "h") if raw.endswith(u)), "")
    value = float(raw[:len(raw) - len(unit)] if unit else raw)
    if value <= 0:
        raise ValueError("expected a positive duration")
    return value * _SECONDS.get(unit, 1.0)


def _age(raw: str) -> float:
    """A duration that may be zero (none at all)."""
    return 0.0 if raw.strip() in {"0", "0s"} else _duration(raw)


def _home_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ollama-py"


@dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = "127.0.0.1:11434"
    models: Path = Path.home() / ".ollama" / "models"
    cache: Path = _home_cache()
    keep_alive: str = "5m"
    num_parallel: int = 4
    max_loaded_models: int = 0
    max_queue: int = 512
    origins: tuple[str, ...] = ()
    context_length: int = 4096
    flash_attention: str = "auto"
    cpu_attention: bool = True
    kv_cache_type: str = "f16"
    noprune: bool = False
    debug: bool = False
    nohistory: bool = False
    api_key: str = field(default="", repr=False)  # secret: never in a log line
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # secret: never in a log line
    api_keys_file: str = ""
    allow_unauthenticated: bool = False
    allowed_hosts: tuple[str, ...] = ()
    max_body_size: int = 64 << 20
    max_num_ctx: int = 131072
    max_num_predict: int = 32768
    registry_auth: Path = Path.home() / ".ollama" / "registry-auth.json"
    registry_credentials: str = field(default="", repr=False)  # secret: never in a log line
    hf_endpoint: str = "https://huggingface.co"
    hf_token: str = field(default="", repr=False)  # secret: never in a log line
    rpc_servers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()
    runner_timeout: int = 300
    load_timeout: float = 300.0
    runner_memory: int = 0
    prune_grace: float = 3600.0
    shutdown_timeout: float = 10.0
    listing_threads: int = 4
    template_max_steps: int = 500_000
    template_max_output: int = 16 << 20
    template_timeout: float = 10.0
    max_messages: int = 2048
    max_prompt_bytes: int = 4 << 20
    max_stop: int = 64
    max_stop_length: int = 1024
    max_schema_bytes: int = 64 << 10
    max_schema_depth: int = 32
    max_grammar_bytes: int = 256 << 10
    max_embed_inputs: int = 2048
    max_image_pixels: int = 50_000_000
    responses_max: int = 1000
    responses_max_bytes: int = 64 << 20
    responses_max_age: float = 3600.0
    cache_ram: int = -1
    prompt_cache_dir: str = ""
    prompt_cache_disk: int = 10240
    draft_max: int = 16
    cached_first: int = 4


# field -> (environment variable, parser, description)
_ENV: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "host": ("OLLAMA_HOST", str.strip, "address the server binds and the CLI calls"),
    "models": ("OLLAMA_MODELS", _path, "the model store"),
    "cache": ("OLLAMA_PY_CACHE", _path, "downloads that are not models in the store (the default model's wheel)"),
    "keep_alive": ("OLLAMA_KEEP_ALIVE", str.strip, "how long an idle model stays loaded"),
    "num_parallel": ("OLLAMA_NUM_PARALLEL", _int, "sequences each loaded model serves at once"),
    "max_loaded_models": ("OLLAMA_MAX_LOADED_MODELS", _int, "models loaded at once (0: as memory allows)"),
    "max_queue": ("OLLAMA_MAX_QUEUE", _int, "requests waiting before the server answers busy"),
    "origins": ("OLLAMA_ORIGINS", _list, "extra CORS origins, comma separated"),
    "context_length": ("OLLAMA_CONTEXT_LENGTH", _int, "default context length (num_ctx)"),
    "flash_attention": ("OLLAMA_FLASH_ATTENTION", _flash_attention,
                        "flash attention: auto (where supported), 1 or 0; quantized KV caches need it"),
    "cpu_attention": ("OLLAMA_PY_CPU_ATTENTION", _bool,
                      "ollama-py's flash attention kernel on CPU-only machines (0: ggml's)"),
    "kv_cache_type": ("OLLAMA_KV_CACHE_TYPE", str.strip, "KV cache type: f16, q8_0 or q4_0"),
    "noprune": ("OLLAMA_NOPRUNE", _bool, "keep unused blobs when models are removed"),
    "debug": ("OLLAMA_DEBUG", _bool, "verbose logging"),
    "nohistory": ("OLLAMA_NOHISTORY", _bool, "do not keep the interactive run's history in ~/.ollama/history"),
    "api_key": ("OLLAMA_API_KEY", str.strip, "the API key the CLI sends to the server ('Authorization: Bearer')"),
    "api_keys": ("OLLAMA_PY_API_KEYS", _list,
                 "API keys clients must send as 'Authorization: Bearer KEY', comma separated; "
                 "KEY:read limits a key to inference and listing"),
    "api_keys_file": ("OLLAMA_PY_API_KEYS_FILE", lambda raw: str(_path(raw)),
                      "file of API keys, one per line as 'KEY' or 'KEY read'; # starts a comment"),
    "allow_unauthenticated": ("OLLAMA_PY_ALLOW_UNAUTHENTICATED", _bool,
                              "serve on a non-loopback address without API keys"),
    "allowed_hosts": ("OLLAMA_PY_ALLOWED_HOSTS", _list,
                      "extra Host header names accepted (against DNS rebinding), comma separated"),
    "max_body_size": ("OLLAMA_PY_MAX_BODY_SIZE", _int, "largest JSON request body in bytes (blob uploads excepted)"),
    "max_num_ctx": ("OLLAMA_PY_MAX_NUM_CTX", _int, "largest num_ctx a request may ask for"),
    "max_num_predict": ("OLLAMA_PY_MAX_NUM_PREDICT", _int, "most tokens one answer may generate"),
    "registry_auth": ("OLLAMA_PY_REGISTRY_AUTH", _path,
                      "registry credentials file for pull and push, in Docker's config.json format "
                      "(~/.docker/config.json works)"),
    "registry_credentials": ("OLLAMA_PY_REGISTRY_CREDENTIALS", _credentials,
                             "registry credentials as HOST=USER:PASSWORD, for one registry; wins over the file"),
    "hf_endpoint": ("HF_ENDPOINT", _endpoint, "the Hugging Face Hub that hf.co/ model names are pulled from"),
    "hf_token": ("HF_TOKEN", str.strip, "Hugging Face access token, for gated and private repositories"),
    "rpc_servers": ("OLLAMA_RPC_SERVERS", _endpoints,
                    "RPC workers (`ollama-py worker`) to split models across, as HOST:PORT,...; a model with "
                    "num_gpu 0 stays on this machine"),
    "tensor_split": ("OLLAMA_PY_TENSOR_SPLIT", _proportions,
                     "share of the layers per device, e.g. 3,1: the RPC workers in OLLAMA_RPC_SERVERS order, "
                     "then local GPUs; default: by free memory"),
    "runner_timeout": ("OLLAMA_PY_RUNNER_TIMEOUT", _int,
                       "seconds a runner process with work may send nothing (a generation step, a template being "
                       "rendered, an RPC worker cut off without a reset) before it is stopped"),
    "load_timeout": ("OLLAMA_LOAD_TIMEOUT", _duration,
                     "how long a model may take to load before its runner process is stopped (seconds or 5m)"),
    "runner_memory": ("OLLAMA_PY_RUNNER_MEMORY", _int,
                      "resident memory in bytes past which a runner process is stopped; 0: twice the model's "
                      "planned host memory plus 1 GiB"),
    "prune_grace": ("OLLAMA_PY_PRUNE_GRACE", _age,
                    "how long an unused blob or an unfinished write is left alone by the start-up prune, as "
                    "another server on the same store may still be using it (seconds or 1h)"),
    "shutdown_timeout": ("OLLAMA_PY_SHUTDOWN_TIMEOUT", _duration,
                         "on SIGTERM, how long in-flight requests may finish; unloading gets as long again, then "
                         "the server exits even if worker threads are still busy (seconds or 1m)"),
    "listing_threads": ("OLLAMA_PY_LISTING_THREADS", _int,
                        "worker threads of their own for /api/tags, /api/show and /api/ps, so that they answer "
                        "while generation keeps every other thread busy"),
    "template_max_steps": ("OLLAMA_PY_TEMPLATE_MAX_STEPS", _int,
                           "actions and loop turns one rendering of a Go template may take"),
    "template_max_output": ("OLLAMA_PY_TEMPLATE_MAX_OUTPUT", _int,
                            "characters one rendering of a Go template may write (or make as one value); keep it "
                            "above OLLAMA_PY_MAX_PROMPT_BYTES"),
    "template_timeout": ("OLLAMA_PY_TEMPLATE_TIMEOUT", _duration,
                         "how long rendering a request's prompt may take; a Go template stops there, and a runner "
                         "process whose Jinja template overruns it twice over is restarted"),
    "max_messages": ("OLLAMA_PY_MAX_MESSAGES", _int, "most messages one chat request may carry"),
    "max_prompt_bytes": ("OLLAMA_PY_MAX_PROMPT_BYTES", _int,
                         "most bytes of text (prompt, system, suffix, messages, template, embedding inputs) "
                         "one request may carry"),
    "max_stop": ("OLLAMA_PY_MAX_STOP", _int, "most stop strings one request may give"),
    "max_stop_length": ("OLLAMA_PY_MAX_STOP_LENGTH", _int, "longest stop string, in characters"),
    "max_schema_bytes": ("OLLAMA_PY_MAX_SCHEMA_BYTES", _int, "largest JSON schema in `format`, as JSON bytes"),
    "max_schema_depth": ("OLLAMA_PY_MAX_SCHEMA_DEPTH", _int, "deepest nesting of a JSON schema in `format`"),
    "max_grammar_bytes": ("OLLAMA_PY_MAX_GRAMMAR_BYTES", _int,
                          "largest grammar a `format` schema may turn into, in bytes of GBNF"),
    "max_embed_inputs": ("OLLAMA_PY_MAX_EMBED_INPUTS", _int, "most inputs one embedding request may carry"),
    "max_image_pixels": ("OLLAMA_PY_MAX_IMAGE_PIXELS", _int,
                         "largest image a request may send, in pixels (width times height, read from its header)"),
    "responses_max": ("OLLAMA_PY_RESPONSES_MAX", _int,
                      "most /v1/responses answers kept in memory for previous_response_id and GET /v1/responses/{id} "
                      "(0: none kept)"),
    "responses_max_bytes": ("OLLAMA_PY_RESPONSES_MAX_BYTES", _int,
                            "most bytes of kept /v1/responses answers and their conversations; the oldest go first"),
    "responses_max_age": ("OLLAMA_PY_RESPONSES_MAX_AGE", _duration,
                          "how long a /v1/responses answer is kept (seconds or 1h)"),
    "cache_ram": ("OLLAMA_PY_CACHE_RAM", _int,
                  "MiB of host RAM per loaded model for prompt states saved beyond the slots, so a returning "
                  "conversation or a shared system prompt is not evaluated again; -1: a quarter of the memory "
                  "available at load, at most 8192; 0: off"),
    "prompt_cache_dir": ("OLLAMA_PY_PROMPT_CACHE_DIR", lambda raw: str(_path(raw)),
                         "directory keeping finished requests' prompt states across restarts (checked before "
                         "use); unset: none"),
    "prompt_cache_disk": ("OLLAMA_PY_PROMPT_CACHE_DISK", _int,
                          "MiB that OLLAMA_PY_PROMPT_CACHE_DIR may hold per model and options, least recently "
                          "used removed first"),
    "draft_max": ("OLLAMA_PY_DRAFT_MAX", _int,
                  "most tokens a greedy or low-temperature answer drafts per step by looking up its last tokens "
                  "earlier in its prompt and answer (speculative decoding; on only where it is exact, checked at load); "
                  "0: off"),
    "cached_first": ("OLLAMA_PY_CACHED_FIRST", _int,
                     "under a queue, a request with more of its prompt cached (a conversation coming back) takes "
                     "a free slot before older ones, each of which it may pass at most this many rounds of the "
                     "slots (times OLLAMA_NUM_PARALLEL); 0: oldest first, as Ollama"),
}
# Values never logged or shown.
SECRETS = frozenset({"api_keys", "api_key", "registry_credentials", "hf_token"})
# Settings only the CLI reads; `serve` has no flag for them.
CLIENT_ONLY = frozenset({"nohistory", "api_key"})


class Variable(NamedTuple):
    """One setting as the CLI shows it: `serve` makes a flag of each, help texts list them."""

    field: str
    env: str
    description: str
    type: type


def variables() -> list[Variable]:
    """Every setting, in the order of the Settings fields."""
    return [Variable(f.name, _ENV[f.name][0], _ENV[f.name][2], type(getattr(Settings(), f.name)))
            for f in fields(Settings)]


def describe() -> dict[str, str]:
    """Variable name to description, for help texts."""
    return {env: text for env, _, text in _ENV.values()}


def load(environ: Mapping[str, str] | None = None, *, overrides: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment; `overrides` (variable name to raw text, as from `serve` flags) win."""
    env = {**(os.environ if environ is None else environ), **(overrides or {})}
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name, parse, _ = _ENV[f.name]
        raw = env.get(name)
        if raw is None or raw.strip().strip("\"'") == "":
            continue
        try:
            values[f.name] = parse(raw.strip().strip("\"'"))
        except ValueError as exc:
            shown = "(hidden)" if f.name in SECRETS else repr(raw)
            raise SettingsError(f"{name}={shown}: {exc}") from None
    settings = Settings(**values)
    if settings.cache_ram < -1:
        raise SettingsError(f"OLLAMA_PY_CACHE_RAM={settings.cache_ram}: expected MiB, 0 (off) or -1 (automatic)")
    if settings.prompt_cache_disk <= 0:
        raise SettingsError(f"OLLAMA_PY_PROMPT_CACHE_DISK={settings.prompt_cache_disk}: expected a positive "
                            "number of MiB")
    if settings.kv_cache_type not in {"f16", "q8_0", "q4_0"}:
        raise SettingsError(f"OLLAMA_KV_CACHE_TYPE={settings.kv_cache_type!r}: expected f16, q8_0 or q4_0")
    if settings.draft_max < 0:
        raise SettingsError(f"OLLAMA_PY_DRAFT_MAX={settings.draft_max}: expected a number of tokens, 0 (off) or more")
    if settings.cached_first < 0:
        raise SettingsError(f"OLLAMA_PY_CACHED_FIRST={settings.cached_first}: expected a number of rounds, 0 (off) "
                            "or more")
    if settings.listing_threads < 1:
        raise SettingsError(f"OLLAMA_PY_LISTING_THREADS={settings.listing_threads}: expected at least 1")
    return settings
