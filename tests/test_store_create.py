"""Create, the default model's import and show --modelfile, on the real SmolLM2 file; crash safety."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ollama_py import settings
from ollama_py.settings import Settings
from ollama_py.store import create, gguf, library, modelfile, names
from ollama_py.store.create import CHATML_TEMPLATE, CreateError, ProgressUpdate
from ollama_py.store.default_model import SMOLLM2_135M
from ollama_py.store.manifests import (MEDIA_MESSAGES, MEDIA_MODEL, MEDIA_PARAMS, MEDIA_SYSTEM, MEDIA_TEMPLATE,
                                       ModelNotFoundError, Store)
from tests.test_store_blobs import snapshot

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def store_settings(root: Path) -> Settings:
    return dataclasses.replace(settings.load(), models=root, noprune=False)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> tuple[Store, Settings]:
    """A store holding only the default model, imported the way a first `run smollm2:135m` does."""
    root = tmp_path_factory.mktemp("store")
    s = store_settings(root)
    store = Store.from_settings(s)
    seen: list[ProgressUpdate] = []
    assert create.import_default(store, s, progress=seen.append) == names.parse("smollm2:135m")
    statuses = [p.status for p in seen]
    assert statuses[0] == "gathering model components"
    assert "parsing GGUF" in statuses
    assert statuses[-2:] == ["writing manifest", "success"]
    assert any(p.status == "copying file" and p.completed == p.total == model_path.stat().st_size for p in seen)
    return store, s


def consistent(store: Store) -> None:
    """Every listed model's blobs exist and hash to their digests."""
    for model in store.models():
        for digest in store.read(model.name).digests():
            assert store.blobs.verify(digest), f"{model.name}: {digest} missing or damaged"


def test_default_model_is_in_the_store_like_ollamas(imported: tuple[Store, Settings]) -> None:
    store, _ = imported
    [entry] = store.models()
    assert entry.name.display() == "smollm2:135m"
    assert (entry.config.model_family, entry.config.model_type, entry.config.file_type) == ("llama", "134.52M", "Q4_1")
    manifest = store.read(entry.name)
    model = manifest.layer(MEDIA_MODEL)
    assert model is not None and model.digest == "sha256:" + SMOLLM2_135M.gguf_sha256
    assert store.text(manifest.layer(MEDIA_TEMPLATE)) == library.SMOLLM2_TEMPLATE  # type: ignore[arg-type]
    assert store.text(manifest.layer(MEDIA_SYSTEM)) == SMOLLM_SYSTEM  # type: ignore[arg-type]
    assert json.loads(store.text(manifest.layer(MEDIA_PARAMS))) == {  # type: ignore[arg-type]
        "stop": ["<|im_start|>", "<|im_end|>"]}
    consistent(store)


def test_default_import_is_done_once(imported: tuple[Store, Settings]) -> None:
    store, s = imported
    before = snapshot(store.root)
    seen: list[ProgressUpdate] = []
    assert create.import_default(store, s, progress=seen.append).display() == "smollm2:135m"
    assert create.resolve(store, names.parse("SmolLM2:135M"), s) == names.parse("smollm2:135m")
    assert seen == []
    assert snapshot(store.root) == before
    with pytest.raises(ModelNotFoundError, match="model 'other:latest' not found"):
        create.resolve(store, names.parse("other"), s)


MODELFILE = '''FROM {path}
SYSTEM """You are Pirate Pete.
Speak like a pirate."""
TEMPLATE """{{{{ if .System }}}}<|im_start|>system
{{{{ .System }}}}<|im_end|>
{{{{ end }}}}{{{{ range .Messages }}}}<|im_start|>{{{{ .Role }}}}
{{{{ .Content }}}}<|im_end|>
{{{{ end }}}}<|im_start|>assistant
"""
PARAMETER temperature 0.3
PARAMETER num_ctx 1024
MESSAGE user Who are you?
MESSAGE assistant Arr, Pete.
'''


def test_create_from_gguf_path_and_show_it_back(imported: tuple[Store, Settings], model_path: Path,
                                               tmp_path: Path) -> None:
    store, _ = imported
    (tmp_path / "Modelfile").write_text(MODELFILE.format(path=model_path))
    parsed = modelfile.parse((tmp_path / "Modelfile").read_text())
    seen: list[ProgressUpdate] = []
    name = create.create(store, names.parse("pete"), parsed, base_dir=tmp_path, progress=seen.append)
    try:
        assert f"using existing layer sha256:{SMOLLM2_135M.gguf_sha256}" in [p.status for p in seen]
        assert "copying file" not in [p.status for p in seen]
        shown = create.to_modelfile(store, name)
        assert shown.from_ == str(store.root / "blobs" / f"sha256-{SMOLLM2_135M.gguf_sha256}")
        assert (shown.system, shown.template, shown.parameters, shown.messages) == (
            parsed.system, parsed.template, {"temperature": 0.3, "num_ctx": 1024}, parsed.messages)
        text = modelfile.render(shown, generated_for="pete:latest")
        assert 'SYSTEM """You are Pirate Pete.\nSpeak like a pirate."""' in text
        assert "PARAMETER temperature 0.3\nPARAMETER num_ctx 1024\n" in text
        assert "MESSAGE user Who are you?\nMESSAGE assistant Arr, Pete.\n" in text

        # The shown Modelfile builds the same model again, without copying the weights.
        again = create.create(store, names.parse("pete2"), modelfile.parse(text), base_dir=tmp_path)
        assert store.read(again).layers == store.read(name).layers
        assert len(list(store.blobs.digests())) == len(store.read(name).digests() | store.read(
            names.parse("smollm2:135m")).digests())
        store.delete(again)
    finally:
        store.delete(name)
    consistent(store)


def test_create_from_a_model_inherits_and_overrides(imported: tuple[Store, Settings], tmp_path: Path) -> None:
    store, s = imported
    mf = modelfile.parse("FROM smollm2:135m\nPARAMETER temperature 0\nMESSAGE user hi\n")
    name = create.create(store, names.parse("me/smol-cold:v1"), mf, base_dir=tmp_path, resolve_default=s)
    try:
        manifest, base = store.read(name), store.read(names.parse("smollm2:135m"))
        assert manifest.layer(MEDIA_MODEL) == base.layer(MEDIA_MODEL)
        assert manifest.layer(MEDIA_TEMPLATE) == base.layer(MEDIA_TEMPLATE)
        assert json.loads(store.text(manifest.layer(MEDIA_PARAMS))) == {  # type: ignore[arg-type]
            "stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.0}
        assert json.loads(store.text(manifest.layer(MEDIA_MESSAGES))) == [  # type: ignore[arg-type]
            {"role": "user", "content": "hi"}]
        assert store.config(manifest).model_type == "134.52M"
        # Removing the derived model keeps every blob the default model still uses.
        removed = store.delete(name)
        assert set(removed).isdisjoint(base.digests())
        consistent(store)
    finally:
        if store.resolve(name):
            store.delete(name)


def test_removing_the_last_user_prunes_the_weights(model_path: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    mf = modelfile.parse(f"FROM {model_path}\n")
    a = create.create(store, names.parse("a"), mf, base_dir=tmp_path)
    store.copy(a, names.parse("b"))
    weights = store.read(a).layer(MEDIA_MODEL).digest  # type: ignore[union-attr]
    assert weights not in store.delete(a)
    assert store.blobs.exists(weights)
    assert weights in store.delete(names.parse("b"))
    assert list(store.blobs.digests()) == []


@pytest.mark.parametrize("case", ["not gguf", "truncated gguf", "missing model", "bad name", "folder",
                                  "missing adapter", "bad adapter"])
def test_rejected_creates_leave_the_store_unchanged(imported: tuple[Store, Settings], model_path: Path,
                                                    tmp_path: Path, case: str) -> None:
    store, _ = imported
    (tmp_path / "notes.txt").write_text("not a model")
    with model_path.open("rb") as src:
        (tmp_path / "cut.gguf").write_bytes(src.read(3 << 20))
    (tmp_path / "dir").mkdir()
    text = {
        "not gguf": "FROM ./notes.txt",
        "truncated gguf": "FROM ./cut.gguf",
        "missing model": "FROM nobody/nothing:v9",
        "bad name": "FROM ../../../etc/passwd",
        "folder": "FROM ./dir",
        "missing adapter": f"FROM {model_path}\nADAPTER ./lora.gguf",
        "bad adapter": f"FROM {model_path}\nADAPTER ./notes.txt",
    }[case]
    before = snapshot(store.root)
    with pytest.raises(CreateError) as err:
        create.create(store, names.parse("victim"), modelfile.parse(text), base_dir=tmp_path)
    assert str(err.value)
    assert snapshot(store.root) == before


def test_derived_template_only_for_chatml(model_path: Path) -> None:
    assert create.derived_template(gguf.read(model_path).chat_template) == CHATML_TEMPLATE
    assert create.derived_template("{{ bos_token }}[INST] {{ message }} [/INST]") is None
    assert create.derived_template(None) is None
    assert create.default_system(gguf.read(model_path).chat_template) == SMOLLM_SYSTEM


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ollama_py.store import create, modelfile, names
    from ollama_py.store.manifests import Store
    store = Store(Path(sys.argv[1]))
    print("ready", flush=True)  # Python started and the store opened: the work begins now
    if sys.argv[2] == "create":
        for i in range(3):
            create.create(store, names.parse(f"m{i}"), modelfile.parse(f"FROM {sys.argv[3]}\\nSYSTEM s{i}"),
                          base_dir=Path("."))
    else:
        for model in store.models():
            store.delete(model.name)
""")


def _start(root: Path, action: str, model_path: Path) -> subprocess.Popen[str]:
    """The child process, once it is ready to work: its start-up, slow on a busy machine, is behind it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), action, str(model_path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    with child.stdout:  # it writes nothing more
        assert child.stdout.readline() == "ready\n"
    return child


def test_killed_create_or_remove_leaves_the_store_consistent(model_path: Path, tmp_path: Path) -> None:
    """SIGKILL at random points of create and rm: every manifest left names blobs that exist and verify."""
    # How long each action's work takes on this machine now, on a store of its own (a create into an empty
    # store, the longest; a remove of its three models): the kills land at random points of that span,
    # however busy the machine is.
    span = {}
    for action in ("create", "rm"):
        child = _start(tmp_path / "baseline", action, model_path)
        started = time.monotonic()
        assert child.wait() == 0
        span[action] = time.monotonic() - started
    root = tmp_path / "store"
    store = Store(root)
    rng = random.Random(5)
    killed_working = 0
    for round_ in range(8):
        action = "create" if round_ % 2 == 0 else "rm"
        child = _start(root, action, model_path)
        time.sleep(rng.random() * span[action])
        killed_working += child.poll() is None
        child.send_signal(signal.SIGKILL)
        child.wait()
        consistent(store)
    assert killed_working, "every child had finished before its kill: nothing was interrupted"
    store.prune()
    consistent(store)
    used = set().union(*(store.read(m.name).digests() for m in store.models()))
    assert set(store.blobs.digests()) == used
    assert not [p for p in (root / "blobs").iterdir() if p.name.startswith(".partial-")]
    shutil.rmtree(root)
