"""ollama-py's CPU flash attention (native/attention.cpp) on the real default model.

It must be what actually computes attention on a CPU-only machine (flash
attention "auto" included), agree with ggml's kernel up to rounding, and give
a row the same logits alone or in any batch, also past 512 cells, where
ggml's kernel splits a lone row differently.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from ollama_py.llama import attention
from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.model import Model

QUESTION = "Describe a lighthouse keeper's morning, step by step."
ANSWER = (" The keeper wakes before dawn, climbs the hundred steps to the lamp room, trims the wick, polishes"
          " the lens and writes the weather in the log before breakfast.")
# In a process of its own, with the kernel or with ggml's: decodes the prompt, then the answer one token a
# step, saves each step's logits and prints how many attention nodes the kernel computed.
_LOGITS = """
import sys
import numpy as np
from ollama_py.llama import attention
from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.model import Model
path, question, answer, out, kernel = sys.argv[1:6]
if kernel == "1":
    attention.enable()
with Model(path) as model, Context(model, ContextOptions(n_ctx=1024, n_seq_max=2, kv_unified=False)) as ctx:
    prompt = model.vocab.tokenize(question, parse_special=True)
    tokens = model.vocab.tokenize(answer, add_special=False)
    steps = []
    with Batch(512, 1) as batch:
        batch.add_sequence(prompt, 0, 0, last_output=True)
        ctx.decode(batch)
        for i, token in enumerate(tokens):
            batch.clear()
            batch.add(token, len(prompt) + i, (0,), True)
            ctx.decode(batch)
            steps.append(np.ctypeslib.as_array(ctx.logits(0), shape=(model.vocab.n_tokens,)).copy())
    np.save(out, np.array(steps))
print(attention.ops())
"""


def prompt(model: Model) -> list[int]:
    return model.vocab.tokenize(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
                                parse_special=True)


def logits_in_a_process(model_path: Path, out: Path, kernel: bool) -> tuple[np.ndarray, int]:
    question = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    result = subprocess.run([sys.executable, "-c", _LOGITS, str(model_path), question, ANSWER, str(out),
                             "1" if kernel else "0"],
                            capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    return np.load(out), int(result.stdout.strip().splitlines()[-1])


def test_the_kernel_computes_attention_and_agrees_with_ggmls(model: Model, model_path: Path, tmp_path: Path) -> None:
    """Flash attention "auto" (the default) reaches the kernel, and each step's logits are ggml's kernel's
    up to rounding: both round differently (ggml keeps its sums in f16, ours in f32), so a greedy answer
    may part at a near tie, but the next token agrees wherever one is clearly ahead."""
    ours, ops = logits_in_a_process(model_path, tmp_path / "ours.npy", kernel=True)
    ggml, ggml_ops = logits_in_a_process(model_path, tmp_path / "ggml.npy", kernel=False)
    steps = len(ours)
    assert steps > 20 and ours.shape == ggml.shape
    assert ops >= steps * model.n_layer
    assert ggml_ops == 0
    assert float(np.abs(ours - ggml).max()) < 2.0
    top = np.sort(ggml, axis=1)
    clear = top[:, -1] - top[:, -2] >= 0.5  # measured: where they part, the two best are 0.3 or less apart
    assert clear.sum() > steps // 2
    assert (ours.argmax(axis=1) == ggml.argmax(axis=1))[clear].all()


def test_a_row_has_the_same_logits_alone_and_in_any_batch(model: Model) -> None:
    """Each of three sequences (the longest past 512 cells), one or several rows a step, alone or beside the
    others, without ggml's reference kernels."""
    attention.enable()
    before = attention.ops()
    tokens = prompt(model) * 24  # about 600 tokens
    lengths = {1: len(tokens), 2: 200, 3: 37}
    answer = model.vocab.tokenize(" The keeper wakes before dawn and climbs the stairs to the lamp.",
                                  add_special=False)
    with Context(model, ContextOptions(n_ctx=4 * 1024, n_seq_max=4, kv_unified=False, n_batch=512,
                                       n_ubatch=512)) as ctx, Batch(512, 4) as batch:
        for seq, length in lengths.items():
            for at in range(0, length, 512):
                batch.clear()
                batch.add_sequence(tokens[at:min(at + 512, length)], at, seq, last_output=True)
                ctx.decode(batch)

        def rows(seqs: tuple[int, ...], together: int) -> dict[int, list[bytes]]:
            """The logits of each sequence's next tokens (the answer's), decoded in the same steps, the first
            sequence `together` rows a step and the others one."""
            got: dict[int, list[bytes]] = {seq: [] for seq in seqs}
            for step, at in enumerate(range(0, len(answer), together)):
                batch.clear()
                placed = []
                for seq in seqs:
                    chunk = answer[at:at + together] if seq == seqs[0] else answer[step:step + 1]
                    done = len(got[seq]) if seq == seqs[0] else step
                    for i, token in enumerate(chunk):
                        placed.append((seq, batch.add(token, lengths[seq] + done + i, (seq,), True)))
                ctx.decode(batch)
                for seq, row in placed:
                    got[seq].append(bytes(ctx.logits(row)))
            for seq in seqs:
                ctx.seq_rm(seq, lengths[seq])
            return got

        alone = {seq: rows((seq,), 1)[seq] for seq in lengths}
        assert len(alone[1]) == len(answer) > 8
        for together in (1, 5, 7):
            for seqs in ((1, 2, 3), (3, 1), (2, 3, 1)):
                got = rows(seqs, together)
                for seq in seqs:
                    assert got[seq] == alone[seq][:len(got[seq])], (seqs, together, seq)
        assert rows((1,), 5)[1] == alone[1]
    assert attention.ops() > before
