"""What the cluster and deployment tests (and bench/cluster_bench.py) start: workers, servers, nginx, a LAN.

The LAN gives each member its own network and address. A bridge in a
namespace of its own joins the members and this machine (the test process's
namespace), like a switch between separate computers. The
members' traffic is bridged inside that namespace, so this machine's firewall
(a Docker host's FORWARD policy, br_netfilter) never touches it; this machine
reaches a member on its own address. Needs root (CAP_NET_ADMIN and
CAP_SYS_ADMIN) and iproute2; tests skip, saying so, where the kernel refuses.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ollama_py.cluster.probe import WorkerUnavailable
from tests.server_harness import GUARD, Environment

# The commands as a user runs them (`ollama-py ...`), from this interpreter.
CLI = [sys.executable, "-m", "ollama_py.cli.main"]
WORKER = [*CLI, "worker"]
SERVE = [*CLI, "serve"]

NGINX_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "ollama-py.conf"
# SmolLM2 answers this, greedily, for hundreds of tokens: long enough to act while it streams.
STORY = [{"role": "user", "content": "Write a long story about a dragon, at least 500 words."}]
# The timeout of one look at a starting worker or server (`hello`, GET /health): a look that times out is
# taken again, until wait_until's guard; short enough to retry, long enough for a busy machine to answer.
PROBE = 10.0


def worker_argv(host: str, port: int) -> list[str]:
    """A worker serving its CPU on one thread: arithmetic as on the server's CPU, and light on a shared machine."""
    return [*WORKER, "--host", host, "--port", str(port), "--device", "CPU", "--threads", "1"]


def server_env(address: str, store: Path, cache: Path, **variables: str) -> Environment:
    """The environment of a `serve` on `address` over this store; `variables` add settings (OLLAMA_...)."""
    return Environment({**os.environ, "OLLAMA_HOST": address, "OLLAMA_MODELS": str(store),
                        "OLLAMA_PY_CACHE": str(cache), "OLLAMA_NOPRUNE": "1", **variables})


def nginx_config(directory: Path, replicas: Sequence[str], port: int) -> Path:
    """The shipped deploy/nginx/ollama-py.conf with only its replicas, listen address and log path changed,
    inside a main configuration that keeps every file in `directory`; returns that main file."""
    text = NGINX_CONF.read_text()
    servers = re.findall(r"^    server 10\.0\.0\.\d+:11434 .*\n", text, re.M)
    assert len(servers) == 3
    text = text.replace("".join(servers), "".join(f"    server {r} max_fails=1 fail_timeout=10s;\n" for r in replicas))
    for old, new in (("listen 11434;", f"listen 127.0.0.1:{port};"),
                     ("/var/log/nginx/ollama-py.access.log", str(directory / "access.log"))):
        assert text.count(old) == 1
        text = text.replace(old, new)
    (directory / "ollama-py.conf").write_text(text)
    main = directory / "nginx.conf"
    main.write_text(f"pid {directory}/nginx.pid;\nerror_log {directory}/error.log;\ndaemon off;\n"
                    f"events {{ worker_connections 1024; }}\nhttp {{ include {directory}/ollama-py.conf; }}\n")
    return main


def nginx_binary() -> str:
    """Debian's nginx (apt-get install nginx); the tests skip without it."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.skip("nginx is not installed: apt-get install nginx")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], object], what: str, proc: subprocess.Popen[bytes], guard: float = GUARD) -> None:
    """Polls `check()` until it stops raising; fails at once, with its output, if the process exits, and
    after `guard` seconds if it never answers."""
    deadline = time.monotonic() + guard
    while True:
        try:
            check()
            return
        except (OSError, WorkerUnavailable, httpx.HTTPError):
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else b""
                pytest.fail(f"{what} exited with {proc.returncode}:\n{out.decode(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not come up in {guard:g}s")
            time.sleep(0.1)


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (a server finishes its requests and unloads), then SIGKILL for what does not exit."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Lan:
    """Members named by the caller, at 198.18.N.2, .3, ...; this machine at 198.18.N.1 (RFC 2544 test range)."""

    def __init__(self, members: Sequence[str]) -> None:
        tag = os.getpid() % 100000
        self.prefix = f"opy{tag}"
        self.subnet = f"198.18.{tag % 250}"
        self.host_address = f"{self.subnet}.1"
        self._switch = f"{self.prefix}-lan"
        self._members = {name: index for index, name in enumerate(members)}
        self._made: list[str] = []

    def namespace(self, member: str) -> str:
        return f"{self.prefix}-{member}"

    def address(self, member: str) -> str:
        return f"{self.subnet}.{self._members[member] + 2}"

    def run(self, member: str, argv: Sequence[str], **popen: object) -> subprocess.Popen[bytes]:
        """Starts argv inside the member's namespace; `ip netns exec` execs it, so the pid is argv's own."""
        return subprocess.Popen(["ip", "netns", "exec", self.namespace(member), *argv], **popen)  # type: ignore[call-overload]

    def build(self) -> None:
        self._netns("add", self._switch)
        self._ip("-n", self._switch, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self._switch, "link", "set", "br0", "up")
        host_end, switch_end = f"{self.prefix}h", f"{self.prefix}hs"
        self._ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
        self._plug(switch_end)
        self._ip("addr", "add", f"{self.host_address}/24", "dev", host_end)
        self._ip("link", "set", host_end, "up")
        for member, index in self._members.items():
            ns = self.namespace(member)
            self._netns("add", ns)
            inner, outer = f"{self.prefix}m{index}", f"{self.prefix}s{index}"
            self._ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            self._plug(outer)
            self._ip("link", "set", inner, "netns", ns)
            self._ip("-n", ns, "link", "set", inner, "name", "eth0")
            self._ip("-n", ns, "addr", "add", f"{self.address(member)}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        """Deleting a namespace deletes its veth ends, and with them their peers."""
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def _plug(self, port: str) -> None:
        self._ip("link", "set", port, "netns", self._switch)
        self._ip("-n", self._switch, "link", "set", port, "master", "br0")
        self._ip("-n", self._switch, "link", "set", port, "up")

    def _netns(self, verb: str, ns: str) -> None:
        self._ip("netns", verb, ns)
        self._made.append(ns)

    @staticmethod
    def _ip(*args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@contextmanager
def lan(members: Sequence[str]) -> Iterator[Lan]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed: apt-get install iproute2")
    net = Lan(members)
    try:
        try:
            net.build()
        except OSError as exc:
            if "Operation not permitted" in str(exc) or "Permission denied" in str(exc):
                pytest.skip(f"this kernel or container forbids network namespaces here: {exc}")
            raise
        yield net
    finally:
        net.close()
