"""Start the real service under Gunicorn, with the project's config file, on a free loopback port."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "service" / "gunicorn.conf.py"
MODELS_DIR = Path(os.environ.get("CONVNET_TEST_MODELS_DIR", ROOT / "models"))
_ENGINE_CACHE: list[Path] = []


def session_engine_cache() -> Path:
    """One engine cache per test session (made on first use, private, removed at exit): no
    engine converted by an earlier checkout or run is ever loaded by a test server."""
    if not _ENGINE_CACHE:
        path = Path(tempfile.mkdtemp(prefix="convnet-test-engines-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _ENGINE_CACHE.append(path)
    return _ENGINE_CACHE[0]


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`: nothing is left running."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_ok(url: str, seconds: float, why_not: Callable[[], str | None] = lambda: None) -> None:
    """Until GET `url` answers 200. `why_not()` names a reason to stop waiting (the process
    behind it exited), or None."""
    deadline = time.monotonic() + seconds
    while True:
        reason = why_not()
        assert reason is None, reason
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} not 200 after {seconds} s"
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class GunicornServer:
    """One Gunicorn master with its workers; stop() always leaves no process behind."""

    tmp: Path
    workers: int = 2
    threads: int | None = None  # None: the config's default for its worker class
    env: dict[str, str] = field(default_factory=dict)
    # Another WSGI app under the same config (the benchmark's baselines), e.g. "bench.baselines:hello()"
    app: str | None = None
    # Another checkout or install (the Docker image's layout, tests/test_deploy.py).
    python: str = sys.executable
    cwd: Path = ROOT
    config: Path = CONFIG
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_dir(self) -> Path:
        return self.tmp / "metrics"

    def start(self, wait_ready: bool = True, timeout: float = 90) -> GunicornServer:
        env = {
            # The shell's own service settings stay out: a test server runs what the test says.
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("GUNICORN_", "CONVNET_", "PROMETHEUS_"))
            },
            "CONVNET_ENGINE_CACHE": str(session_engine_cache()),
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "GUNICORN_WORKERS": str(self.workers),
            **({"GUNICORN_THREADS": str(self.threads)} if self.threads else {}),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            "CONVNET_MODELS_DIR": str(MODELS_DIR),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **self.env,
        }
        self.log_path = self.tmp / f"gunicorn-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "gunicorn",
                "--config",
                str(self.config),
                *([self.app] if self.app else []),
            ],
            cwd=self.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:
            self.wait_ready(timeout) if self.app is None else self.wait_answering(timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready_workers(self) -> int:
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            1
            for line in text.splitlines()
            if line.startswith("convnet_worker_ready{") and line.endswith(" 1.0")
        )

    def wait_ready(self, timeout: float = 90) -> None:
        """Until every worker has loaded and warmed up its models (each reports it in /metrics)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.ready_workers() >= self.workers:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"service not ready after {timeout} s:\n{self.log()}")

    def wait_answering(self, timeout: float = 90, path: str = "/ping") -> None:
        """For apps without readiness: until every worker has answered a POST."""
        deadline = time.monotonic() + timeout
        answered = 0
        while time.monotonic() < deadline and answered < 20 * self.workers:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                requests.post(f"{self.url}{path}", data=b"", timeout=30)
                answered += 1
            except requests.RequestException:
                time.sleep(0.2)
        if answered < 20 * self.workers:
            raise TimeoutError(f"{self.app} not answering after {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        )
        return [int(p) for p in out.stdout.split()]

    def worker_holding(self, client: socket.socket) -> int:
        """The worker pid whose file descriptors include the server side of `client`'s
        connection (Linux: /proc/net/tcp, then each worker's fds)."""
        want = f":{client.getsockname()[1]:04X}"
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            local, remote = parts[1], parts[2]
            if local.endswith(f":{self.port:04X}") and remote.endswith(want):
                inode = parts[9]
        assert inode, "server side of the connection not found"
        for pid in self.worker_pids():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
                except OSError:
                    pass
        raise AssertionError("no worker holds the connection")

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


NGINX_SITE = ROOT / "deploy" / "nginx" / "convnet.conf"  # the proxy the compose file runs
NGINX_CONF = """
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


def find_nginx() -> str | None:
    """Debian's nginx, on PATH or in /usr/sbin (not on a normal user's PATH)."""
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


@dataclass
class NginxProxy:
    """deploy/nginx/convnet.conf, the compose file's proxy, in front of `upstream` on loopback."""

    tmp: Path
    upstream: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    # Text replaced in the site file, for tests that need e.g. shorter timeouts.
    replace: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The master and its worker processes."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [self.proc.pid, *map(int, children.split())]

    @contextmanager
    def running(self) -> Iterator[NginxProxy]:
        binary = find_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
        site = NGINX_SITE.read_text()
        site = site.replace("server service:8000;", f"server 127.0.0.1:{self.upstream};")
        site = site.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        for old, new in self.replace.items():
            assert old in site, old
            site = site.replace(old, new)
        (self.tmp / "site.conf").write_text(site)
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=self.tmp))
        log = self.tmp / "error.log"
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.tmp), "-e", str(log), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"{self.url}/livez", timeout=2).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.1)
            else:
                raise TimeoutError(log.read_text())
            yield self
        finally:
            stop_process(self.proc, 10)
