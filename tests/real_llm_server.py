"""A real llama.cpp ``llama-server`` (SmolLM2-135M-Instruct) on 127.0.0.1, for tests/llm_eval/test_llm_real.py and
``benchmarks/llm_eval.py --real``.

Nothing here downloads or builds: ``bash scripts/build_llama_server.sh`` installs the server and the model into
``$ECGQA_LLM_HOME`` (default ``~/.cache/ecgqa/llm``), and ``installed()`` says why they cannot be used when they
are not there, with that command in the message, so that a test can skip with it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

INSTALL_COMMAND = "bash scripts/build_llama_server.sh"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2"


def llm_home() -> Path:
    return Path(os.environ.get("ECGQA_LLM_HOME") or Path.home() / ".cache" / "ecgqa" / "llm")


def installed() -> tuple[Path, Path] | str:
    """(server binary, model file), or the reason they cannot be used (naming the install command)."""
    home = llm_home()
    binary, model = home / "bin" / "llama-server", home / "models" / MODEL_FILE
    missing = [str(p) for p in (binary, model) if not p.is_file()]
    if not missing:
        return binary, model
    reason = f"no real LLM server installed ({', '.join(missing)} missing): run `{INSTALL_COMMAND}`"
    if (home / "bin" / "llama-server.broken").exists():
        reason += f" (the last build failed its smoke start: see {home / 'work' / 'smoke-server.log'})"
    return reason


def cpu_has_amx() -> bool:
    """Whether this CPU advertises Intel AMX (the llama.cpp start-up crash needs an AMX-enabled build on one)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"^flags\s*:.*\bamx_(tile|int8|bf16)\b", text, re.MULTILINE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerCrashed(RuntimeError):
    """llama-server exited before it answered its health check."""


class LlamaServer:
    """``llama-server`` in its own process group on a free port; ``url`` is the OpenAI base URL (…/v1).

    ``slots``: parallel decoding slots (requests beyond them queue in the server); the context is 4096 tokens
    per slot (the sample's longest prompt, features + classifier on two ECGs, is ~1.5k tokens). ``threads``: 1 by
    default, because on a loaded 2-core machine two llama.cpp threads spin-wait for each other and generation
    dropped from ~37 to 3 tokens/s here, while one thread stayed at ~37.
    """

    def __init__(
        self,
        binary: Path,
        model: Path,
        *,
        slots: int = 1,
        threads: int = 1,
        ctx_per_slot: int = 4096,
        log_dir: Path | None = None,
        start_timeout: float = 180.0,
    ):
        self.binary, self.model, self.slots, self.threads = Path(binary), Path(model), slots, threads
        self.ctx = ctx_per_slot * slots
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.start_timeout = start_timeout
        self._tmp = None if log_dir else tempfile.TemporaryDirectory(prefix="llama-server-")
        self.log_path = Path(log_dir or self._tmp.name) / f"llama-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self) -> list[str]:
        """The llama-server command line this server runs."""
        return [
            str(self.binary),
            "-m",
            str(self.model),
            "--alias",
            ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-c",
            str(self.ctx),
            "-np",
            str(self.slots),
            "-t",
            str(self.threads),
            "-tb",
            str(self.threads),
            "--no-webui",
            "--metrics",
            # Reproducible at temperature 0: no reply may depend on an earlier prompt's cached state
            # (docs/benchmark.md, "Local servers").
            "--no-cache-prompt",
            "--cache-ram",
            "0",
        ]

    def start(self) -> None:
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerCrashed(self.crash_reason(code))
            try:
                with urllib.request.urlopen(self.root + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise ServerCrashed(
            f"llama-server did not answer /health within {self.start_timeout:.0f} s (log: {self.log_path})"
        )

    def crash_reason(self, code: int) -> str:
        tail = self.log_path.read_text(errors="replace")[-600:] if self.log_path.exists() else ""
        reason = f"llama-server exited with status {code} at start-up (log: {self.log_path})"
        if code in (-signal.SIGSEGV, 128 + signal.SIGSEGV) and cpu_has_amx():
            reason += (
                ": SIGSEGV on an AMX-capable CPU, the known llama.cpp AMX crash (ggml_backend_amx_mul_mat in "
                f"the warm-up decode); rebuild with AMX off: `{INSTALL_COMMAND} --force`"
            )
        return reason + ("\n" + tail if tail else "")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters and gauges (``llamacpp:`` prefix dropped)."""
        with urllib.request.urlopen(self.root + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r"^llamacpp:(\w+) ([0-9.eE+-]+|nan|inf)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out
