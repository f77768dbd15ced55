// A plain C ABI over llama.cpp's common/ C++ library, so that Python can use
// its chat templates (Jinja), tool-call / reasoning parsers and JSON-schema
// grammars through ctypes.
//
// Every call takes and returns JSON strings. A returned string is owned by the
// caller and freed with ollama_py_string_free. No C++ exception ever crosses
// this boundary: failures come back as {"error": "..."}.

#include "chat.h"
#include "json-schema-to-grammar.h"
#include "json.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llama.h"
#include "llama-context.h"  // llama.cpp's own header (src/), from the pinned source at build time

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#define SHIM_API extern "C" __attribute__((visibility("default")))

namespace {

// Keeps what common_chat_templates_apply produced, because parsing the
// model's output later needs the PEG parser described by that result.
struct apply_result {
    common_chat_params params;
    common_reasoning_format reasoning_format = COMMON_REASONING_FORMAT_NONE;
    // Built on the first parse: loading the PEG parser costs more than most parses.
    std::unique_ptr<common_chat_parser_params> parser;
};

char * dup_string(const std::string & s) {
    char * out = static_cast<char *>(std::malloc(s.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, s.data(), s.size());
        out[s.size()] = '\0';
    }
    return out;
}

char * error_json(const char * what) {
    common_json j = common_json::object();
    j["error"] = std::string(what);
    return dup_string(j.dump_safe());
}

// Runs fn, turning any exception into an error object.
template <typename Fn>
char * guarded(Fn && fn) {
    try {
        return dup_string(fn().dump_safe());
    } catch (const std::exception & e) {
        return error_json(e.what());
    } catch (...) {
        return error_json("unknown C++ exception");
    }
}

common_json trigger_patterns(const common_chat_params & p, common_json & tokens) {
    common_json patterns = common_json::array();
    for (const auto & t : p.grammar_triggers) {
        switch (t.type) {
            case COMMON_GRAMMAR_TRIGGER_TYPE_WORD:
                patterns.push_back(regex_escape(t.value));
                break;
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN:
                patterns.push_back(t.value);
                break;
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: {
                std::string anchored = "^$";
                if (!t.value.empty()) {
                    anchored = (t.value.front() != '^' ? "^" : "") + t.value + (t.value.back() != '$' ? "$" : "");
                }
                patterns.push_back(anchored);
                break;
            }
            case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN:
                tokens.push_back(static_cast<int>(t.token));
                break;
        }
    }
    return patterns;
}

common_json string_array(const std::vector<std::string> & v) {
    common_json out = common_json::array();
    for (const auto & s : v) {
        out.push_back(s);
    }
    return out;
}

common_json message_json(const common_chat_msg & msg) {
    common_json calls = common_json::array();
    for (const auto & c : msg.tool_calls) {
        common_json call = common_json::object();
        call["name"] = c.name;
        call["arguments"] = c.arguments;
        call["id"] = c.id;
        calls.push_back(call);
    }
    common_json j = common_json::object();
    j["role"] = msg.role.empty() ? std::string("assistant") : msg.role;
    j["content"] = msg.content;
    j["reasoning_content"] = msg.reasoning_content;
    j["tool_calls"] = calls;
    return j;
}

}  // namespace

SHIM_API void ollama_py_string_free(char * s) { std::free(s); }

// {"schema": {...}} -> {"grammar": "..."}
SHIM_API char * ollama_py_json_schema_to_grammar(const char * request) {
    return guarded([&] {
        common_json req = common_json::parse(request);
        common_json out = common_json::object();
        out["grammar"] = json_schema_to_grammar(req.at("schema"));
        return out;
    });
}

// Creates the model's chat templates, or the given Jinja override.
// {"template": "..."} -> {"source": "...", "caps": {...}}; *handle receives the templates.
SHIM_API char * ollama_py_chat_templates_init(const llama_model * model, const char * request, void ** handle) {
    *handle = nullptr;
    return guarded([&] {
        common_json req = common_json::parse(request);
        std::string override_src = req.value("template", std::string());
        common_chat_templates_ptr tmpls = common_chat_templates_init(model, override_src);
        common_json caps = common_json::object();
        for (const auto & [name, on] : common_chat_templates_get_caps(tmpls.get())) {
            caps[name] = on;
        }
        common_json out = common_json::object();
        out["source"] = common_chat_templates_source(tmpls.get());
        out["caps"] = caps;
        *handle = tmpls.release();
        return out;
    });
}

SHIM_API void ollama_py_chat_templates_free(void * handle) {
    common_chat_templates_free(static_cast<common_chat_templates *>(handle));
}

// Renders a conversation. The request holds OpenAI-style "messages" and
// "tools", "tool_choice", "json_schema", "grammar", "add_generation_prompt",
// "enable_thinking", "reasoning_format", "parallel_tool_calls" and
// "chat_template_kwargs". *handle receives the apply result used by parse.
SHIM_API char * ollama_py_chat_apply(const void * templates, const char * request, void ** handle) {
    *handle = nullptr;
    return guarded([&] {
        common_json req = common_json::parse(request);
        common_chat_templates_inputs in;
        in.messages = common_chat_msgs_parse_oaicompat(req.at("messages"));
        if (req.contains("tools") && !req.at("tools").is_null()) {
            in.tools = common_chat_tools_parse_oaicompat(req.at("tools"));
        }
        in.tool_choice = common_chat_tool_choice_parse_oaicompat(req.value("tool_choice", std::string("auto")));
        if (req.contains("json_schema") && !req.at("json_schema").is_null()) {
            in.json_schema = req.at("json_schema").dump();
        }
        in.grammar = req.value("grammar", std::string());
        in.add_generation_prompt = req.value("add_generation_prompt", true);
        in.enable_thinking = req.value("enable_thinking", true);
        in.parallel_tool_calls = req.value("parallel_tool_calls", false);
        in.reasoning_format = common_reasoning_format_from_name(req.value("reasoning_format", std::string("none")));
        if (req.contains("chat_template_kwargs")) {
            for (const auto & [key, val] : req.at("chat_template_kwargs").items()) {
                in.chat_template_kwargs[key] = val.dump();
            }
        }

        auto result = std::make_unique<apply_result>();
        result->params = common_chat_templates_apply(static_cast<const common_chat_templates *>(templates), in);
        result->reasoning_format = in.reasoning_format;
        const common_chat_params & p = result->params;

        common_json tokens = common_json::array();
        common_json out = common_json::object();
        out["prompt"] = p.prompt;
        out["format"] = std::string(common_chat_format_name(p.format));
        out["grammar"] = p.grammar;
        out["grammar_lazy"] = p.grammar_lazy;
        out["trigger_patterns"] = trigger_patterns(p, tokens);
        out["trigger_tokens"] = tokens;
        out["preserved_tokens"] = string_array(p.preserved_tokens);
        out["additional_stops"] = string_array(p.additional_stops);
        out["generation_prompt"] = p.generation_prompt;
        out["supports_thinking"] = p.supports_thinking;
        out["thinking_start_tag"] = p.thinking_start_tag;
        out["thinking_end_tag"] = p.thinking_end_tags.empty() ? std::string() : p.thinking_end_tags.front();
        *handle = result.release();
        return out;
    });
}

SHIM_API void ollama_py_chat_result_free(void * handle) { delete static_cast<apply_result *>(handle); }

// Splits generated text into content, reasoning and tool calls, using the
// parser of the apply result. {"text": "...", "partial": false} -> message.
SHIM_API char * ollama_py_chat_parse(void * result_handle, const char * request) {
    return guarded([&] {
        auto * result = static_cast<apply_result *>(result_handle);
        if (!result->parser) {
            auto pp = std::make_unique<common_chat_parser_params>(result->params);
            pp->reasoning_format = result->reasoning_format;
            if (!result->params.parser.empty()) {
                pp->parser.load(result->params.parser);
            }
            result->parser = std::move(pp);
        }
        common_json req = common_json::parse(request);
        result->parser->parse_tool_calls = req.value("parse_tool_calls", true);
        const std::string text = req.at("text").get<std::string>();
        return message_json(common_chat_parse(text, req.value("partial", false), *result->parser));
    });
}

namespace {

// The row of logits as candidates, in token order; one buffer per thread, as only the runner thread samples.
llama_token_data_array candidates(const float * logits, int32_t n_vocab) {
    thread_local std::vector<llama_token_data> cur;
    cur.resize(static_cast<size_t>(n_vocab));
    for (int32_t i = 0; i < n_vocab; i++) {
        cur[i] = llama_token_data{i, logits[i], 0.0f};
    }
    return llama_token_data_array{cur.data(), cur.size(), -1, false};
}

}  // namespace

// Samples batch row `idx` with `chain` and, when `grammar` is not NULL, keeps the
// token only if the grammar allows it; otherwise samples again with the grammar
// applied to every candidate first (common_sampler's rejection sampling: the
// grammar usually agrees, and checking one token costs far less than the whole
// vocabulary). Nothing is accepted: the caller decides whether the token stands.
// Returns -1 when there are no logits or the chain selected nothing.
SHIM_API int32_t ollama_py_sample(llama_sampler * chain, llama_sampler * grammar, llama_context * ctx, int32_t idx) {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) {
        return -1;
    }
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    llama_token_data_array cur = candidates(logits, n_vocab);
    llama_sampler_apply(chain, &cur);
    if (cur.selected < 0) {
        return -1;
    }
    llama_token id = cur.data[cur.selected].id;
    if (grammar != nullptr) {
        llama_token_data one = {id, 1.0f, 0.0f};
        llama_token_data_array single = {&one, 1, -1, false};
        llama_sampler_apply(grammar, &single);
        if (one.logit == -INFINITY) {
            cur = candidates(logits, n_vocab);
            llama_sampler_apply(grammar, &cur);
            llama_sampler_apply(chain, &cur);
            if (cur.selected < 0) {
                return -1;
            }
            id = cur.data[cur.selected].id;
        }
    }
    return id;
}

// Log-probabilities of batch row `idx` under the model's own distribution
// (a log-softmax of the raw logits): the chosen token's into *chosen, and the
// `n_top` most likely tokens, best first, into top_ids / top_logprobs.
// Returns how many top entries were written, or -1 without logits.
SHIM_API int32_t ollama_py_logprobs(llama_context * ctx, int32_t idx, llama_token token, int32_t n_top,
                                    float * chosen, llama_token * top_ids, float * top_logprobs) {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) {
        return -1;
    }
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    const float peak = *std::max_element(logits, logits + n_vocab);
    double total = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        total += std::exp(static_cast<double>(logits[i]) - peak);
    }
    const double log_total = peak + std::log(total);
    *chosen = (token >= 0 && token < n_vocab) ? static_cast<float>(logits[token] - log_total) : -INFINITY;
    const int32_t n = std::clamp(n_top, 0, n_vocab);
    if (n == 0) {
        return 0;
    }
    thread_local std::vector<llama_token> order;
    order.resize(static_cast<size_t>(n_vocab));
    for (int32_t i = 0; i < n_vocab; i++) {
        order[i] = i;
    }
    std::partial_sort(order.begin(), order.begin() + n, order.end(), [logits](llama_token a, llama_token b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int32_t i = 0; i < n; i++) {
        top_ids[i] = order[i];
        top_logprobs[i] = static_cast<float>(logits[order[i]] - log_total);
    }
    return n;
}

// Turns ggml's reference CPU kernels on or off for the context's CPU backends:
// they compute a micro-batch's lone row with the same row-by-row attention as
// several rows, where the fast kernels split its KV cells across threads
// (llama/context.py, Context.reference_kernels, says when that matters).
SHIM_API void ollama_py_cpu_reference(llama_context * ctx, bool on) {
    ggml_backend_sched_t sched = ctx->get_sched();
    for (int i = 0; i < ggml_backend_sched_get_n_backends(sched); i++) {
        ggml_backend_t backend = ggml_backend_sched_get_backend(sched, i);
        if (ggml_backend_is_cpu(backend)) {
            ggml_backend_cpu_set_use_ref(backend, on);
        }
    }
}
