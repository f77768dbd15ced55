"""The `ollama-py` commands against a real server: a subprocess on a free port with its own store.

Each command runs as a user runs it, in its own process, and the tests look
at what it prints and its exit status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ollama_py import settings
from ollama_py.cli import format as fmt
from ollama_py.cli.client import BaseURL, Client
from tests import fixtures_models
from tests.server_harness import GUARD, Environment
from tests.test_registry_harness import running_registry

CLI = [sys.executable, "-m", "ollama_py.cli.main"]
# A generous guard for a loaded 2-core machine; a test fails if the server never answers, it never times speed.
START_GUARD = GUARD
# A relative time as the CLI words it: `ls` MODIFIED, `ps` UNTIL.
AGE = r"(Less than a second|1 second|\d+ seconds|About a minute|\d+ minutes|About an hour|\d+ hours)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(tmp: Path, port: int) -> Environment:
    """The environment of a user whose server is at `port` and whose store is under `tmp`."""
    env = Environment({k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")})
    env.update(OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(tmp / "models"),
               OLLAMA_PY_CACHE=str(settings.load().cache), OLLAMA_NOHISTORY="1", OLLAMA_NUM_PARALLEL="1",
               OLLAMA_CONTEXT_LENGTH="2048")
    return env


def cli(env: dict[str, str], *args: str, stdin: str | None = None, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs one `ollama-py` command to the end."""
    result = subprocess.run([*CLI, *args], env=env, input=stdin if stdin is not None else "",
                            capture_output=True, text=True, cwd=cwd, timeout=START_GUARD)
    if check and result.returncode != 0:
        raise AssertionError(f"ollama-py {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


@dataclass
class Server:
    env: dict[str, str] = field(repr=False)  # the test process's own, CI tokens and all: kept out of failure output
    process: subprocess.Popen[bytes]
    log: Path


def wait_until_up(env: dict[str, str], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_GUARD
    client = Client(BaseURL.parse(env["OLLAMA_HOST"]))
    while not client.heartbeat():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def start_server(tmp: Path, *flags: str, **variables: str) -> Iterator[Server]:
    """`ollama-py serve` in a subprocess, up and answering, stopped afterwards."""
    env = cli_env(tmp, free_port())
    log = tmp / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*CLI, "serve", *flags], env={**env, **variables}, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until_up(env, process, log)
        yield Server(env, process, log)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose context length comes from a `serve` flag, over the environment's 2048."""
    with start_server(tmp_path_factory.mktemp("cli"), "--context-length", "1024") as started:
        yield started


MODELFILE = '''\
# A model of our own on top of the default model's weights.
FROM {path}
SYSTEM """You are Captain Haddock.
You answer in one short sentence."""
TEMPLATE """{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}
{{{{ .Content }}}}<|im_end|>
{{{{ end }}}}<|im_start|>assistant
"""
PARAMETER temperature 0
PARAMETER num_predict 12
MESSAGE user Who are you?
MESSAGE assistant I am Captain Haddock, blistering barnacles!
'''


@pytest.fixture(scope="module")
def captain(server: Server, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model created with `ollama-py create` from a Modelfile with every instruction that matters."""
    folder = tmp_path_factory.mktemp("modelfile")
    (folder / "Modelfile").write_text(MODELFILE.format(path=model_path))
    result = cli(server.env, "create", "captain", cwd=folder)
    assert "success" in result.stderr
    return "captain"


def test_create_then_show_prints_the_modelfile_back(server: Server, captain: str) -> None:
    modelfile = cli(server.env, "show", captain, "--modelfile").stdout
    assert 'SYSTEM """You are Captain Haddock.\nYou answer in one short sentence."""' in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile
    assert "PARAMETER temperature 0" in modelfile
    assert "PARAMETER num_predict 12" in modelfile
    assert "MESSAGE user Who are you?" in modelfile
    assert "MESSAGE assistant I am Captain Haddock, blistering barnacles!" in modelfile

    assert cli(server.env, "show", captain, "--system").stdout == ("You are Captain Haddock.\n"
                                                                    "You answer in one short sentence.")
    assert re.search(r"temperature\s+0", cli(server.env, "show", captain, "--parameters").stdout)
    info = cli(server.env, "show", captain).stdout
    assert re.search(r"architecture\s+llama", info)
    assert re.search(r"quantization\s+Q4_1", info)
    assert "You are Captain Haddock." in info
    both = cli(server.env, "show", captain, "--system", "--license", check=False)
    assert both.returncode == 1 and "only one of" in both.stderr


def test_create_from_a_safetensors_folder_uploads_its_files(server: Server, tmp_path: Path) -> None:
    (tmp_path / "all-MiniLM-L6-v2").symlink_to(fixtures_models.minilm_folder(settings.load().cache))
    (tmp_path / "Modelfile").write_text("FROM ./all-MiniLM-L6-v2\n")
    result = cli(server.env, "create", "minilm", cwd=tmp_path)
    assert "converting model" in result.stderr and "success" in result.stderr
    info = cli(server.env, "show", "minilm").stdout
    assert re.search(r"architecture\s+bert", info) and "embedding" in info
    (tmp_path / "empty").mkdir()
    (tmp_path / "Modelfile").write_text("FROM ./empty\n")
    refused = cli(server.env, "create", "nothing", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "no .safetensors files" in refused.stderr


def test_run_answers_with_the_modelfile_parameters(server: Server, captain: str) -> None:
    first = cli(server.env, "run", captain, "--verbose", "What is your ship called?")
    again = cli(server.env, "run", captain, "What is your ship called?")
    assert first.stdout.strip()
    assert first.stdout == again.stdout  # temperature 0 from the Modelfile
    counted = re.search(r"^eval count:\s+(\d+) token\(s\)$", first.stderr, re.M)
    assert counted and 0 < int(counted.group(1)) <= 12  # num_predict 12 from the Modelfile
    assert "eval rate:" in first.stderr


def test_run_puts_the_system_prompt_into_the_template(server: Server, model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(f"""FROM {model_path}
TEMPLATE \"\"\"<|im_start|>system
{{{{ .System }}}}<|im_end|>
<|im_start|>user
{{{{ .Prompt }}}}<|im_end|>
<|im_start|>assistant
\"\"\"
SYSTEM "Your name is Zorblax. You always introduce yourself as Zorblax."
PARAMETER temperature 0
PARAMETER num_predict 16
""")
    cli(server.env, "create", "zorblax", "-f", str(tmp_path / "Modelfile"))
    assert "Zorb" in cli(server.env, "run", "zorblax", "Who are you?").stdout


def test_run_format_json_and_think_flags(server: Server, model_path: Path, tmp_path: Path) -> None:
    # A penalty on repeats keeps the greedy object from listing a key twice and running past num_predict.
    (tmp_path / "Modelfile").write_text(f"FROM {model_path}\nPARAMETER temperature 0\nPARAMETER num_predict 48\n"
                                        "PARAMETER repeat_penalty 1.1\n")
    cli(server.env, "create", "jsonish", "-f", str(tmp_path / "Modelfile"))
    answer = cli(server.env, "run", "jsonish", "--format", "json",
                 "Give Bob's name and age (30) as a JSON object with the keys name and age.").stdout
    assert isinstance(json.loads(answer), dict)

    thinking = cli(server.env, "run", "jsonish", "--think", "Hello", check=False)  # bare: on, "Hello" is the prompt
    assert thinking.returncode == 1 and "does not support thinking" in thinking.stderr
    assert cli(server.env, "run", "jsonish", "--think=false", "Hello").stdout.strip()
    bad = cli(server.env, "run", "jsonish", "--think=loud", "Hello", check=False)
    assert bad.returncode == 2 and "invalid think value 'loud'" in bad.stderr


def test_run_reads_the_prompt_from_stdin(server: Server, captain: str) -> None:
    piped = cli(server.env, "run", captain, stdin="What is your ship called?")
    assert piped.stdout == cli(server.env, "run", captain, "What is your ship called?").stdout


def stored(env: dict[str, str], route: str, name: str, key: str) -> datetime:
    """A time the server reports for a model (`modified_at` in /api/tags, `expires_at` in /api/ps)."""
    models = Client(BaseURL.parse(env["OLLAMA_HOST"])).call("GET", route)["models"]
    when = fmt.parse_time(next(m for m in models if m["name"] == name)[key])
    assert when is not None
    return when


def worded(when: datetime, before: datetime, after: datetime) -> set[str]:
    """Each way the CLI may word `when` if it looked at the clock between `before` and `after`.

    The wording changes only on whole seconds, so a look each second, and one at `after`, sees them all.
    """
    moments = [before + timedelta(seconds=s) for s in range(int((after - before).total_seconds()) + 1)]
    return {fmt.human_time(when, "Never", now) for now in [*moments, after]}


def test_list_copy_remove(server: Server, captain: str) -> None:
    before = datetime.now(UTC)
    listed = cli(server.env, "list").stdout.splitlines()
    after = datetime.now(UTC)
    assert listed[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(line for line in listed if line.startswith("captain:latest"))
    # The age depends on how long ago the module's fixture created the model: any age, worded as Ollama does
    # and true to the time the server stored.
    shown = re.fullmatch(rf"captain:latest\s+[0-9a-f]{{12}}\s+\d+ MB\s+({AGE} ago)\s*", row)
    assert shown, row
    modified = stored(server.env, "/api/tags", "captain:latest", "modified_at")
    assert modified <= after
    assert shown.group(1) in worded(modified, before, after)

    assert cli(server.env, "cp", captain, "haddock").stdout == "copied 'captain' to 'haddock'\n"
    names = [line.split()[0] for line in cli(server.env, "ls").stdout.splitlines()[1:]]
    assert {"captain:latest", "haddock:latest"} <= set(names)
    assert cli(server.env, "show", "haddock", "--system").stdout.startswith("You are Captain Haddock.")

    assert cli(server.env, "rm", "haddock").stdout == "deleted 'haddock'\n"
    names = [line.split()[0] for line in cli(server.env, "ls").stdout.splitlines()[1:]]
    assert "haddock:latest" not in names and "captain:latest" in names
    gone = cli(server.env, "show", "haddock", check=False)
    assert gone.returncode == 1 and gone.stderr.startswith("Error: ") and "not found" in gone.stderr


def test_ps_lists_the_loaded_model_until_stopped(server: Server, captain: str) -> None:
    started = datetime.now(UTC)
    cli(server.env, "run", captain, "--keepalive", "10m", "Hello")
    before = datetime.now(UTC)
    lines = cli(server.env, "ps").stdout.splitlines()
    after = datetime.now(UTC)
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(line for line in lines if line.startswith("captain:latest"))
    shown = re.search(rf"(100% CPU|100% GPU|\d+%/\d+% CPU/GPU)\s+1024\s+({AGE} from now)\s*$", row)
    assert shown, row
    # --keepalive 10m counts from the end of the answer, which came between `started` and `before`; a busy
    # machine may take any time over the run and the ps, so the words are checked against the stored time.
    expires = stored(server.env, "/api/ps", "captain:latest", "expires_at")
    keep, slack = timedelta(minutes=10), timedelta(seconds=1)  # slack: the clocks' rounding, not the machine's speed
    assert started + keep - slack <= expires <= before + keep + slack
    assert shown.group(2) in worded(expires, before, after)

    cli(server.env, "stop", captain)
    assert not any(line.startswith("captain:latest") for line in cli(server.env, "ps").stdout.splitlines())


def test_errors_read_like_ollamas(server: Server, tmp_path: Path) -> None:
    nowhere = cli(cli_env(tmp_path, free_port()), "ps", check=False)
    assert nowhere.returncode == 1
    assert nowhere.stderr.startswith("Error: could not connect to ollama-py server, is it running?")

    (tmp_path / "Modelfile").write_text("FROM smollm2:135m\nPARAMETER temperature hot\n")
    bad = cli(server.env, "create", "broken", "-f", str(tmp_path / "Modelfile"), check=False)
    assert bad.returncode == 1
    assert "line 2" in bad.stderr and "temperature" in bad.stderr

    missing = cli(server.env, "create", "broken", "-f", str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 1 and "No such file" in missing.stderr


def test_first_run_on_a_fresh_machine_starts_the_server_and_answers(tmp_path: Path) -> None:
    """The README's first command with no server running and an empty store."""
    env = cli_env(tmp_path, free_port())
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "default-models").symlink_to(Path(env["OLLAMA_PY_CACHE"]) / "default-models")
    env["OLLAMA_PY_CACHE"] = str(cache)
    try:
        first = cli(env, "run", "smollm2:135m", "Why is the sky blue?")
        assert "Starting the ollama-py server in the background" in first.stderr
        assert len(first.stdout.split()) > 3
        listed = cli(env, "list")
        assert "Starting" not in listed.stderr
        assert "smollm2:135m" in listed.stdout
    finally:
        stop_background_server(cache / "serve.log")


def stop_background_server(log: Path) -> None:
    """Stops the server a command started, found by the pid the CLI wrote at the top of its log."""
    found = re.search(r"pid (\d+)", log.read_text()) if log.exists() else None
    if found is None:
        return
    pid = int(found.group(1))
    try:
        os.killpg(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def test_api_key_from_ollama_api_key(tmp_path: Path) -> None:
    with start_server(tmp_path, OLLAMA_PY_API_KEYS="sesame") as server:
        refused = cli(server.env, "list", check=False)
        assert refused.returncode == 1
        assert "API key" in refused.stderr and "OLLAMA_API_KEY" in refused.stderr
        listed = cli(Environment(server.env, OLLAMA_API_KEY="sesame"), "list")
        assert listed.stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]


def test_push_and_pull_through_a_registry_with_progress_bars(server: Server, captain: str, tmp_path: Path) -> None:
    with running_registry(tmp_path / "registry") as registry:
        name = f"{registry.host}/library/captain:v1"
        cli(server.env, "cp", captain, name)
        pushed = cli(server.env, "push", "--insecure", name).stderr
        assert re.search(r"^pushing [0-9a-f]{12}\s+100% .* MB", pushed, re.M)
        assert pushed.split()[-1] == "success"

        (tmp_path / "elsewhere").mkdir()
        with start_server(tmp_path / "elsewhere") as elsewhere:
            pulled = cli(elsewhere.env, "pull", "--insecure", name).stderr
            assert re.search(r"^pulling manifest", pulled, re.M)
            assert re.search(r"^pulling [0-9a-f]{12}\s+100% .* MB", pulled, re.M)
            assert pulled.split()[-1] == "success"
            assert cli(elsewhere.env, "show", name, "--system").stdout.startswith("You are Captain Haddock.")
