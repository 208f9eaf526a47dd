"""The places of the node a site file may make Envoy use, in plain data: what a use of a
path is (`Use`) and the verdict on it, and the sockets, folders, ports and addresses
that are never a site's (container runtimes, kubelet, the cloud metadata service). The
judging, on resolved paths, is `intake/paths`'s.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

STANDARD_STREAMS = ("/dev/stdout", "/dev/stderr")


CONTROL_SOCKET_NAMES = frozenset({
    "docker.sock", "containerd.sock", "containerd.sock.ttrpc", "podman.sock", "crio.sock",
    "cri-dockerd.sock", "dockershim.sock", "kubelet.sock", "snapd.socket",
    "snapd-snap.socket", "system_bus_socket", "systemd-journal-socket", "buildkitd.sock",
    "cilium.sock", "tailscaled.sock",
})
"""Socket file names of container runtimes, the kubelet, snapd and D-Bus, wherever they
lie: an upstream on one would hand the node to anyone who can reach the site."""


CONTROL_SOCKET_PATHS = (
    "/run/docker.sock", "/var/run/docker.sock", "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock", "/run/crio/crio.sock", "/run/podman/podman.sock",
    "/run/cri-dockerd.sock", "/var/lib/kubelet/pod-resources/kubelet.sock",
    "/var/lib/kubelet/device-plugins/kubelet.sock", "/run/systemd/private",
    "/run/systemd/notify", "/run/systemd/journal/socket", "/run/systemd/journal/stdout",
    "/run/systemd/journal/dev-log", "/run/systemd/journal/syslog", "/dev/log",
    "/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket", "/run/snapd.socket",
    "/run/udev/control",
)
"""Well-known control sockets: refused by resolved path, and by identity where they exist
(so a hard link or a bind mount of one is refused too)."""


CONTROL_SOCKET_FOLDERS = (
    "/run/systemd", "/run/dbus", "/run/containerd", "/run/docker", "/run/crio", "/run/podman",
    "/run/k3s", "/run/containers", "/run/libvirt", "/run/udev", "/run/user", "/var/lib/kubelet",
    "/run/buildkit", "/run/cilium", "/run/tailscale", "/run/spire", "/run/secrets", "/run/cups",
    "/run/lxd", "/run/incus", "/run/k0s", "/run/rke2", "/run/redis",
)
"""Folders that hold only control sockets (of the system, the runtimes and each logged-in
user's session: D-Bus, systemd, podman, agents; BuildKit, Cilium's agent, Tailscale's
local API, SPIRE and Istio's workload identity, CUPS, LXD, Redis). Nothing under them
may be an upstream."""


CONTROL_PORTS = {
    2375: "Docker's API", 2376: "Docker's API over TLS", 2379: "etcd", 2380: "etcd's peers",
    4194: "cAdvisor", 6443: "the Kubernetes API server", 9345: "the k3s/rke2 supervisor",
    10010: "containerd's streaming server", 10248: "the kubelet's health port",
    10249: "kube-proxy's metrics", 10250: "the kubelet's API", 10255: "the kubelet's"
    " read-only API", 10256: "kube-proxy's health port", 10257: "the controller manager",
    10259: "the scheduler",
}
"""Well-known ports of the node's control plane: a TCP upstream on one of them, at any
address, would publish that service on a site's domain (on a node's host network, or
from the pod network, they answer)."""


METADATA_ADDRESSES = frozenset({"fd00:ec2::254", "100.100.100.200", "192.0.0.192"})
"""Cloud metadata services outside the link-local block: AWS's IPv6 endpoint, Alibaba
Cloud's, Oracle Cloud's (169.254.169.254 is refused as link-local)."""


KERNEL_FOLDERS = ("/proc", "/sys")


PROCESS_LINKS = ("/proc", "/dev/fd")
"""Spellings whose meaning depends on the process that opens them (`/proc/self/cwd`,
`/dev/fd/3`): the daemon would resolve its own, Envoy reaches its own."""


Kind = Literal["socket", "read", "write", "address", "page", "listen"]
"""`page`: an error page the daemon reads and Envoy serves to anyone; `listen`: the
address a TCP site's own listener binds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Use:
    """One path a site makes Envoy use: the field the user wrote it in, and how."""

    field: str
    kind: Kind
    path: str
    line: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What one use of a path comes to: a reason to refuse it, or a warning, or neither."""

    problem: str | None = None
    warning: str | None = None


def address_verdict(address: str, own_ports: dict[int, str]) -> Verdict:
    """A TCP upstream `HOST:PORT` (an IP host): not link-local (cloud metadata at
    169.254.169.254), unspecified or multicast, nor one of our own loopback ports
    (`own_ports`), nor a port of the node's control plane."""
    host, _, port = address.rpartition(":")
    ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    if str(ip) in METADATA_ADDRESSES:
        return Verdict(problem=f"{address!r} is a cloud metadata service (it hands out"
                       " the node's credentials); a site may not expose it")
    if ip.is_link_local:
        return Verdict(problem=f"{address!r} is link-local (cloud metadata services"
                       " answer at 169.254.169.254); a site may not expose it")
    if ip.is_unspecified or ip.is_multicast:
        return Verdict(problem=f"{address!r} is not one host's address")
    what = own_ports.get(int(port)) if ip.is_loopback else None
    if what is not None:
        return Verdict(problem=f"{address!r} is {what}; a site may not route to it")
    control = CONTROL_PORTS.get(int(port))
    if control is not None:
        return Verdict(problem=f"{address!r}: port {port} is {control}'s; a site may not"
                       " route to the node's control plane")
    return Verdict()


def listen_verdict(address: str, own_ports: dict[int, str], min_port: int) -> Verdict:
    """A TCP site's listen address: never a port of Envoy's own listeners or the daemon's
    (at any address: a bind there takes the port from them), nor a port of the node's
    control plane, nor below `tcp_min_port` (`min_port`)."""
    port = int(address.rpartition(":")[2])
    what = own_ports.get(port) or CONTROL_PORTS.get(port)
    if what is not None:
        return Verdict(problem=f"port {port} is {what}; a TCP site may not listen there")
    if port < min_port:
        return Verdict(problem=f"port {port} is below {min_port}; ports below it need the"
                       " setting `tcp_min_port`")
    return Verdict()


def under(path: str, folders: Iterable[str]) -> bool:
    """`path` is one of `folders` or inside one (all resolved, no trailing slash)."""
    folders = tuple(folders)
    return path in folders or path.startswith(tuple(f.rstrip("/") + "/" for f in folders))


def kind_of_mode(mode: int) -> str:
    """What a file of this `st_mode` is, in words ("FIFO", "socket"...)."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "special file"
