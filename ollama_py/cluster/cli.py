"""The `ollama-py worker` command; `cli.main` registers it beside Ollama's commands."""

from __future__ import annotations

import click

from ollama_py.cluster.worker import DEFAULT_PORT, WorkerError, WorkerOptions, run


@click.command()
@click.option("-H", "--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Only a trusted private network: the protocol has no authentication.")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on.")
@click.option("-d", "--device", "device", default="", metavar="DEV[,DEV...]",
              help="Devices to offer (e.g. CUDA0 or CPU); default: every accelerator, else the CPU.")
@click.option("-t", "--threads", type=click.IntRange(0), default=0, help="CPU threads; default: every core.")
@click.option("-c", "--cache", is_flag=True, help="Cache received tensors on disk (in $LLAMA_CACHE).")
def worker(host: str, port: int, device: str, threads: int, cache: bool) -> None:
    """Offer this machine's devices to a server as an RPC worker.

    A server with OLLAMA_RPC_SERVERS=HOST:PORT,... splits each model across
    its workers (and its own GPUs) by their free memory. A worker serves one
    server at a time.
    """
    options = WorkerOptions(host=host, port=port, threads=threads, cache=cache,
                            devices=tuple(d.strip() for d in device.split(",") if d.strip()))
    try:
        run(options, lambda text: click.echo(text, err=True))
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from None
