"""Whether a draft model's tokens mean what its target's do, by llama.cpp's rule for speculative decoding.

A drafted token is verified by its id: the target takes id 1234 to be the
text the draft meant by 1234 only where the two vocabularies agree. The rule
is llama.cpp's `common_speculative_are_compatible` (common/speculative.cpp):
the same kind of tokenizer, the same BOS and EOS handling, sizes within 128
tokens, and the same text for every id from 5 on (the first few ids are
control tokens models name differently). The store applies it to the GGUF
metadata when a Modelfile names a DRAFT; the runner applies it again to the
vocabularies llama.cpp loaded, where every default is resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ollama_py.store import gguf

MAX_SIZE_DIFFERENCE = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
FIRST_CHECKED_TOKEN = 5  # llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID

# tokenizer.ggml.model as llama.cpp reads it (llama-vocab.cpp) -> enum llama_vocab_type.
VOCAB_TYPES = {"no_vocab": 0, "none": 0, "llama": 1, "gpt2": 2, "hybriddna": 2, "whitespace": 2, "gemma4": 2,
               "bert": 3, "t5": 4, "rwkv": 5, "plamo2": 6, "test": 7}
_TYPE_NAMES = {0: "none", 1: "SentencePiece", 2: "BPE", 3: "WordPiece", 4: "Unigram", 5: "RWKV", 6: "PLaMo-2",
               7: "test"}


@dataclass(frozen=True)
class VocabFacts:
    """What the rule compares; None where a GGUF leaves a value to llama.cpp's defaults, which the runner's
    check sees resolved."""

    type: int | None
    add_bos: bool | None
    bos: int | None
    add_eos: bool | None
    eos: int | None
    texts: Sequence[str]


def facts_of_gguf(info: gguf.GGUFFile) -> VocabFacts:
    """The facts of a GGUF read with its token list kept (`gguf.read(path, keep_array=...)`)."""
    meta = info.metadata
    tokens = meta.get("tokenizer.ggml.tokens")

    def flag(key: str) -> bool | None:
        value = meta.get(key)
        return value if isinstance(value, bool) else None

    def token(key: str) -> int | None:
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    model = meta.get("tokenizer.ggml.model")
    return VocabFacts(type=VOCAB_TYPES.get(model) if isinstance(model, str) else None,
                      add_bos=flag("tokenizer.ggml.add_bos_token"), bos=token("tokenizer.ggml.bos_token_id"),
                      add_eos=flag("tokenizer.ggml.add_eos_token"), eos=token("tokenizer.ggml.eos_token_id"),
                      texts=tokens if isinstance(tokens, list) else [])


def read_facts(path: Path) -> VocabFacts:
    """A GGUF file's facts; its token list is read whole (GGUFError for a file that is not one)."""
    return facts_of_gguf(gguf.read(path, keep_array=1 << 24))


def _differ(a: object, b: object) -> bool:
    return a is not None and b is not None and a != b


def mismatch(target: VocabFacts, draft: VocabFacts) -> str | None:
    """Why the draft's tokens cannot be verified by the target's, or None when they can."""
    if _differ(target.type, draft.type):
        return (f"the vocabularies differ: the model's tokenizer is {_TYPE_NAMES.get(target.type or 0)}, "
                f"the draft's {_TYPE_NAMES.get(draft.type or 0)}")
    for what, adds, token, draft_adds, draft_token in (
            ("BOS", target.add_bos, target.bos, draft.add_bos, draft.bos),
            ("EOS", target.add_eos, target.eos, draft.add_eos, draft.eos)):
        if _differ(adds, draft_adds):
            return (f"the vocabularies differ: the model {'adds' if adds else 'does not add'} {what} to a prompt, "
                    f"the draft {'does' if draft_adds else 'does not'}")
        if adds and _differ(token, draft_token):
            return f"the vocabularies differ: the model's {what} token is {token}, the draft's {draft_token}"
    if not target.texts or not draft.texts:
        return "the vocabularies cannot be compared: a model has no token list"
    if abs(len(target.texts) - len(draft.texts)) > MAX_SIZE_DIFFERENCE:
        return (f"the vocabularies differ: the model has {len(target.texts)} tokens, the draft "
                f"{len(draft.texts)} (at most {MAX_SIZE_DIFFERENCE} apart)")
    for i in range(FIRST_CHECKED_TOKEN, min(len(target.texts), len(draft.texts))):
        if target.texts[i] != draft.texts[i]:
            return (f"the vocabularies differ: token {i} is {target.texts[i][:40]!r} in the model, "
                    f"{draft.texts[i][:40]!r} in the draft")
    return None
