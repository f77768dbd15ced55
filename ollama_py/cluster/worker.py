"""`ollama-py worker`: this machine's devices, offered to a server through llama.cpp's `ggml-rpc-server`.

The worker is llama.cpp's own RPC server, unchanged: this module only checks
the options, says plainly what is being exposed, and then becomes that
process (exec), so signals, exit codes and service managers see the server
itself.
"""

from __future__ import annotations

import ipaddress
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from ollama_py.llama.devices import Device, devices
from ollama_py.llama.lib import LIB_DIR

BINARY = LIB_DIR / "ggml-rpc-server"
DEFAULT_PORT = 50052  # ggml-rpc-server's own default

# As llama.cpp's tools/rpc/README.md and SECURITY.md warn: the protocol trusts whoever connects.
WARNING = """\
WARNING: llama.cpp's RPC protocol has no authentication and no encryption.
Anyone who can connect to {endpoint} can use this machine's devices and read
or overwrite their memory. Run workers only on a trusted private network (or
through an SSH or WireGuard tunnel); never expose them to an open network."""


class WorkerError(ValueError):
    """The worker's options cannot work on this machine."""


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    host: str = "127.0.0.1"  # loopback unless told otherwise: see WARNING
    port: int = DEFAULT_PORT
    devices: tuple[str, ...] = ()  # e.g. ("CUDA0",); empty: ggml-rpc-server's choice (every accelerator, else CPU)
    threads: int = 0  # CPU threads; 0: every core (a worker's CPU is there to be used)
    cache: bool = False  # keep received tensors on disk, so a restarted server re-sends less

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check(options: WorkerOptions, available: list[Device]) -> None:
    """Raises WorkerError naming what is wrong, before the binary would fail with less to say."""
    try:
        ipaddress.ip_address(options.host)
    except ValueError:
        raise WorkerError(f"--host {options.host!r}: give an IP address of this machine "
                          "(ggml-rpc-server does not resolve names)") from None
    names = {d.name for d in available if d.kind != "meta" and not d.name.startswith("RPC")}
    unknown = [d for d in options.devices if d not in names]
    if unknown:
        raise WorkerError(f"--device {','.join(unknown)}: no such device here; this machine has "
                          f"{', '.join(sorted(names)) or 'none'}")


def command(options: WorkerOptions) -> list[str]:
    """The ggml-rpc-server command line for these options."""
    threads = options.threads or os.cpu_count() or 1
    argv = [str(BINARY), "-H", options.host, "-p", str(options.port), "-t", str(threads)]
    if options.devices:
        argv += ["-d", ",".join(options.devices)]
    if options.cache:
        argv.append("-c")
    return argv


def run(options: WorkerOptions, echo: Callable[[str], None]) -> NoReturn:
    """Warns, then replaces this process with ggml-rpc-server; returns only by raising."""
    available = devices()
    check(options, available)
    if not BINARY.exists():
        raise WorkerError(f"{BINARY} is missing: reinstall ollama-py (pip install -e .) to build it")
    echo(WARNING.format(endpoint=options.endpoint))
    served = options.devices or tuple(d.name for d in available if d.kind in ("gpu", "igpu")) or ("CPU",)
    echo(f"worker on {options.endpoint}, serving {', '.join(served)}; add it to a server with "
         f"OLLAMA_RPC_SERVERS={options.endpoint}")
    argv = command(options)
    # ggml-rpc-server writes to clients without MSG_NOSIGNAL: a client gone before its answer (a server that
    # crashed, a handshake that timed out) would kill it with SIGPIPE. Ignored signals stay ignored across exec.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.execv(argv[0], argv)
