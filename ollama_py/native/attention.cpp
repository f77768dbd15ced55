// Flash attention for the CPU, as a ggml "accelerator" device that takes only
// GGML_OP_FLASH_ATTN_EXT over f16 keys and values in host memory; ggml's CPU
// backend keeps every other op.
//
// Why: on a CPU a decode step of several streams spends most of its time in
// attention once contexts hold a few hundred tokens, and ggml's CPU kernel
// computes it one cell at a time: the query converted to f16, one f16 dot
// product, one expf and one f16 multiply-add over the value row per cell and
// head, its accumulator kept in f16. This kernel converts a block of cells'
// keys and values to f32 once for every query head of the group that shares
// them (and every row of the same sequence), then scores the block, takes the
// softmax over it and adds up the values in f32.
//
// Every query row's arithmetic depends only on that row, its mask and the
// cells: blocks start at fixed cell indices, and rows or heads computed
// together only share the conversions. So a row gets the same bits alone or
// in any batch, which exact drafting and "greedy output identical alone or
// batched" need (the reason the runner otherwise decodes with ggml's
// reference kernels).
//
// The device registers in the process's ggml registry; llama.cpp then
// creates its backend for every context beside the CPU's (as it does for
// BLAS), and ggml's scheduler moves each supported attention node onto it,
// since its buffer type is the CPU's.

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-backend-impl.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#define SHIM_API extern "C" __attribute__((visibility("default")))

namespace {

constexpr int64_t BLOCK = 32;     // cells per block
constexpr int64_t ROWS = 4;       // query rows of one sequence that share a block's conversion
constexpr int64_t MAX_DIM = 256;  // head sizes this kernel takes
constexpr int64_t MAX_GROUP = 16; // query heads per key/value head
constexpr int64_t TILE_ROWS = 64; // ggml-cpu's GGML_FA_TILE_Q

std::atomic<uint64_t> computed{0};  // attention nodes computed, for ollama_py_attention_ops

struct attention_backend {
    int n_threads = 1;
};

float op_param(const ggml_tensor * op, int i) {
    float value;
    std::memcpy(&value, (const float *) op->op_params + i, sizeof(float));
    return value;
}

bool supported(const ggml_tensor * op) {
    // From TILE_ROWS rows of a sequence ggml's tiled kernel (a prompt's prefill) is the faster one.
    if (op->op != GGML_OP_FLASH_ATTN_EXT || op->src[0]->ne[1] >= TILE_ROWS) {
        return false;
    }
    const ggml_tensor * q = op->src[0];
    const ggml_tensor * k = op->src[1];
    const ggml_tensor * v = op->src[2];
    const ggml_tensor * mask = op->src[3];
    if (op->src[4] != nullptr || op->type != GGML_TYPE_F32 || q->type != GGML_TYPE_F32 ||
        k->type != GGML_TYPE_F16 || v->type != GGML_TYPE_F16 || (mask && mask->type != GGML_TYPE_F16)) {
        return false;
    }
    if (op_param(op, 1) != 0.0f || op_param(op, 2) != 0.0f) {  // ALiBi, logit soft-capping
        return false;
    }
    const int64_t dk = k->ne[0], dv = v->ne[0];
    if (dk > MAX_DIM || dv > MAX_DIM || q->ne[0] != dk || k->ne[1] != v->ne[1]) {
        return false;
    }
    if (q->nb[0] != sizeof(float) || k->nb[0] != sizeof(ggml_fp16_t) || v->nb[0] != sizeof(ggml_fp16_t) ||
        op->nb[0] != sizeof(float)) {
        return false;
    }
    if (k->ne[2] == 0 || q->ne[2] % k->ne[2] != 0 || k->ne[2] != v->ne[2] || q->ne[2] / k->ne[2] > MAX_GROUP ||
        k->ne[3] == 0 || q->ne[3] % k->ne[3] != 0 || k->ne[3] != v->ne[3]) {
        return false;
    }
    return true;
}

// One piece of work: rows [row0, row1) of sequence iq3, query heads [head0, head1), which share one key/value head.
struct unit {
    int64_t iq3, head0, head1, row0, row1;
};

float dot(const float * a, const float * b, int64_t n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) {
        sum += a[i] * b[i];
    }
    return sum;
}

void compute_unit(const ggml_tensor * op, const unit & u, float * scratch) {
    const ggml_tensor * q = op->src[0];
    const ggml_tensor * k = op->src[1];
    const ggml_tensor * v = op->src[2];
    const ggml_tensor * mask = op->src[3];
    const int64_t dk = k->ne[0], dv = v->ne[0], n_kv = k->ne[1];
    const int64_t n_rows = q->ne[1], n_head = q->ne[2];
    const int64_t ik2 = u.head0 / (n_head / k->ne[2]);
    const int64_t ik3 = u.iq3 / (q->ne[3] / k->ne[3]);
    const float scale = op_param(op, 0);

    const int64_t n_heads = u.head1 - u.head0, n_q = (u.row1 - u.row0) * n_heads;
    float * kf = scratch;                    // BLOCK x dk
    float * vf = kf + BLOCK * MAX_DIM;       // BLOCK x dv
    float * acc = vf + BLOCK * MAX_DIM;      // n_q x dv
    float * best = acc + ROWS * MAX_GROUP * MAX_DIM;  // n_q
    float * total = best + ROWS * MAX_GROUP;          // n_q
    float * s = total + ROWS * MAX_GROUP;             // BLOCK
    std::fill(acc, acc + n_q * dv, 0.0f);
    std::fill(best, best + n_q, -INFINITY);
    std::fill(total, total + n_q, 0.0f);

    auto mask_row = [&](int64_t row, int64_t head) -> const ggml_fp16_t * {
        if (!mask) {
            return nullptr;
        }
        return (const ggml_fp16_t *) ((const char *) mask->data + row * mask->nb[1] +
                                      (head % mask->ne[2]) * mask->nb[2] + (u.iq3 % mask->ne[3]) * mask->nb[3]);
    };

    for (int64_t c0 = 0; c0 < n_kv; c0 += BLOCK) {
        const int64_t c1 = std::min(c0 + BLOCK, n_kv);
        // Skip the block's conversion when every query of the unit has it masked out.
        bool any = !mask;
        for (int64_t row = u.row0; row < u.row1 && !any; row++) {
            for (int64_t head = u.head0; head < u.head1 && !any; head++) {
                const ggml_fp16_t * m = mask_row(row, head);
                for (int64_t c = c0; c < c1; c++) {
                    if (ggml_fp16_to_fp32(m[c]) != -INFINITY) {
                        any = true;
                        break;
                    }
                }
            }
        }
        if (!any) {
            continue;
        }
        for (int64_t c = c0; c < c1; c++) {
            ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) ((const char *) k->data + c * k->nb[1] + ik2 * k->nb[2] +
                                                         ik3 * k->nb[3]), kf + (c - c0) * dk, dk);
            ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) ((const char *) v->data + c * v->nb[1] + ik2 * v->nb[2] +
                                                         ik3 * v->nb[3]), vf + (c - c0) * dv, dv);
        }
        int64_t iq = 0;
        for (int64_t row = u.row0; row < u.row1; row++) {
            for (int64_t head = u.head0; head < u.head1; head++, iq++) {
                const float * qp = (const float *) ((const char *) q->data + row * q->nb[1] + head * q->nb[2] +
                                                    u.iq3 * q->nb[3]);
                const ggml_fp16_t * m = mask_row(row, head);
                float block_max = -INFINITY;
                for (int64_t c = c0; c < c1; c++) {
                    const float mv = m ? ggml_fp16_to_fp32(m[c]) : 0.0f;
                    s[c - c0] = mv == -INFINITY ? -INFINITY : dot(qp, kf + (c - c0) * dk, dk) * scale + mv;
                    block_max = std::max(block_max, s[c - c0]);
                }
                if (block_max == -INFINITY) {
                    continue;
                }
                float * a = acc + iq * dv;
                if (block_max > best[iq]) {
                    const float shrink = best[iq] == -INFINITY ? 0.0f : std::exp(best[iq] - block_max);
                    for (int64_t d = 0; d < dv; d++) {
                        a[d] *= shrink;
                    }
                    total[iq] *= shrink;
                    best[iq] = block_max;
                }
                const float top = best[iq];
                for (int64_t c = c0; c < c1; c++) {
                    const float p = std::exp(s[c - c0] - top);
                    s[c - c0] = p;
                    total[iq] += p;
                }
                for (int64_t c = c0; c < c1; c++) {
                    const float p = s[c - c0];
                    if (p == 0.0f) {  // a masked cell (or one too far below the best to count): as ggml, skipped
                        continue;
                    }
                    const float * vr = vf + (c - c0) * dv;
#pragma omp simd
                    for (int64_t d = 0; d < dv; d++) {
                        a[d] += p * vr[d];
                    }
                }
            }
        }
    }

    // dst is [dv, n_head, n_rows, n_seq]: the attention output already permuted to rows of heads.
    int64_t iq = 0;
    for (int64_t row = u.row0; row < u.row1; row++) {
        for (int64_t head = u.head0; head < u.head1; head++, iq++) {
            float * out = (float *) ((char *) op->data + ((u.iq3 * n_rows + row) * n_head + head) * op->nb[1]);
            const float inv = total[iq] == 0.0f ? 0.0f : 1.0f / total[iq];
            for (int64_t d = 0; d < dv; d++) {
                out[d] = acc[iq * dv + d] * inv;
            }
        }
    }
}

void compute(const ggml_tensor * op, int n_threads) {
    const ggml_tensor * q = op->src[0];
    const ggml_tensor * k = op->src[1];
    const int64_t n_rows = q->ne[1], n_head = q->ne[2], n_seq = q->ne[3];
    const int64_t group = n_head / k->ne[2];
    // Heads of a group together (they share the block's conversion) unless that leaves threads idle.
    const int64_t row_chunks = (n_rows + ROWS - 1) / ROWS;
    const int64_t per = n_seq * k->ne[2] * row_chunks >= 2 * n_threads ? group : 1;
    std::vector<unit> units;
    for (int64_t iq3 = 0; iq3 < n_seq; iq3++) {
        for (int64_t head = 0; head < n_head; head += per) {
            for (int64_t row = 0; row < n_rows; row += ROWS) {
                units.push_back({iq3, head, head + per, row, std::min(row + ROWS, n_rows)});
            }
        }
    }
    constexpr int64_t scratch_floats = 2 * BLOCK * MAX_DIM + ROWS * MAX_GROUP * (MAX_DIM + 2) + BLOCK;
    const int64_t n_units = (int64_t) units.size();
#pragma omp parallel num_threads(std::max(1, std::min<int>(n_threads, (int) n_units)))
    {
        thread_local std::vector<float> scratch(scratch_floats);  // once per thread, not per attention node
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n_units; i++) {
            compute_unit(op, units[i], scratch.data());
        }
    }
}

// ---- the ggml backend, device and registry -----------------------------------------------------------------------

const char * backend_name(ggml_backend_t) {
    return "ollama-py-attention";
}

void backend_free(ggml_backend_t backend) {
    delete (attention_backend *) backend->context;
    delete backend;
}

ggml_status backend_graph_compute(ggml_backend_t backend, ggml_cgraph * graph) {
    const int n_threads = ((attention_backend *) backend->context)->n_threads;
    for (int i = 0; i < ggml_graph_n_nodes(graph); i++) {
        ggml_tensor * node = ggml_graph_node(graph, i);
        if (node->op == GGML_OP_FLASH_ATTN_EXT) {
            compute(node, n_threads);
            computed.fetch_add(1, std::memory_order_relaxed);
        } else if (node->op != GGML_OP_NONE && node->op != GGML_OP_VIEW && node->op != GGML_OP_RESHAPE &&
                   node->op != GGML_OP_PERMUTE && node->op != GGML_OP_TRANSPOSE) {
            return GGML_STATUS_FAILED;  // the scheduler gives this backend only what supports_op took
        }
    }
    return GGML_STATUS_SUCCESS;
}

ggml_guid_t backend_guid() {
    static ggml_guid guid = {0x6f, 0x6c, 0x6c, 0x61, 0x6d, 0x61, 0x2d, 0x70, 0x79, 0x2d, 0x61, 0x74, 0x74, 0x6e, 0x00, 0x01};
    return &guid;
}

const ggml_backend_i backend_iface = {
    /* .get_name            = */ backend_name,
    /* .free                = */ backend_free,
    /* .set_tensor_async    = */ nullptr,
    /* .get_tensor_async    = */ nullptr,
    /* .set_tensor_2d_async = */ nullptr,
    /* .get_tensor_2d_async = */ nullptr,
    /* .cpy_tensor_async    = */ nullptr,
    /* .synchronize         = */ nullptr,
    /* .graph_plan_create   = */ nullptr,
    /* .graph_plan_free     = */ nullptr,
    /* .graph_plan_update   = */ nullptr,
    /* .graph_plan_compute  = */ nullptr,
    /* .graph_compute       = */ backend_graph_compute,
    /* .event_record        = */ nullptr,
    /* .event_wait          = */ nullptr,
    /* .graph_optimize      = */ nullptr,
};

const char * device_name(ggml_backend_dev_t) {
    return "OLLAMA_PY_ATTN";
}

const char * device_description(ggml_backend_dev_t) {
    return "ollama-py's CPU flash attention";
}

void device_memory(ggml_backend_dev_t, size_t * free, size_t * total) {
    *free = 0;
    *total = 0;
}

enum ggml_backend_dev_type device_type(ggml_backend_dev_t) {
    return GGML_BACKEND_DEVICE_TYPE_ACCEL;
}

void device_props(ggml_backend_dev_t dev, ggml_backend_dev_props * props) {
    props->name = device_name(dev);
    props->description = device_description(dev);
    props->type = device_type(dev);
    props->device_id = nullptr;
    device_memory(dev, &props->memory_free, &props->memory_total);
    props->caps = {/* .async = */ false, /* .host_buffer = */ false, /* .buffer_from_host_ptr = */ false,
                   /* .events = */ false};
}

ggml_backend_t device_init(ggml_backend_dev_t dev, const char *) {
    return new ggml_backend{backend_guid(), backend_iface, dev, new attention_backend};
}

ggml_backend_buffer_type_t device_buffer_type(ggml_backend_dev_t) {
    return ggml_backend_cpu_buffer_type();
}

bool device_supports_op(ggml_backend_dev_t, const ggml_tensor * op) {
    return supported(op);
}

bool device_supports_buft(ggml_backend_dev_t, ggml_backend_buffer_type_t buft) {
    return ggml_backend_buft_is_host(buft);
}

const ggml_backend_device_i device_iface = {
    /* .get_name             = */ device_name,
    /* .get_description      = */ device_description,
    /* .get_memory           = */ device_memory,
    /* .get_type             = */ device_type,
    /* .get_props            = */ device_props,
    /* .init_backend         = */ device_init,
    /* .get_buffer_type      = */ device_buffer_type,
    /* .get_host_buffer_type = */ nullptr,
    /* .buffer_from_host_ptr = */ nullptr,
    /* .supports_op          = */ device_supports_op,
    /* .supports_buft        = */ device_supports_buft,
    /* .offload_op           = */ nullptr,
    /* .event_new            = */ nullptr,
    /* .event_free           = */ nullptr,
    /* .event_synchronize    = */ nullptr,
};

void set_n_threads(ggml_backend_t backend, int n_threads) {
    ((attention_backend *) backend->context)->n_threads = std::max(1, n_threads);
}

const char * reg_name(ggml_backend_reg_t) {
    return "OLLAMA_PY_ATTN";
}

size_t reg_device_count(ggml_backend_reg_t) {
    return 1;
}

ggml_backend_dev_t reg_device(ggml_backend_reg_t reg, size_t index);

void * reg_proc_address(ggml_backend_reg_t, const char * name) {
    if (std::strcmp(name, "ggml_backend_set_n_threads") == 0) {
        return (void *) set_n_threads;
    }
    return nullptr;
}

const ggml_backend_reg_i reg_iface = {
    /* .get_name         = */ reg_name,
    /* .get_device_count = */ reg_device_count,
    /* .get_device       = */ reg_device,
    /* .get_proc_address = */ reg_proc_address,
};

ggml_backend_reg the_reg = {GGML_BACKEND_API_VERSION, reg_iface, nullptr};
ggml_backend_device the_device = {device_iface, &the_reg, nullptr};

ggml_backend_dev_t reg_device(ggml_backend_reg_t, size_t index) {
    return index == 0 ? &the_device : nullptr;
}

}  // namespace

// Adds the device to ggml's registry, once per process; contexts created afterwards use it.
SHIM_API void ollama_py_attention_register(void) {
    static bool registered = false;
    if (!registered) {
        registered = true;
        ggml_backend_register(&the_reg);
    }
}

// Attention nodes this kernel computed in the process so far: shows that contexts actually use it.
SHIM_API uint64_t ollama_py_attention_ops(void) {
    return computed.load(std::memory_order_relaxed);
}
