"""A real ACME server for the tests: Debian's `pebble`, with `pebble-challtestsrv` as its
DNS server answering every name with 127.0.0.1, and pebble's HTTP-01 validations sent to
the Envoy HTTP port under test. Loopback only; stopped by its own PIDs."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.parts import _stop, free_port, wait_for


def available() -> bool:
    return bool(shutil.which("pebble") and shutil.which("pebble-challtestsrv"))


def _self_signed(cert: Path, key: Path) -> None:
    """pebble's own HTTPS certificate, for 127.0.0.1 (the client trusts it by file)."""
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "pebble")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


class Pebble:
    """pebble and its mock DNS; `http_port` is where it sends HTTP-01 validations."""

    def __init__(self, folder: Path, http_port: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port, self.management = free_port(), free_port()
        self.dns, self.dns_management = free_port(), free_port()
        self.http_port = http_port
        self.ca = folder / "pebble-https.pem"
        _self_signed(self.ca, folder / "pebble-https.key")
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self._processes: list[subprocess.Popen[bytes]] = []
        self.log = folder / "pebble.log"

    def settings(self) -> tuple[str, ...]:
        """The daemon's flags for this server."""
        return ("--acme-directory", self.directory, "--acme-directory-ca", str(self.ca),
                "--acme-agree-terms", "--acme-email", "ops@example.com")

    def start(self) -> None:
        self._start_dns()
        config = self.folder / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(self.ca), "privateKey": str(self.folder / "pebble-https.key"),
            "httpPort": self.http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        environment = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                       "PEBBLE_AUTHZREUSE": "0"}
        with open(self.log, "ab") as log:
            self._processes.append(subprocess.Popen(
                ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=environment))
        wait_for(self._answers, 20, f"pebble's directory ({self.log})")

    def _start_dns(self) -> None:
        with open(self.folder / "challtestsrv.log", "ab") as log:
            self._processes.append(subprocess.Popen(
                ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns}", "-http01", "",
                 "-https01", "", "-tlsalpn01", "",
                 "-management", f"127.0.0.1:{self.dns_management}",
                 "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        wait_for(lambda: self._post_dns("/set-default-ipv4", {"ip": "127.0.0.1"}), 10,
                 "pebble-challtestsrv's management port")

    def _post_dns(self, path: str, body: dict[str, object]) -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{self.dns_management}{path}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bool(answer.status == 200)

    def point(self, host: str, address: str) -> None:
        """Make the mock DNS answer `host` with `address` (validations then go there)."""
        self._post_dns("/add-a", {"host": f"{host}.", "addresses": [address]})

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def _answers(self) -> bool:
        with urllib.request.urlopen(self.directory, timeout=5, context=self._context()) as got:
            return bool(got.status == 200)

    def root(self) -> str:
        """The root that signs pebble's certificates (a new one each start)."""
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, timeout=5, context=self._context()) as answer:
            return str(answer.read().decode())

    def stop(self) -> None:
        for process in reversed(self._processes):
            _stop(process)
        self._processes.clear()
