"""Real processes for the tests: nginx, the stand-in server, Envoy, the daemon; plus an
HTTP client, a load generator and a deadline poll. No mocks: each helper starts the
real program and stops it by its own PID."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from controlplane.demo import servers
from controlplane.envoy.verifying import envoy_binary
from controlplane.settings import Settings
from tests import leaks

REPO = Path(__file__).resolve().parent.parent


def upstream_kinds() -> list[str]:
    """nginx when installed (required when CONTROLPLANE_REQUIRE_NGINX=1, as in CI), and
    the stand-in server always, so both paths are exercised where nginx exists."""
    has_nginx = servers.available_kind() == servers.NGINX
    if os.environ.get("CONTROLPLANE_REQUIRE_NGINX") == "1" and not has_nginx:
        raise RuntimeError("CONTROLPLANE_REQUIRE_NGINX=1 but nginx is not installed")
    return [servers.NGINX, servers.STANDIN] if has_nginx else [servers.STANDIN]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, host: str, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Upstreams:
    """Named HTTP upstreams on Unix sockets in one folder (nginx or the stand-in)."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder = folder
        self.kind = kind
        self._started: list[servers.Server] = []
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)

    def start(self, name: str) -> Path:
        home = self.folder.parent / f"nginx-{name}"
        started = servers.start(name, self.folder / f"{name}.sock", self.kind, home)
        self._started.append(started)
        leaks.own(started.process.pid)
        return started.socket

    def close(self) -> None:
        for started in self._started:
            started.stop()
            leaks.disown(started.process.pid)


class Envoy:
    """The real Envoy from the wheel, on a bootstrap printed by `controlplane bootstrap`."""

    def __init__(self, folder: Path, out_dir: Path, runtime: dict[str, Any] | None = None,
                 config: Path | None = None) -> None:
        self.folder = folder
        self.out_dir = out_dir
        self.runtime = runtime
        self.config = config
        """A settings file for `controlplane bootstrap` (the daemon's own)."""
        self.admin_socket = folder / "admin.sock"
        self.log = folder / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, started: list[Envoy], folder: Path, out_dir: Path) -> Envoy:
        envoy = cls(folder, out_dir)
        started.append(envoy)
        envoy.launch()
        return envoy

    def launch(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        bootstrap = self.folder / "bootstrap.yaml"
        printed = subprocess.run(
            [sys.executable, "-m", "controlplane",
             *(["--config", str(self.config)] if self.config else []),
             "bootstrap", "--out", str(self.out_dir),
             "--admin-socket", str(self.admin_socket)], check=True, capture_output=True)
        bootstrap.write_bytes(printed.stdout)
        if self.runtime:  # a live Envoy configured unlike the validating one
            document = yaml.safe_load(printed.stdout)
            layers = document.setdefault("layered_runtime", {}).setdefault("layers", [])
            layers.append({"name": "test", "static_layer": self.runtime})
            bootstrap.write_text(json.dumps(document))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(envoy_binary(Settings())), "-c", str(bootstrap), "--disable-hot-restart",
                 "--log-level", "warning", "--drain-time-s", "1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        leaks.own(self.process.pid)
        wait_for(self._live, 20, "Envoy's admin /ready")

    def _live(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"Envoy exited {self.process.returncode}: {self.log_text()}")
        return self.admin("/ready").strip() == "LIVE"

    def admin(self, target: str) -> str:
        connection = http.client.HTTPConnection("localhost", timeout=5)
        connection.sock = socket.socket(socket.AF_UNIX)
        connection.sock.settimeout(5)
        try:
            connection.sock.connect(str(self.admin_socket))
            connection.request("GET", target)
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    def stats(self, pattern: str) -> dict[str, Any]:
        document = json.loads(self.admin(f"/stats?format=json&filter={pattern}"))
        return {s["name"]: s["value"] for s in document["stats"] if "name" in s}

    def rejections(self) -> dict[str, int]:
        """Every update_rejected and update_failure counter of the xDS files (all 0 in a
        healthy run)."""
        stats = self.stats(r"\.update_(rejected|failure)$")
        return {k: v for k, v in stats.items() if v}

    def clusters(self) -> set[str]:
        document = json.loads(self.admin("/clusters?format=json"))
        return {c["name"] for c in document.get("cluster_statuses", [])}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            leaks.disown(self.process.pid)


class DaemonProcess:
    """`controlplane run` as a real child process."""

    def __init__(self, folder: Path, args: list[str], config: Path | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        self.log = folder / "daemon.log"
        settings = ["--config", str(config)] if config is not None else []
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "controlplane", *settings, "run", *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        leaks.own(self.process.pid)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    found.append(event)
        return found

    def stop(self) -> int:
        _stop(self.process)
        leaks.disown(self.process.pid)
        return int(self.process.returncode)


class Load:
    """Requests to some hosts through Envoy in a loop, counting every status."""

    def __init__(self, port: int, hosts: list[str], ok: frozenset[int] = frozenset({200})) -> None:
        self.port = port
        self.hosts = hosts
        self.ok = ok
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self._stop.is_set():
            for host in self.hosts:
                try:
                    connection.request("GET", "/load", headers={"Host": host})
                    response = connection.getresponse()
                    response.read()
                    self.statuses[(host, response.status)] += 1
                    if response.status not in self.ok:
                        self.failures.append(f"{host}: HTTP {response.status}")
                except (OSError, http.client.HTTPException) as exc:
                    self.failures.append(f"{host}: {exc!r}")
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.close()

    def total(self) -> int:
        return sum(self.statuses.values())


SHARED = ("--no-exclusive-upstreams",)
"""The flag for tests whose sites share one upstream (not the default)."""


class Node:
    """The whole topology on this machine: upstreams on sockets, the daemon on a sites
    folder, and Envoy on the bootstrap; what a user runs, as local processes."""

    def __init__(self, folder: Path, kind: str, extra_args: tuple[str, ...] = (),
                 tell_admin: bool = True, config: Path | None = None,
                 shared_upstreams: bool = False, daemon_prefix: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.daemon_prefix = daemon_prefix
        """Run the daemon through this (e.g. `setpriv` to drop root's file capabilities)."""
        self.sites = folder / "sites"
        self.out = folder / "out"
        self.port = free_port()
        self.sites.mkdir(parents=True, exist_ok=True)
        self.upstreams = Upstreams(folder / "sockets", kind)
        self.config: Path | None = config
        """A settings file that the daemon and the bootstrap both read (a test may set it
        later, for the daemon alone)."""
        self.envoy = Envoy(folder / "envoy", self.out, config=config)
        self.extra_args = (*extra_args, *SHARED) if shared_upstreams else extra_args
        """`shared_upstreams`: the test's sites share one upstream, which sites may do only
        with `exclusive_upstreams: false` (the default keeps each upstream to one site)."""
        self.tell_admin = tell_admin
        self.daemon: DaemonProcess | None = None

    def start(self) -> None:
        self.start_daemon()
        wait_for(lambda: (self.out / "lds.json").exists(), 10, "the first pass's files")
        self.envoy.launch()

    def start_daemon(self) -> None:
        self.daemon = DaemonProcess(self.folder, [
            str(self.sites), "--out", str(self.out), "--listen", f"127.0.0.1:{self.port}",
            *(["--admin-socket", str(self.envoy.admin_socket)] if self.tell_admin else []),
            *self.extra_args], config=self.config, prefix=self.daemon_prefix)

    def site(self, name: str, domains: list[str], socket_path: Path, extra: str = "") -> str:
        return (f"domains: {json.dumps(domains)}\nupstream:\n  socket: {socket_path}\n{extra}")

    def put(self, name: str, text: str) -> None:
        """Save a site file the safe way: write a dotfile, rename it into place."""
        temp = self.sites / f".{name}.yaml.partial"
        temp.write_text(text)
        os.replace(temp, self.sites / f"{name}.yaml")

    def serves(self, host: str, body: str, path: str = "/") -> bool:
        """The site answers 200 with `body` (trailing newline ignored)."""
        status, text = get(self.port, host, path)
        return (status, text.rstrip("\n")) == (200, body)

    def status_code(self, host: str, path: str = "/") -> int:
        return get(self.port, host, path)[0]

    def status(self) -> dict[str, Any]:
        where = ["--out", str(self.out)]
        if "--state" in self.extra_args:
            where += ["--state", self.extra_args[self.extra_args.index("--state") + 1]]
        out = subprocess.run([sys.executable, "-m", "controlplane", "status", "--json", *where],
                             capture_output=True, text=True)
        # status exits non-zero while a site is not served as written; the JSON is there
        document: dict[str, Any] = json.loads(out.stdout) if out.stdout.strip() else {}
        return document

    def close(self) -> None:
        try:
            if self.daemon is not None:
                self.daemon.stop()
        finally:
            try:
                self.envoy.stop()
            finally:
                self.upstreams.close()


@contextlib.contextmanager
def temporary_node(prefix: str, settings: str | None = None, **options: Any) -> Iterator[Node]:
    """A Node in a short temp folder of its own (for a module's fixture); `settings` is the
    text of a settings file that the daemon and the bootstrap both read. On exit every
    process it started is stopped and the folder removed, also on failure."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    config = None
    if settings is not None:
        config = folder / "controlplane.yaml"
        config.write_text(settings)
    node = Node(folder, options.pop("kind", upstream_kinds()[0]), config=config, **options)
    try:
        yield node
    finally:
        node.close()
        shutil.rmtree(folder, ignore_errors=True)
