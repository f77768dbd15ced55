"""The `ollama-py` command: Ollama's CLI, talking to the server over HTTP.

Every command but `serve` is a client of the server at OLLAMA_HOST. When
nothing answers there and the address is on this machine, the command starts
`ollama-py serve` in the background and goes on (as Ollama's desktop app
does), so the first `ollama-py run` on a fresh machine just works. `ps` and
`stop` do not: with no server, nothing is loaded to list or stop.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ollama_py import __version__, settings
from ollama_py.api.native import (CopyRequest, GenerateRequest, GenerateResponse, HealthResponse, ListResponse,
                                  ModelRequest, ProcessResponse, VersionResponse)
from ollama_py.api.options import Think
from ollama_py.cli import answer as answers
from ollama_py.cli import format as fmt
from ollama_py.cli import models
from ollama_py.cli.client import UNREACHABLE, BaseURL, Client, ClientError, ConnectError, ResponseError, start_server
from ollama_py.cluster.cli import worker
from ollama_py.store import modelfile as modelfiles

log = logging.getLogger(__name__)


def _env_help(*names: str) -> str:
    """The 'Environment Variables' block Ollama appends to each command's help."""
    described = settings.describe()
    width = max(len(name) for name in names) + 3
    lines = [f"  {name:<{width}}{described[name]}" for name in names]
    return "\b\nEnvironment Variables:\n" + "\n".join(lines)


SERVER_VARIABLES = [v for v in settings.variables() if v.field not in settings.CLIENT_ONLY]


class Session:
    """What the commands share: the settings, read once, and the client made from them."""

    def __init__(self, config: settings.Settings) -> None:
        self.settings = config
        self.client = Client(BaseURL.parse(config.host), config.api_key)

    def connect(self, *, start: bool = True) -> Client:
        """The client, once a server answers; starts one in the background when allowed."""
        if not self.client.heartbeat():
            if not start:
                raise ConnectError(f"{UNREACHABLE}\nStart it with `ollama-py serve` (or let `ollama-py run` "
                                   "start it in the background).")
            start_server(self.settings, self.client, lambda text: click.echo(text, err=True))
        return self.client


pass_session = click.make_pass_decorator(Session)


class _Group(click.Group):
    """Commands in the order Ollama lists them, `ls` as a hidden alias of `list`; client failures
    become `Error: ...` and Ctrl-C a quiet exit."""

    ALIASES = {"ls": "list", "start": "serve"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.ALIASES.get(cmd_name, cmd_name))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
        except settings.SettingsError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo(err=True)
            ctx.exit(130)


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """Prints the server's version and, when it differs, the client's (ollama --version)."""
    if not value or ctx.resilient_parsing:
        return
    try:
        config = settings.load()
        client = Client(BaseURL.parse(config.host), config.api_key)
    except (settings.SettingsError, ClientError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        server = client.call("GET", "/health", type=HealthResponse).version
    except ResponseError:  # not ollama-py: an Ollama server has no /health
        server = "ollama " + client.call("GET", "/api/version", type=VersionResponse).version
    except ConnectError:
        click.echo("Warning: could not connect to a running ollama-py server")
        click.echo(f"Warning: client version is {__version__}")
        ctx.exit()
    # /health carries ollama-py's own version; /api/version the Ollama API level it speaks.
    if server == __version__:
        click.echo(f"ollama-py version is {server}")
    else:
        click.echo(f"ollama-py server version is {server}")
        click.echo(f"Warning: client version is {__version__}")
    ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("-v", "--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show version information.")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Large language model runner (Ollama-compatible)."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit()
    config = settings.load()
    logging.basicConfig(level=logging.DEBUG if config.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Session(config)


# --- serve ----------------------------------------------------------------------------------------------


def _setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """A flag for each server setting, named after its variable (OLLAMA_NUM_PARALLEL: --num-parallel)."""
    for var in reversed(SERVER_VARIABLES):
        flag = "--" + var.env.removeprefix("OLLAMA_").removeprefix("PY_").lower().replace("_", "-")
        if var.type is bool:
            option = click.option(flag, var.env, is_flag=True, default=None, help=f"{var.description} [{var.env}]")
        else:
            option = click.option(flag, var.env, metavar="VALUE", help=f"{var.description} [{var.env}]")
        command = option(command)
    return command


@main.command()
@_setting_options
def serve(**flags: str | bool | None) -> None:
    """Start the server.

    Each flag overrides the environment variable named in brackets.
    """
    overrides = {env: "true" if value is True else str(value) for env, value in flags.items() if value is not None}
    config = settings.load(overrides=overrides)
    from ollama_py.server.app import serve as run_server  # the server's imports only for `serve`

    run_server(config)


# --- the client commands, in the order `ollama --help` lists them ------------------------------------


@main.command(epilog=_env_help("OLLAMA_HOST"))
@click.argument("model")
@click.option("-f", "--file", "path", default="Modelfile", show_default=True, type=click.Path(dir_okay=False),
              help="Name of the Modelfile.")
@click.option("-q", "--quantize", default="", metavar="TYPE",
              help="Quantize model to this level (e.g. q4_K_M, q4_K_S, q8_0).")
@pass_session
def create(session: Session, model: str, path: str, quantize: str) -> None:
    """Create a model from a Modelfile."""
    modelfile_path = Path(path).absolute()
    try:
        parsed = modelfiles.parse(modelfile_path.read_bytes())
    except OSError as exc:
        raise ClientError(f"{path}: {exc.strerror}") from None
    except modelfiles.ModelfileError as exc:
        raise ClientError(f"{path}: {exc}") from None
    models.create(session.connect(), model, parsed, modelfile_path.parent, quantize=quantize)


@main.command(epilog=_env_help("OLLAMA_HOST"))
@click.argument("model")
@click.option("--license", "fields", flag_value="license", multiple=True, help="Show license of a model.")
@click.option("--modelfile", "fields", flag_value="modelfile", multiple=True, help="Show Modelfile of a model.")
@click.option("--parameters", "fields", flag_value="parameters", multiple=True, help="Show parameters of a model.")
@click.option("--template", "fields", flag_value="template", multiple=True, help="Show template of a model.")
@click.option("--system", "fields", flag_value="system", multiple=True, help="Show system message of a model.")
@pass_session
def show(session: Session, model: str, fields: tuple[str, ...]) -> None:
    """Show information for a model."""
    if len(fields) > 1:
        raise ClientError("only one of '--license', '--modelfile', '--parameters', '--system', or '--template' "
                          "can be specified")
    info = models.show(session.connect(), model)
    if fields:
        # As Ollama: system and template are printed as they are, without an added newline.
        click.echo(getattr(info, fields[0]), nl=fields[0] not in {"system", "template"})
    else:
        click.echo(fmt.model_info(info))


class _RunCommand(click.Command):
    """`--think` takes a level only as `--think=LEVEL`, as Ollama's flag does: `run m --think hi` is
    thinking on and the prompt "hi", not the level "hi"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        args = ["--think=true" if arg == "--think" else arg for arg in args[:end]] + args[end:]
        return super().parse_args(ctx, args)


def _think(value: str | None) -> Think | None:
    """--think: bare or 'true' is on, 'false' off, or a level."""
    if value is None:
        return None
    try:
        return answers.think_value(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--think") from None


@main.command(cls=_RunCommand, epilog=_env_help("OLLAMA_HOST", "OLLAMA_NOHISTORY"))
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--keepalive", help="Duration to keep a model loaded (e.g. 5m).")
@click.option("--verbose", is_flag=True, help="Show timings for response.")
@click.option("--format", "format_", type=click.Choice(["json"]), help="Response format (e.g. json).")
@click.option("--think", metavar="[=true|false|high|medium|low]",
              help="Enable thinking mode: --think, or --think=false, or a level for supported models.")
@click.option("--hidethinking", is_flag=True, help="Hide thinking output (if provided).")
@click.option("--nowordwrap", is_flag=True, help="Don't wrap words to the next line automatically.")
@pass_session
def run(session: Session, model: str, prompt: tuple[str, ...], keepalive: str | None, verbose: bool,
        format_: str | None, think: str | None, hidethinking: bool, nowordwrap: bool) -> None:
    """Run a model: answer PROMPT (or standard input), or chat when neither is given."""
    from ollama_py.cli.repl import Options, Repl  # readline is only needed for the chat

    interactive = not prompt and sys.stdin.isatty()
    parts = list(prompt)
    piped = "" if sys.stdin.isatty() else sys.stdin.read()
    if piped:
        parts.insert(0, piped)  # as Ollama: piped text first, then the arguments
    options = Options(model=model, format=format_, keep_alive=keepalive, think=_think(think),
                      verbose=verbose, hide_thinking=hidethinking, wordwrap=not nowordwrap)
    client = session.connect()
    info = models.show_or_pull(client, model)
    if interactive:
        Repl(client, options, info, nohistory=session.settings.nohistory).loop()
        return
    request = GenerateRequest(model=model, prompt=" ".join(parts), format=options.format,
                              keep_alive=options.keep_alive, think=options.think)
    said = answers.show(client.stream("/api/generate", request, type=GenerateResponse), answers.generate_parts,
                        hide_thinking=hidethinking, wrap=not nowordwrap)
    if said.content or said.thinking:
        click.echo()
    if verbose and said.metrics is not None:
        click.echo(fmt.summary(said.metrics), err=True)


@main.command(epilog=_env_help("OLLAMA_HOST"))
@click.argument("model")
@pass_session
def stop(session: Session, model: str) -> None:
    """Stop a running model."""
    client = session.connect(start=False)
    try:
        for _ in client.stream("/api/generate", GenerateRequest(model=model, keep_alive=0), type=GenerateResponse):
            pass
    except ResponseError as exc:
        if exc.status == 404:
            raise ClientError(f'couldn\'t find model "{model}" to stop') from None
        raise


@main.command(epilog=_env_help("OLLAMA_HOST"))
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Use an insecure registry.")
@pass_session
def pull(session: Session, model: str, insecure: bool) -> None:
    """Pull a model from a registry."""
    models.transfer(session.connect(), "pull", model, insecure=insecure)


@main.command(epilog=_env_help("OLLAMA_HOST"))
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Use an insecure registry.")
@pass_session
def push(session: Session, model: str, insecure: bool) -> None:
    """Push a model to a registry."""
    models.transfer(session.connect(), "push", model, insecure=insecure)


@main.command("list", epilog=_env_help("OLLAMA_HOST"))
@click.argument("prefix", required=False)
@pass_session
def list_(session: Session, prefix: str | None) -> None:
    """List models."""
    click.echo(fmt.models_table(session.connect().call("GET", "/api/tags", type=ListResponse).models, prefix))


@main.command(epilog=_env_help("OLLAMA_HOST"))
@click.argument("prefix", required=False)
@pass_session
def ps(session: Session, prefix: str | None) -> None:
    """List running models."""
    running = session.connect(start=False).call("GET", "/api/ps", type=ProcessResponse).models
    click.echo(fmt.running_table(running, prefix))


@main.command(epilog=_env_help("OLLAMA_HOST"))
@click.argument("source")
@click.argument("destination")
@pass_session
def cp(session: Session, source: str, destination: str) -> None:
    """Copy a model."""
    session.connect().call("POST", "/api/copy", CopyRequest(source=source, destination=destination))
    click.echo(f"copied '{source}' to '{destination}'")


@main.command(epilog=_env_help("OLLAMA_HOST"))
@click.argument("names", nargs=-1, required=True, metavar="MODEL...")
@pass_session
def rm(session: Session, names: tuple[str, ...]) -> None:
    """Remove a model."""
    client = session.connect()
    for name in names:
        client.call("DELETE", "/api/delete", ModelRequest(model=name))
        click.echo(f"deleted '{name}'")


main.add_command(worker)  # ollama-py's own: offer this machine's devices to a server's cluster


if __name__ == "__main__":
    main()
