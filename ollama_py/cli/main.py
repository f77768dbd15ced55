"""The `ollama-py` command.

For now `run` generates once, in process, through the binding; the server and
the commands that talk to it come with the HTTP API.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ollama_py import __version__, settings
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.lib import LlamaError
from ollama_py.llama.model import Model
from ollama_py.llama.oneshot import generate_text
from ollama_py.llama.sampler import SamplerChain, SamplerConfig
from ollama_py.llama.shim import ChatTemplates
from ollama_py.store import default_model

log = logging.getLogger(__name__)


def _resolve(name: str, config: settings.Settings) -> Path:
    if name in {default_model.SMOLLM2_135M.name, "smollm2"}:
        return default_model.ensure(config.cache, progress=_progress)
    path = Path(name)
    if path.suffix == ".gguf" and path.exists():
        return path
    raise click.ClickException(f"model '{name}' not found")


def _progress(status: str, completed: int, total: int) -> None:
    if total:
        click.echo(f"\r{status} {completed * 100 // total:3d}%", nl=completed >= total, err=True)
    else:
        click.echo(status, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ollama-py")
@click.option("--verbose", is_flag=True, help="Show llama.cpp's log.")
def main(verbose: bool) -> None:
    """Run large language models locally, the Ollama way."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--num-predict", default=256, show_default=True, help="Most tokens to generate.")
@click.option("--temperature", default=0.8, show_default=True)
@click.option("--seed", default=-1, show_default=True, help="Sampling seed; -1 picks one at random.")
@click.option("--num-ctx", default=None, type=int, help="Context length (default OLLAMA_CONTEXT_LENGTH or 4096).")
def run(model: str, prompt: tuple[str, ...], num_predict: int, temperature: float, seed: int,
        num_ctx: int | None) -> None:
    """Answer PROMPT (or standard input) with MODEL."""
    config = settings.load()
    text = " ".join(prompt) if prompt else sys.stdin.read()
    if not text.strip():
        raise click.UsageError("give a prompt as arguments or on standard input")
    path = _resolve(model, config)
    try:
        with Model(path) as loaded:
            n_ctx = min(num_ctx or config.context_length, loaded.n_ctx_train)
            with Context(loaded, ContextOptions(n_ctx=n_ctx)) as ctx, ChatTemplates(loaded) as templates:
                applied = templates.apply([{"role": "user", "content": text}])
                tokens = loaded.vocab.tokenize(applied.prompt, add_special=False, parse_special=True)
                budget = min(num_predict, ctx.n_ctx_seq - len(tokens))
                if budget <= 0:
                    raise click.ClickException(f"the prompt ({len(tokens)} tokens) does not fit num_ctx {n_ctx}")
                sampler_config = SamplerConfig(temperature=temperature, top_k=40, top_p=0.9,
                                               repeat_last_n=64, repeat_penalty=1.1, seed=seed)
                with SamplerChain(loaded.vocab, sampler_config) as sampler:
                    for chunk in generate_text(ctx, sampler, tokens, budget):
                        click.echo(chunk, nl=False)
                click.echo()
    except LlamaError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
