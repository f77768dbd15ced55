"""ctypes declarations of the pinned llama.h / ggml-backend.h API.

Every Structure here is listed in STRUCTS and checked field by field against
the C compiler's sizeof/offsetof for the pinned headers (tests/test_layout.py):
a drifted layout is the classic way a ctypes binding corrupts memory.
Opaque handles are c_void_p; C enums are c_int; C bool is c_bool.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    POINTER,
    c_bool,
    c_char,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_void_p,
)
from typing import Any

llama_token = c_int32
llama_pos = c_int32
llama_seq_id = c_int32

LLAMA_DEFAULT_SEED = 0xFFFFFFFF
LLAMA_TOKEN_NULL = -1

# enum llama_pooling_type
POOLING_UNSPECIFIED, POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST, POOLING_RANK = -1, 0, 1, 2, 3, 4
# enum llama_flash_attn_type
FLASH_ATTN_AUTO, FLASH_ATTN_DISABLED, FLASH_ATTN_ENABLED = -1, 0, 1
# enum llama_split_mode
SPLIT_MODE_NONE, SPLIT_MODE_LAYER, SPLIT_MODE_ROW = 0, 1, 2
# enum ggml_type, the KV cache types Ollama offers
GGML_TYPE_F16, GGML_TYPE_Q4_0, GGML_TYPE_Q8_0 = 1, 2, 8
# enum ggml_log_level
LOG_NONE, LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CONT = 0, 1, 2, 3, 4, 5
# enum ggml_backend_dev_type
DEV_CPU, DEV_GPU, DEV_IGPU, DEV_ACCEL, DEV_META = 0, 1, 2, 3, 4

progress_callback = ctypes.CFUNCTYPE(c_bool, c_float, c_void_p)
abort_callback = ctypes.CFUNCTYPE(c_bool, c_void_p)
log_callback = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)


class llama_token_data(ctypes.Structure):
    _fields_ = [("id", llama_token), ("logit", c_float), ("p", c_float)]


class llama_token_data_array(ctypes.Structure):
    _fields_ = [
        ("data", POINTER(llama_token_data)),
        ("size", c_size_t),
        ("selected", c_int64),
        ("sorted", c_bool),
    ]


class llama_batch(ctypes.Structure):
    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(llama_token)),
        ("embd", POINTER(c_float)),
        ("pos", POINTER(llama_pos)),
        ("n_seq_id", POINTER(c_int32)),
        ("seq_id", POINTER(POINTER(llama_seq_id))),
        ("logits", POINTER(c_int8)),
    ]


class _kv_override_value(ctypes.Union):
    _fields_ = [
        ("val_i64", c_int64),
        ("val_f64", c_double),
        ("val_bool", c_bool),
        ("val_str", c_char * 128),
    ]


class llama_model_kv_override(ctypes.Structure):
    _anonymous_ = ("value",)
    _fields_ = [("tag", c_int), ("key", c_char * 128), ("value", _kv_override_value)]


class llama_model_params(ctypes.Structure):
    _fields_ = [
        ("devices", POINTER(c_void_p)),
        ("tensor_buft_overrides", c_void_p),
        ("n_gpu_layers", c_int32),
        ("split_mode", c_int),
        ("load_mode", c_int),
        ("lazy_mode", c_int),
        ("main_gpu", c_int32),
        ("tensor_split", POINTER(c_float)),
        ("progress_callback", progress_callback),
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", POINTER(llama_model_kv_override)),
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class llama_context_params(ctypes.Structure):
    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_int),
        ("rope_scaling_type", c_int),
        ("pooling_type", c_int),
        ("attention_type", c_int),
        ("flash_attn_type", c_int),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", c_void_p),
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_int),
        ("type_v", c_int),
        ("abort_callback", abort_callback),
        ("abort_callback_data", c_void_p),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", c_void_p),
        ("n_samplers", c_size_t),
        ("ctx_other", c_void_p),
    ]


class llama_logit_bias(ctypes.Structure):
    _fields_ = [("token", llama_token), ("bias", c_float)]


class llama_sampler_chain_params(ctypes.Structure):
    _fields_ = [("no_perf", c_bool)]


class llama_perf_context_data(ctypes.Structure):
    _fields_ = [
        ("t_start_ms", c_double),
        ("t_load_ms", c_double),
        ("t_p_eval_ms", c_double),
        ("t_eval_ms", c_double),
        ("n_p_eval", c_int32),
        ("n_eval", c_int32),
        ("n_reused", c_int32),
    ]


class llama_perf_sampler_data(ctypes.Structure):
    _fields_ = [("t_sample_ms", c_double), ("n_sample", c_int32)]


class ggml_backend_dev_caps(ctypes.Structure):
    _fields_ = [
        ("async", c_bool),
        ("host_buffer", c_bool),
        ("buffer_from_host_ptr", c_bool),
        ("events", c_bool),
        ("mmap_support", c_bool),
    ]


class ggml_backend_dev_props(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("description", c_char_p),
        ("memory_free", c_size_t),
        ("memory_total", c_size_t),
        ("type", c_int),
        ("device_id", c_char_p),
        ("caps", ggml_backend_dev_caps),
    ]


class llama_model_quantize_params(ctypes.Structure):
    _fields_ = [
        ("nthread", c_int32),
        ("ftype", c_int),
        ("output_tensor_type", c_int),
        ("token_embedding_type", c_int),
        ("allow_requantize", c_bool),
        ("quantize_output_tensor", c_bool),
        ("only_copy", c_bool),
        ("pure", c_bool),
        ("keep_split", c_bool),
        ("dry_run", c_bool),
        ("imatrix", c_void_p),
        ("kv_overrides", c_void_p),
        ("tt_overrides", c_void_p),
        ("prune_layers", POINTER(c_int32)),
        ("max_buf_size", c_size_t),
    ]


# Each struct with the C name and header the layout test compiles against.
STRUCTS: dict[str, tuple[type[ctypes.Structure], str]] = {
    "llama_token_data": (llama_token_data, "llama.h"),
    "llama_token_data_array": (llama_token_data_array, "llama.h"),
    "llama_batch": (llama_batch, "llama.h"),
    "llama_model_kv_override": (llama_model_kv_override, "llama.h"),
    "llama_model_params": (llama_model_params, "llama.h"),
    "llama_context_params": (llama_context_params, "llama.h"),
    "llama_logit_bias": (llama_logit_bias, "llama.h"),
    "llama_sampler_chain_params": (llama_sampler_chain_params, "llama.h"),
    "llama_perf_context_data": (llama_perf_context_data, "llama.h"),
    "llama_perf_sampler_data": (llama_perf_sampler_data, "llama.h"),
    "llama_model_quantize_params": (llama_model_quantize_params, "llama.h"),
    "ggml_backend_dev_caps": (ggml_backend_dev_caps, "ggml-backend.h"),
    "ggml_backend_dev_props": (ggml_backend_dev_props, "ggml-backend.h"),
}

P = c_void_p
i32 = c_int32
f32 = c_float
PTok = POINTER(llama_token)

# name: (argtypes, restype), in the header's order of sections.
LLAMA_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    # process, system
    "llama_backend_init": ([], None),
    "llama_backend_free": ([], None),
    "llama_log_set": ([log_callback, P], None),
    "llama_print_system_info": ([], c_char_p),
    "llama_time_us": ([], c_int64),
    "llama_max_devices": ([], c_size_t),
    "llama_max_parallel_sequences": ([], c_size_t),
    "llama_supports_mmap": ([], c_bool),
    "llama_supports_gpu_offload": ([], c_bool),
    "llama_supports_rpc": ([], c_bool),
    # model
    "llama_model_default_params": ([], llama_model_params),
    "llama_context_default_params": ([], llama_context_params),
    "llama_sampler_chain_default_params": ([], llama_sampler_chain_params),
    "llama_model_load_from_file": ([c_char_p, llama_model_params], P),
    "llama_model_free": ([P], None),
    "llama_model_get_vocab": ([P], P),
    "llama_model_n_ctx_train": ([P], i32),
    "llama_model_n_embd": ([P], i32),
    "llama_model_n_layer": ([P], i32),
    "llama_model_n_head": ([P], i32),
    "llama_model_n_head_kv": ([P], i32),
    "llama_model_n_swa": ([P], i32),
    "llama_model_n_cls_out": ([P], c_uint32),
    "llama_model_desc": ([P, c_char_p, c_size_t], i32),
    "llama_model_size": ([P], ctypes.c_uint64),
    "llama_model_n_params": ([P], ctypes.c_uint64),
    "llama_model_has_encoder": ([P], c_bool),
    "llama_model_has_decoder": ([P], c_bool),
    "llama_model_is_recurrent": ([P], c_bool),
    "llama_model_chat_template": ([P, c_char_p], c_char_p),
    "llama_model_meta_val_str": ([P, c_char_p, c_char_p, c_size_t], i32),
    "llama_model_meta_count": ([P], i32),
    "llama_model_meta_key_by_index": ([P, i32, c_char_p, c_size_t], i32),
    "llama_model_meta_val_str_by_index": ([P, i32, c_char_p, c_size_t], i32),
    "llama_model_ftype": ([P], c_int),
    "llama_ftype_name": ([c_int], c_char_p),
    # quantization
    "llama_model_quantize_default_params": ([], llama_model_quantize_params),
    "llama_model_quantize": ([c_char_p, c_char_p, POINTER(llama_model_quantize_params)], c_uint32),
    # adapters
    "llama_adapter_lora_init": ([P, c_char_p], P),
    "llama_adapter_lora_free": ([P], None),
    "llama_adapter_meta_val_str": ([P, c_char_p, c_char_p, c_size_t], i32),
    "llama_set_adapters_lora": ([P, POINTER(P), c_size_t, POINTER(f32)], i32),
    # context
    "llama_init_from_model": ([P, llama_context_params], P),
    "llama_free": ([P], None),
    "llama_n_ctx": ([P], c_uint32),
    "llama_n_ctx_seq": ([P], c_uint32),
    "llama_n_batch": ([P], c_uint32),
    "llama_n_ubatch": ([P], c_uint32),
    "llama_n_seq_max": ([P], c_uint32),
    "llama_get_memory": ([P], P),
    "llama_pooling_type": ([P], c_int),
    "llama_set_embeddings": ([P, c_bool], None),
    "llama_set_causal_attn": ([P, c_bool], None),
    "llama_set_n_threads": ([P, i32, i32], None),
    "llama_set_abort_callback": ([P, abort_callback, P], None),
    "llama_synchronize": ([P], None),
    # memory (KV cache) per sequence
    "llama_memory_clear": ([P, c_bool], None),
    "llama_memory_seq_rm": ([P, i32, i32, i32], c_bool),
    "llama_memory_seq_cp": ([P, i32, i32, i32, i32], None),
    "llama_memory_seq_keep": ([P, i32], None),
    "llama_memory_seq_add": ([P, i32, i32, i32, i32], None),
    "llama_memory_seq_pos_min": ([P, i32], i32),
    "llama_memory_seq_pos_max": ([P, i32], i32),
    "llama_memory_can_shift": ([P], c_bool),
    # one sequence's state (its KV cells and their tokens' positions) as bytes
    "llama_state_seq_get_size": ([P, i32], c_size_t),
    "llama_state_seq_get_data": ([P, P, c_size_t, i32], c_size_t),
    "llama_state_seq_set_data": ([P, P, c_size_t, i32], c_size_t),
    # batch, decode, outputs
    "llama_batch_init": ([i32, i32, i32], llama_batch),
    "llama_batch_free": ([llama_batch], None),
    "llama_decode": ([P, llama_batch], i32),
    "llama_encode": ([P, llama_batch], i32),
    "llama_get_logits_ith": ([P, i32], POINTER(f32)),
    "llama_get_embeddings_ith": ([P, i32], POINTER(f32)),
    "llama_get_embeddings_seq": ([P, i32], POINTER(f32)),
    # vocab
    "llama_vocab_n_tokens": ([P], i32),
    "llama_vocab_type": ([P], c_int),
    "llama_vocab_get_text": ([P, i32], c_char_p),
    "llama_vocab_get_attr": ([P, i32], c_int),
    "llama_vocab_is_eog": ([P, i32], c_bool),
    "llama_vocab_is_control": ([P, i32], c_bool),
    "llama_vocab_bos": ([P], i32),
    "llama_vocab_eos": ([P], i32),
    "llama_vocab_eot": ([P], i32),
    "llama_vocab_sep": ([P], i32),
    "llama_vocab_nl": ([P], i32),
    "llama_vocab_pad": ([P], i32),
    "llama_vocab_get_add_bos": ([P], c_bool),
    "llama_vocab_get_add_eos": ([P], c_bool),
    "llama_vocab_fim_pre": ([P], i32),
    "llama_vocab_fim_suf": ([P], i32),
    "llama_vocab_fim_mid": ([P], i32),
    "llama_tokenize": ([P, c_char_p, i32, PTok, i32, c_bool, c_bool], i32),
    "llama_token_to_piece": ([P, i32, c_char_p, i32, i32, c_bool], i32),
    "llama_detokenize": ([P, PTok, i32, c_char_p, i32, c_bool, c_bool], i32),
    # samplers
    "llama_sampler_chain_init": ([llama_sampler_chain_params], P),
    "llama_sampler_chain_add": ([P, P], None),
    "llama_sampler_chain_n": ([P], i32),
    "llama_sampler_chain_get": ([P, i32], P),
    "llama_sampler_name": ([P], c_char_p),
    "llama_sampler_accept": ([P, i32], None),
    "llama_sampler_apply": ([P, POINTER(llama_token_data_array)], None),
    "llama_sampler_reset": ([P], None),
    "llama_sampler_clone": ([P], P),
    "llama_sampler_free": ([P], None),
    "llama_sampler_sample": ([P, P, i32], i32),
    "llama_sampler_get_seed": ([P], c_uint32),
    "llama_sampler_init_greedy": ([], P),
    "llama_sampler_init_dist": ([c_uint32], P),
    "llama_sampler_init_top_k": ([i32], P),
    "llama_sampler_init_top_p": ([f32, c_size_t], P),
    "llama_sampler_init_min_p": ([f32, c_size_t], P),
    "llama_sampler_init_typical": ([f32, c_size_t], P),
    "llama_sampler_init_temp": ([f32], P),
    "llama_sampler_init_temp_ext": ([f32, f32, f32], P),
    "llama_sampler_init_xtc": ([f32, f32, c_size_t, c_uint32], P),
    "llama_sampler_init_top_n_sigma": ([f32], P),
    "llama_sampler_init_mirostat": ([i32, c_uint32, f32, f32, i32], P),
    "llama_sampler_init_mirostat_v2": ([c_uint32, f32, f32], P),
    "llama_sampler_init_grammar": ([P, c_char_p, c_char_p], P),
    "llama_sampler_init_grammar_lazy_patterns": (
        [P, c_char_p, c_char_p, POINTER(c_char_p), c_size_t, PTok, c_size_t], P),
    "llama_sampler_init_penalties": ([i32, i32, f32, f32, f32], P),
    "llama_sampler_init_dry": ([P, f32, f32, i32, i32, POINTER(c_char_p), c_size_t], P),
    "llama_sampler_init_logit_bias": ([i32, i32, POINTER(llama_logit_bias)], P),
    # performance counters
    "llama_perf_context": ([P], llama_perf_context_data),
    "llama_perf_context_reset": ([P], None),
    "llama_perf_sampler": ([P], llama_perf_sampler_data),
    "llama_perf_sampler_reset": ([P], None),
}

GGML_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "ggml_backend_load_all": ([], None),
    "ggml_backend_reg_count": ([], c_size_t),
    "ggml_backend_reg_get": ([c_size_t], P),
    "ggml_backend_reg_by_name": ([c_char_p], P),
    "ggml_backend_reg_name": ([P], c_char_p),
    "ggml_backend_reg_dev_count": ([P], c_size_t),
    "ggml_backend_reg_dev_get": ([P, c_size_t], P),
    "ggml_backend_reg_get_proc_address": ([P, c_char_p], P),
    "ggml_backend_register": ([P], None),
    "ggml_backend_dev_count": ([], c_size_t),
    "ggml_backend_dev_get": ([c_size_t], P),
    "ggml_backend_dev_by_name": ([c_char_p], P),
    "ggml_backend_dev_name": ([P], c_char_p),
    "ggml_backend_dev_description": ([P], c_char_p),
    "ggml_backend_dev_memory": ([P, POINTER(c_size_t), POINTER(c_size_t)], None),
    "ggml_backend_dev_type": ([P], c_int),
    "ggml_backend_dev_get_props": ([P, POINTER(ggml_backend_dev_props)], None),
}

# ggml_backend_rpc_add_server, reached through the RPC registry's proc address.
rpc_add_server_fn = ctypes.CFUNCTYPE(P, c_char_p)

# Our shim (ollama_py/native/shim.cpp): JSON strings in, malloc'd JSON out.
# Returned strings are c_void_p so that Python can free them after reading.
SHIM_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "ollama_py_string_free": ([P], None),
    "ollama_py_json_schema_to_grammar": ([c_char_p], P),
    "ollama_py_chat_templates_init": ([P, c_char_p, POINTER(P)], P),
    "ollama_py_chat_templates_free": ([P], None),
    "ollama_py_chat_apply": ([P, c_char_p, POINTER(P)], P),
    "ollama_py_chat_result_free": ([P], None),
    "ollama_py_chat_parse": ([P, c_char_p], P),
    # The per-token hot path, without JSON: sampling by grammar rejection and log-probabilities.
    "ollama_py_sample": ([P, P, P, i32], i32),
    "ollama_py_logprobs": ([P, i32, i32, i32, POINTER(f32), PTok, POINTER(f32)], i32),
    "ollama_py_cpu_reference": ([P, c_bool], None),
    "ollama_py_attention_register": ([], None),
    "ollama_py_attention_ops": ([], ctypes.c_uint64),
}
