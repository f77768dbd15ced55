"""Safetensors folders (a Hugging Face model as published) converted to GGUF, in process.

Built on the `gguf` package's own tables (architecture names, Hugging Face to
GGUF tensor names, metadata keys, special tokens) with `safetensors` and
`numpy`; what is ours is which config fields feed which keys. Supported: the
llama family (llama, mistral, qwen2, SmolLM) with a `tokenizer.json` BPE
tokenizer, and BERT sentence-embedding models with a WordPiece
`tokenizer.json`. Matrices are written as F16, vectors as F32; a create may
quantize the result further. Anything else is refused with a message naming
what is missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import safe_open

log = logging.getLogger(__name__)

_LLAMA_FAMILY = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA, "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
                 "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2}
_BERT = {"BertModel", "BertForMaskedLM", "BertForSequenceClassification"}
# llama.cpp's name for a BPE tokenizer's pre-tokenizer, told by what tokenizer.json's pre_tokenizer does.
_LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
_QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
_F16, _F32 = 1, 0  # llama_ftype


class ConvertError(ValueError):
    """A folder that cannot be converted: unsupported architecture or tokenizer, missing or odd files."""


@dataclass(frozen=True)
class _Source:
    folder: Path
    config: dict[str, Any]
    tokenizer: dict[str, Any]

    def json(self, name: str) -> dict[str, Any]:
        path = self.folder / name
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConvertError(f"{name}: not readable JSON: {exc}") from None
        return data if isinstance(data, dict) else {}


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def convert(folder: Path, out: Path) -> str:
    """Writes the model in `folder` as one GGUF at `out`; returns its GGUF architecture."""
    source = _open(folder)
    architectures = source.config.get("architectures") or [source.config.get("model_type", "unknown")]
    name = str(architectures[0])
    if name in _LLAMA_FAMILY:
        arch = _LLAMA_FAMILY[name]
    elif name in _BERT:
        arch = gguf.MODEL_ARCH.BERT
    else:
        raise ConvertError(f"unsupported architecture {name}: safetensors import supports "
                           f"{', '.join(sorted([*_LLAMA_FAMILY, *_BERT]))}")
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    try:
        if arch == gguf.MODEL_ARCH.BERT:
            _bert_metadata(source, writer)
        else:
            _llama_metadata(source, writer)
        _tensors(source, arch, writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return gguf.MODEL_ARCH_NAMES[arch]


def _open(folder: Path) -> _Source:
    if not (folder / "config.json").is_file():
        raise ConvertError(f"{folder.name}: no config.json; a safetensors model folder needs one")
    if not any(folder.glob("*.safetensors")):
        raise ConvertError(f"{folder.name}: no .safetensors files")
    bare = _Source(folder, {}, {})
    tokenizer = bare.json("tokenizer.json")
    if not tokenizer:
        what = " (a SentencePiece tokenizer.model is not supported)" if (folder / "tokenizer.model").exists() else ""
        raise ConvertError(f"{folder.name}: no tokenizer.json{what}")
    return _Source(folder, bare.json("config.json"), tokenizer)


def _hparam(config: dict[str, Any], key: str) -> Any:
    value = config.get(key)
    if value is None:
        raise ConvertError(f"config.json lacks {key}")
    return value


def _llama_metadata(source: _Source, w: gguf.GGUFWriter) -> None:
    c = source.config
    n_head = int(_hparam(c, "num_attention_heads"))
    hidden = int(_hparam(c, "hidden_size"))
    w.add_context_length(int(_hparam(c, "max_position_embeddings")))
    w.add_embedding_length(hidden)
    w.add_block_count(int(_hparam(c, "num_hidden_layers")))
    w.add_feed_forward_length(int(_hparam(c, "intermediate_size")))
    w.add_head_count(n_head)
    w.add_head_count_kv(int(c.get("num_key_value_heads") or n_head))
    w.add_rope_freq_base(float(c.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    w.add_rope_dimension_count(int(c.get("head_dim") or hidden // n_head))
    w.add_file_type(_F16)
    model = source.tokenizer.get("model", {})
    if model.get("type") != "BPE":
        raise ConvertError(f"tokenizer.json: a {model.get('type')} tokenizer; the llama family needs BPE")
    tokens, types = _vocab(source, dict(model.get("vocab", {})))
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer(source.tokenizer.get("pre_tokenizer")))
    w.add_token_list(tokens)
    w.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_token_merges(merges)
    gguf.SpecialVocab(source.folder, load_merges=False, n_vocab=len(tokens)).add_to_gguf(w)


def _pre_tokenizer(pre: Any) -> str:
    text = json.dumps(pre)
    if pre and pre.get("type") == "Sequence":
        kinds = [p.get("type") for p in pre.get("pretokenizers", [])]
        if kinds == ["Digits", "ByteLevel"]:
            return "smollm"
    if _LLAMA3_SPLIT.replace("\\", "\\\\") in text:
        return "llama-bpe"
    if _QWEN2_SPLIT.replace("\\", "\\\\") in text:
        return "qwen2"
    raise ConvertError("tokenizer.json: a pre-tokenizer llama.cpp's import does not recognise "
                       "(known: SmolLM, Llama 3, Qwen2)")


def _vocab(source: _Source, vocab: dict[str, int]) -> tuple[list[str], list[int]]:
    """Tokens in id order with llama.cpp's token types; added special tokens are control tokens."""
    added = {t["content"]: (int(t["id"]), bool(t.get("special"))) for t in source.tokenizer.get("added_tokens", [])}
    by_id: dict[int, str] = {i: tok for tok, i in vocab.items()}
    by_id.update({i: tok for tok, (i, _) in added.items()})
    n = max(by_id, default=-1) + 1
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    types = [gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED for i in range(n)]
    for i, special in added.values():
        types[i] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    return tokens, [int(t) for t in types]


def _bert_metadata(source: _Source, w: gguf.GGUFWriter) -> None:
    c = source.config
    w.add_context_length(int(_hparam(c, "max_position_embeddings")))
    w.add_embedding_length(int(_hparam(c, "hidden_size")))
    w.add_block_count(int(_hparam(c, "num_hidden_layers")))
    w.add_feed_forward_length(int(_hparam(c, "intermediate_size")))
    w.add_head_count(int(_hparam(c, "num_attention_heads")))
    w.add_layer_norm_eps(float(c.get("layer_norm_eps", 1e-12)))
    w.add_causal_attention(False)
    w.add_file_type(_F16)
    pooling = source.json("1_Pooling/config.json")
    w.add_pooling_type(gguf.PoolingType.CLS if pooling.get("pooling_mode_cls_token") else gguf.PoolingType.MEAN)
    w.add_token_type_count(int(c.get("type_vocab_size", 1)))
    model = source.tokenizer.get("model", {})
    if model.get("type") != "WordPiece":
        raise ConvertError(f"tokenizer.json: a {model.get('type')} tokenizer; BERT needs WordPiece")
    tokens, types = _vocab(source, dict(model.get("vocab", {})))
    # llama.cpp's WPM tokenizer marks a word's start with U+2581 and a continuation by its absence.
    tokens = [t if (t.startswith("[") and t.endswith("]")) else t[2:] if t.startswith("##") else "\u2581" + t
              for t in tokens]
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(source.folder, load_merges=False, n_vocab=len(tokens)).add_to_gguf(w)


def permute_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's llama q/k rows (halves rotated) in GGUF's order (pairs interleaved); its own inverse's twin."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def unpermute_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF's llama q/k rows back in Hugging Face's order."""
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tensors(source: _Source, arch: gguf.MODEL_ARCH, w: gguf.GGUFWriter) -> None:
    c = source.config
    n_blocks = int(_hparam(c, "num_hidden_layers"))
    names = gguf.get_tensor_name_map(arch, n_blocks)
    n_head = int(c.get("num_attention_heads", 0))
    n_head_kv = int(c.get("num_key_value_heads") or n_head)
    for path in sorted(source.folder.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            for hf_name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                if hf_name.endswith((".position_ids", "rotary_emb.inv_freq")) or hf_name.startswith("pooler."):
                    continue
                name = names.get_name(hf_name.removeprefix("bert."), try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ConvertError(f"{path.name}: tensor {hf_name} has no GGUF name for "
                                       f"{gguf.MODEL_ARCH_NAMES[arch]}")
                try:
                    data = f.get_tensor(hf_name)
                except TypeError as exc:  # numpy has no bfloat16
                    raise ConvertError(f"{path.name}: {hf_name}: {exc} (bfloat16 weights are not supported)") from None
                if arch == gguf.MODEL_ARCH.LLAMA and name.endswith("attn_q.weight"):
                    data = permute_rope(data, n_head)
                elif arch == gguf.MODEL_ARCH.LLAMA and name.endswith("attn_k.weight"):
                    data = permute_rope(data, n_head_kv)
                # Embeddings llama.cpp adds rather than multiplies stay F32: ggml adds no F16 to F32.
                added = name.startswith(("position_embd.", "token_types."))
                dtype = np.float16 if data.ndim > 1 and not added else np.float32
                w.add_tensor(name, np.ascontiguousarray(data.astype(dtype)))
