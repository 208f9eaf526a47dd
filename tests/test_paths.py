"""Paths judged by what they resolve to (`controlplane.intake.paths`), on real files: bound
AF_UNIX sockets, symlinks of files and folders, hard links, FIFOs, devices."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.intake.paths import Fence
from controlplane.intake.reading import read_bounded
from controlplane.site.places import Use


@pytest.fixture
def listening(short_tmp: Path) -> Iterator[list[socket.socket]]:
    """Real listening Unix sockets made by a test; closed at the end."""
    made: list[socket.socket] = []
    try:
        yield made
    finally:
        for server in made:
            server.close()


def _bind(made: list[socket.socket], path: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    made.append(server)
    return path


def _fence(root: Path, admin: Path | None = None) -> Fence:
    return Fence.now(socket_dirs=[root / "sockets"], log_dirs=[root / "logs"],
                     admin_socket=admin, private=[(root / "sites", "sites folder")])


def _socket(fence: Fence, path: Path | str) -> str | None:
    return fence.judge(Use(field="upstream.socket", kind="socket", path=str(path))).problem


def _log(fence: Fence, path: Path | str) -> str | None:
    return fence.judge(Use(field="access_log.path", kind="write", path=str(path))).problem


@pytest.fixture
def root(short_tmp: Path) -> Path:
    for folder in ("sockets", "logs", "sites"):
        (short_tmp / folder).mkdir()
    return short_tmp


def test_a_symlink_to_the_admin_socket_is_refused(root: Path,
                                                  listening: list[socket.socket]) -> None:
    """A socket in an allowed folder that links to Envoy's admin socket is refused."""
    admin = _bind(listening, root / "admin.sock")
    os.symlink(admin, root / "sockets" / "blog.sock")
    problem = _socket(_fence(root, admin), root / "sockets" / "blog.sock")
    assert problem is not None and "is Envoy's admin socket" in problem
    assert f"resolves to '{admin}'" in problem


def test_a_hard_link_to_the_admin_socket_is_refused_by_identity(
        root: Path, listening: list[socket.socket]) -> None:
    """Same device and inode as the admin socket, under another name: refused."""
    admin = _bind(listening, root / "sockets" / "admin.sock")
    os.link(admin, root / "sockets" / "blog.sock")
    problem = _socket(_fence(root, admin), root / "sockets" / "blog.sock")
    assert problem is not None and f"the same file as Envoy's admin socket {admin}" in problem


def test_a_folder_symlinked_out_of_the_socket_folders_is_refused(root: Path) -> None:
    """A symlinked folder on the way counts: the resolved path must stay inside."""
    os.symlink("/etc", root / "sockets" / "etc")
    problem = _socket(_fence(root), root / "sockets" / "etc" / "x.sock")
    assert problem is not None and "outside the allowed socket folders" in problem
    assert "resolves to '/etc/x.sock'" in problem


@pytest.mark.parametrize("target", ["/run/systemd/private", "/run/dbus/system_bus_socket",
                                    "/var/run/docker.sock", "/run/user/1000/bus",
                                    "/run/containerd/containerd.sock.ttrpc"])
def test_links_to_control_sockets_are_refused_wherever_they_lie(root: Path, target: str) -> None:
    """systemd, D-Bus, Docker, a user session, containerd: refused through a symlink."""
    os.symlink(target, root / "sockets" / "up.sock")
    fence = Fence.now(socket_dirs=["/"], log_dirs=[], admin_socket=None, private=[])
    problem = _socket(fence, root / "sockets" / "up.sock")
    assert problem is not None and "control socket" in problem, problem


def test_plain_missing_and_aliased_sockets_are_allowed(root: Path,
                                                       listening: list[socket.socket]) -> None:
    """A real socket, one not there yet, and `/var/run` read as `/run`, all pass."""
    fence = _fence(root)
    assert _socket(fence, _bind(listening, root / "sockets" / "a.sock")) is None
    assert _socket(fence, root / "sockets" / "later.sock") is None
    if os.path.realpath("/var/run") == "/run":
        aliased = Fence.now(socket_dirs=["/var/run"], log_dirs=[], admin_socket=None, private=[])
        assert _socket(aliased, "/run/nginx-site.sock") is None


def test_a_world_writable_socket_folder_is_allowed_with_a_warning(root: Path) -> None:
    """Sticky /tmp-like folders pass once resolved, and the verdict says why to avoid them."""
    shared = root / "sockets" / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    verdict = _fence(root).judge(Use(field="upstream.socket", kind="socket",
                                     path=str(shared / "a.sock")))
    assert verdict.problem is None
    assert verdict.warning is not None and "writable by every user" in verdict.warning


def test_an_access_log_symlink_is_refused_with_its_target(root: Path) -> None:
    """A log that is a symlink (here into the sites folder) is refused, target named."""
    os.symlink(root / "sites" / "blog.yaml", root / "logs" / "blog.log")
    problem = _log(_fence(root), root / "logs" / "blog.log")
    assert problem is not None and "is a symlink to" in problem
    assert str(root / "sites" / "blog.yaml") in problem


def test_an_access_log_through_a_symlinked_folder_into_the_sites_folder_is_refused(
        root: Path) -> None:
    """A folder link from `log_dirs` into the sites folder: the resolved path is judged."""
    os.symlink(root / "sites", root / "logs" / "sites")
    fence = Fence.now(socket_dirs=[], log_dirs=[root], admin_socket=None,
                      private=[(root / "sites", "sites folder")])
    problem = _log(fence, root / "logs" / "sites" / "new.log")
    assert problem is not None and "inside the sites folder" in problem
    assert f"resolves to '{root}/sites/new.log'" in problem


def test_access_logs_on_fifos_devices_hard_links_or_missing_folders_are_refused(
        root: Path) -> None:
    """Only a regular file with one link, or a new file in an existing folder."""
    os.mkfifo(root / "logs" / "fifo.log")
    (root / "logs" / "one.log").write_text("")
    os.link(root / "logs" / "one.log", root / "logs" / "two.log")
    fence = _fence(root)
    assert "a FIFO" in str(_log(fence, root / "logs" / "fifo.log"))
    assert "2 hard links" in str(_log(fence, root / "logs" / "two.log"))
    assert "does not exist" in str(_log(fence, root / "logs" / "no" / "x.log"))
    devices = Fence.now(socket_dirs=[], log_dirs=["/dev"], admin_socket=None, private=[])
    assert "character device" in str(_log(devices, "/dev/null"))


def test_regular_new_and_standard_stream_logs_are_allowed(root: Path) -> None:
    """A regular log, one Envoy will create, and /dev/stdout as Envoy special-cases it
    (any other spelling of a standard stream is a link like any other)."""
    (root / "logs" / "a.log").write_text("")
    fence = _fence(root)
    assert [_log(fence, root / "logs" / n) for n in ("a.log", "new.log")] == [None, None]
    assert _log(fence, "/dev/stdout") is None and _log(fence, "/dev/stderr") is None
    assert "is a symlink" in str(_log(fence, "/dev/fd/1"))  # only the names Envoy special-cases


def test_certificate_files_must_be_regular_and_not_kernel_files(root: Path) -> None:
    """A FIFO or a /proc file as a certificate is refused without opening it."""
    os.mkfifo(root / "cert.pem")
    fence = _fence(root)
    fifo = fence.judge(Use(field="tls.cert", kind="read", path=str(root / "cert.pem")))
    kernel = fence.judge(Use(field="tls.key", kind="read", path="/proc/self/environ"))
    assert "is a FIFO, not a regular file" in str(fifo.problem)
    assert "kernel file" in str(kernel.problem)


def test_bounded_reads_never_block_on_a_fifo_and_cap_the_size(root: Path) -> None:
    """read_bounded refuses a FIFO at once (no writer needed) and a file over the limit."""
    os.mkfifo(root / "fifo")
    (root / "big").write_bytes(b"x" * 2000)
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            read_bounded(str(root / "fifo"), 1000)
        except OSError as exc:
            done.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():  # unblock the reader so the test can clean up
        with open(root / "fifo", "wb"):
            pass
    assert done and "not a regular file (a FIFO)" in str(done[0])
    assert time.monotonic() - started < 5
    with pytest.raises(OSError, match="the limit is 1000"):
        read_bounded(str(root / "big"), 1000)
    assert read_bounded(str(root / "big"), 2000) == b"x" * 2000


def test_check_takes_run_s_admin_socket_and_folders(root: Path, listening: list[socket.socket],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`check --admin-socket --out` refuses what `run` refuses: a link to the admin
    socket, and an access log inside the out folder."""
    from controlplane.cli import main

    admin = _bind(listening, root / "admin.sock")
    os.symlink(admin, root / "sockets" / "evil.sock")
    (root / "out").mkdir()
    (root / "sites" / "evil.yaml").write_text(
        f"domains: [evil.example]\nupstream: {{socket: {root}/sockets/evil.sock}}\n")
    (root / "sites" / "logs.yaml").write_text(
        f"domains: [logs.example]\nupstream: {{socket: {root}/sockets/l.sock}}\n"
        f"access_log: {{path: {root}/out/x.log}}\n")
    args = ["check", "--no-envoy", "--out", str(root / "out"), str(root / "sites")]
    assert main(args) == 1
    assert "evil.yaml" not in capsys.readouterr().err
    assert main([*args[:2], "--admin-socket", str(admin), *args[2:]]) == 1
    err = capsys.readouterr().err
    assert f"evil.yaml:2: upstream.socket: '{root}/sockets/evil.sock' (resolves to" \
           f" '{admin}') is Envoy's admin socket" in err
    assert f"logs.yaml:3: access_log.path: '{root}/out/x.log' is inside the out folder" in err


@pytest.mark.parametrize(("address", "expected"), [
    ("169.254.169.254:80", "is link-local"), ("[fe80::1]:80", "is link-local"),
    ("0.0.0.0:80", "not one host's address"), ("127.0.0.1:8080", "Envoy's own HTTP listener"),
    ("127.0.0.1:9102", "the daemon's metrics port"), ("127.0.0.1:8000", None),
    ("10.0.0.5:8080", None)])
def test_tcp_upstreams_may_not_reach_metadata_or_our_own_ports(address: str,
                                                               expected: str | None) -> None:
    """Cloud metadata, unspecified hosts and our own loopback ports are refused."""
    fence = Fence.now(socket_dirs=[], log_dirs=[], admin_socket=None, private=[],
                      own_ports={8080: "Envoy's own HTTP listener",
                                 9102: "the daemon's metrics port"})
    problem = fence.judge(Use(field="upstream.address", kind="address", path=address)).problem
    assert (problem is None) if expected is None else (expected in str(problem)), problem


def test_abstract_and_relative_sockets_are_refused(root: Path) -> None:
    """`@name` (abstract: any process of the network namespace) never passes the fence."""
    fence = _fence(root)
    assert "abstract socket" in str(_socket(fence, "@/containerd-shim/x.sock"))


def test_any_pipe_a_rendered_cluster_names_is_judged_like_an_endpoint() -> None:
    """A Unix socket anywhere in a cluster (as an `envoy:` override could put one) is a
    socket use too, beyond the endpoints the site lists."""
    import dataclasses

    from controlplane.intake import claims
    from controlplane.intake.checking import check_content
    from controlplane.settings import Settings

    checked = check_content("a", "sites/a.yaml",
                            b"domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n", Settings())
    assert checked.resources is not None
    name, cluster = checked.resources.clusters[0]
    hidden = {**cluster, "x": [{"y": {"pipe": {"path": "/run/docker.sock"}}}]}
    resources = dataclasses.replace(checked.resources, clusters=((name, hidden),))
    found = claims.sockets(resources, {"/tmp/a.sock"})
    assert [(u.field, u.kind, u.path) for u in found] == [
        ("envoy.cluster", "socket", "/run/docker.sock")]


def test_a_pass_without_the_sites_folder_still_judges_the_paths_that_serve(
        root: Path, listening: list[socket.socket]) -> None:
    """The sites folder is gone (what serves stays), then a link to the admin socket is
    planted under a serving site's socket: the next pass takes the site out."""
    import shutil
    import threading

    from controlplane.daemon.reconciling import Reconciler
    from controlplane.settings import Settings

    admin = _bind(listening, root / "admin.sock")
    (root / "sites" / "a.yaml").write_text(
        f"domains: [a.example]\nupstream: {{socket: {root}/sockets/a.sock}}\n")
    settings = Settings(sites_dir=root / "sites", out_dir=root / "out", admin_socket=admin,
                        verify_with_envoy=False, unconfirmed_gap_s=0)
    (root / "out").mkdir()
    reconciler = Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())
    assert reconciler.run_pass().written == ["cds", "rds", "lds"]
    shutil.rmtree(root / "sites")
    assert reconciler.run_pass().removed == []
    os.symlink(admin, root / "sockets" / "a.sock")
    outcome = reconciler.run_pass()
    assert outcome.removed == ["a"]
    assert "is Envoy's admin socket" in str(outcome.problems["a"][0])


def test_a_cached_site_file_gets_its_paths_judged_again_at_every_pass(
        root: Path, listening: list[socket.socket]) -> None:
    """The site file is unchanged (its checks come from the cache), yet a link planted
    under its socket after the first pass takes it out at the next one (a resync)."""
    import threading

    from controlplane.daemon.reconciling import Reconciler
    from controlplane.settings import Settings

    admin = _bind(listening, root / "admin.sock")
    (root / "sites" / "a.yaml").write_text(
        f"domains: [a.example]\nupstream: {{socket: {root}/sockets/a.sock}}\n")
    (root / "out").mkdir()
    settings = Settings(sites_dir=root / "sites", out_dir=root / "out", admin_socket=admin,
                        verify_with_envoy=False, unconfirmed_gap_s=0)
    reconciler = Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())
    assert reconciler.run_pass().problems == {}
    assert set(reconciler.socket_folders) == {f"{root}/sockets"}
    os.symlink(admin, root / "sockets" / "a.sock")
    outcome = reconciler.run_pass()
    assert outcome.removed == ["a"] and "is Envoy's admin socket" in str(outcome.problems["a"][0])
    os.unlink(root / "sockets" / "a.sock")
    assert reconciler.run_pass().added == ["a"]


def test_paths_through_proc_are_refused_though_they_resolve_inside(root: Path) -> None:
    """`/proc/self/root/...` and `/proc/self/cwd/...` resolve inside the allowed folders
    for the daemon, but `self` is Envoy when Envoy opens them: refused, socket and log."""
    fence = _fence(root)
    via_root = f"/proc/self/root{root}"
    assert "goes through /proc" in str(_socket(fence, f"{via_root}/sockets/a.sock"))
    assert "goes through /proc" in str(_log(fence, f"{via_root}/logs/a.log"))
    os.chdir(root)
    try:
        assert "goes through /proc" in str(_log(fence, "/proc/self/cwd/logs/b.log"))
    finally:
        os.chdir(Path(__file__).parent.parent)
    assert _socket(fence, root / "sockets" / "a.sock") is None


@pytest.mark.parametrize("path", [
    "/run/buildkit/buildkitd.sock", "/var/run/cilium/cilium.sock",
    "/run/tailscale/tailscaled.sock", "/run/spire/sockets/agent.sock",
    "/var/run/secrets/workload-spiffe-uds/socket", "/run/cups/cups.sock",
])
def test_more_control_sockets_in_run_are_refused(path: str) -> None:
    """BuildKit runs builds as root, Cilium's agent and Tailscale's local API answer HTTP
    on their sockets, SPIRE and Istio hand out workload identities: never an upstream."""
    fence = Fence.now(socket_dirs=["/run", "/var/run", "/tmp"], log_dirs=["/tmp"],
                      admin_socket=None, private=[])
    assert "control socket" in str(_socket(fence, path))


@pytest.mark.parametrize("address", ["[fd00:ec2::254]:80", "100.100.100.200:80",
                                     "192.0.0.192:80", "169.254.169.254:80"])
def test_cloud_metadata_services_are_refused_as_tcp_upstreams(address: str) -> None:
    """Metadata services hand out the node's credentials, in and out of link-local."""
    fence = Fence.now(socket_dirs=["/tmp"], log_dirs=["/tmp"], admin_socket=None, private=[])
    problem = fence.judge(Use(field="upstream.address", kind="address", path=address)).problem
    assert "metadata" in str(problem)


@pytest.mark.parametrize("address", ["127.0.0.1:10250", "10.43.0.1:6443", "[::1]:2375",
                                     "192.168.1.5:10249", "127.0.0.1:2379"])
def test_a_tcp_upstream_on_the_nodes_control_plane_is_refused(address: str) -> None:
    """The kubelet, the API server, etcd, Docker's API and kube-proxy answer on well-known
    ports, on the host network or from pods: no site may publish one."""
    verdict = Fence.now(socket_dirs=(), log_dirs=(), admin_socket=None, private=()).judge(
        Use(field="upstream.address", kind="address", path=address))
    assert verdict.problem is not None and "control plane" in verdict.problem


def test_htpasswd_folders_never_crowd_the_socket_folders_out_of_the_watch(
        tmp_path: Path) -> None:
    """The watch takes only the first few folders: the sockets' come first, whatever the
    names of the folders a site's htpasswd files sit in."""
    import base64
    import hashlib
    import threading

    from controlplane.daemon.reconciling import Reconciler
    from controlplane.settings import Settings

    sites, auth, sockets = tmp_path / "sites", tmp_path / "a-auth", tmp_path / "z-sockets"
    for folder in (sites, auth, sockets):
        folder.mkdir()
    users = auth / "users"
    users.write_text("u:{SHA}" + base64.b64encode(hashlib.sha1(b"p").digest()).decode() + "\n")
    (sites / "s.yaml").write_text(f"domains: [s.example]\nupstream: {{socket: {sockets}/s.sock}}\n"
                                  f"basic_auth: {{htpasswd: {users}}}\n")
    settings = Settings(sites_dir=sites, out_dir=tmp_path / "out", verify_with_envoy=False,
                        socket_dirs=(tmp_path,), unconfirmed_gap_s=0)
    reconciler = Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())
    reconciler.run_pass()
    assert reconciler.socket_folders == [str(sockets), str(auth)]
