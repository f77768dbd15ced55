"""A model split across two RPC workers on other hosts: same answers as local, and a dying worker is contained.

Each worker and the server run in their own network namespace with their own
address (cluster_net), as on three machines. The workers serve their CPU, so
the split model computes exactly what the server's CPU computes alone.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from ollama_py import settings
from ollama_py.cluster.probe import hello
from tests.cluster_harness import CLI, PROBE, SERVE, STORY, Lan, lan, server_env, stop, wait_until, worker_argv
from tests.server_harness import GUARD, MODEL, Environment, default_store

WORKER_PORT = 50052
SERVER_PORT = 11434
RAW_PROMPT = "<|im_start|>user\nList the planets of the solar system.<|im_end|>\n<|im_start|>assistant\n"
LOCAL = {"num_gpu": 0}  # no GPU layers: the model stays in the server, off the workers


@dataclass
class Cluster:
    net: Lan
    workers: dict[str, subprocess.Popen[bytes]]
    server: subprocess.Popen[bytes]
    url: str

    def endpoint(self, member: str) -> str:
        return f"{self.net.address(member)}:{WORKER_PORT}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=GUARD)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cache = settings.load().cache
    root = tmp_path_factory.mktemp("store")
    default_store(root, cache)
    with lan(["w1", "w2", "server"]) as net:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            workers = {}
            for member in ("w1", "w2"):
                workers[member] = net.run(member, worker_argv(net.address(member), WORKER_PORT),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                procs.append(workers[member])
            for member, proc in workers.items():
                wait_until(lambda m=member: hello(f"{net.address(m)}:{WORKER_PORT}", timeout=PROBE),  # type: ignore[misc]
                           f"worker {member}", proc)
            # The workers compute attention with ggml's kernel, so the model run locally takes it too
            # (docs/deploy.md): with ollama-py's it would part from the split answer at near ties.
            env = server_env(f"{net.address('server')}:{SERVER_PORT}", root, cache,
                             OLLAMA_PY_ALLOW_UNAUTHENTICATED="1", OLLAMA_NUM_PARALLEL="2",
                             OLLAMA_PY_CPU_ATTENTION="0",
                             OLLAMA_CONTEXT_LENGTH="2048", OLLAMA_MAX_LOADED_MODELS="1",
                             OLLAMA_RPC_SERVERS=",".join(f"{net.address(m)}:{WORKER_PORT}" for m in workers))
            server = net.run("server", SERVE, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append(server)
            url = f"http://{net.address('server')}:{SERVER_PORT}"
            wait_until(lambda: httpx.get(f"{url}/health", timeout=PROBE).raise_for_status(), "server", server)
            yield Cluster(net=net, workers=workers, server=server, url=url)
        finally:
            stop(procs)


def generate(client: httpx.Client, prompt: str, options: dict[str, object]) -> dict[str, object]:
    response = client.post("/api/generate", json={
        "model": MODEL, "prompt": prompt, "raw": True, "stream": False, "logprobs": True,
        "options": {"temperature": 0, "num_predict": 48, **options}})
    assert response.status_code == 200, response.text
    return dict(response.json())


def embed(client: httpx.Client, options: dict[str, object]) -> list[float]:
    response = client.post("/api/embed", json={"model": MODEL, "input": "The planets of the solar system",
                                               "options": options})
    assert response.status_code == 200, response.text
    return list(response.json()["embeddings"][0])


def tokens(answer: dict[str, object]) -> list[tuple[str, list[int]]]:
    return [(lp["token"], lp["bytes"]) for lp in answer["logprobs"]]  # type: ignore[index, union-attr]


def test_split_model_generates_what_the_local_model_does(cluster: Cluster) -> None:
    with cluster.client() as client:
        split = generate(client, RAW_PROMPT, {})
        placement = client.get("/api/ps").json()["models"][0]["placement"]
        split_vector = embed(client, {})
        metrics = client.get("/metrics").text
        listing = subprocess.run([*CLI, "ps"], env=Environment(os.environ, OLLAMA_HOST=cluster.url),
                                 capture_output=True, text=True, timeout=GUARD).stdout
        local = generate(client, RAW_PROMPT, LOCAL)
        local_placement = client.get("/api/ps").json()["models"][0]["placement"]
        local_vector = embed(client, LOCAL)
    assert len(tokens(split)) >= 10
    assert tokens(split) == tokens(local)
    assert split["response"] == local["response"]
    # /api/ps says where the layers were: all on the two workers, none left on the server's CPU.
    assert {p["endpoint"] for p in placement} == {cluster.endpoint("w1"), cluster.endpoint("w2")}
    assert all(p["device"].startswith("RPC") for p in placement)
    assert sum(p["layers"] for p in placement) == 31  # SmolLM2-135M: 30 blocks and the output layer
    assert local_placement == [{"device": "CPU", "endpoint": "", "layers": 31, "first_layer": 0, "last_layer": 30}]
    # So does `ollama-py ps`.
    assert "100% RPC" in listing
    assert all(f"{p['first_layer']}-{p['last_layer']} {p['device']} ({p['endpoint']})" in listing for p in placement)
    # Embeddings are computed on the workers too, and the model's slots show in the metrics.
    assert split_vector == pytest.approx(local_vector, abs=1e-5)
    assert f'ollama_py_slots_total{{model="{MODEL}"}} 2.0' in metrics


def test_a_worker_dying_mid_answer_ends_that_answer_with_a_clear_error(cluster: Cluster) -> None:
    victim = cluster.workers["w2"]
    lines = []
    with cluster.client() as client:
        with client.stream("POST", "/api/chat", json={
                "model": MODEL, "messages": STORY, "options": {"temperature": 0, "num_predict": 400}}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(orjson.loads(line))
                if len(lines) == 3:
                    victim.kill()
        last = lines[-1]
        assert "error" in last, last
        assert "the runner process stopped (killed by SIGABRT)" in last["error"]
        assert f"RPC worker {cluster.endpoint('w2')} is unreachable" in last["error"]
        assert not any(chunk.get("done") for chunk in lines)

        # The server is still up, lists the split model no more, and serves the model where it needs no worker.
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/api/ps").json()["models"] == []
        local = generate(client, RAW_PROMPT, LOCAL)
        assert local["done"] and local["response"]
        # The split model now fails fast, naming the worker, instead of hanging or crashing the server.
        refused = client.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})
        assert refused.status_code == 503
        assert refused.json()["error"] == f"RPC worker {cluster.endpoint('w2')} is unreachable: Connection refused"
    assert cluster.server.poll() is None
