"""Settings: the defaults are pinned, so changing one is a visible decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.errors import SettingsError
from controlplane.settings import Listen, Settings, from_mapping


def test_defaults_are_pinned() -> None:
    """The documented defaults."""
    s = Settings()
    assert (str(s.listen), s.admin_socket, s.verify_with_envoy) == ("0.0.0.0:8080", None, True)
    assert s.socket_dirs == tuple(Path(p) for p in ("/dev/shm", "/run", "/var/run", "/tmp"))
    assert s.max_connections == 50_000
    assert (str(s.listen_tls), s.https_redirect_port, s.max_certificates) == ("0.0.0.0:8443",
                                                                             None, 40)
    assert s.log_dirs == (Path("/var/log"), Path("/tmp"))
    assert (s.max_file_bytes, s.stat_prefix, s.route_config_name) == (1 << 20, "ingress_http",
                                                                      "routes")
    assert (s.debounce_quiet_s, s.debounce_max_s, s.resync_s) == (0.02, 0.5, 30.0)
    assert (s.confirm_timeout_s, s.unconfirmed_gap_s, s.retry_s) == (5.0, 0.25, 2.0)
    assert s.state == Path("out/.controlplane")


def test_settings_file_keys_apply_and_unknown_keys_fail() -> None:
    """A settings file sets the same values as flags; a typo is an error."""
    s = from_mapping({"listen": "[::]:80", "socket_dirs": ["/srv/sockets"], "resync_s": 5})
    assert (s.listen, s.socket_dirs, s.resync_s) == (Listen(host="::", port=80),
                                                     (Path("/srv/sockets"),), 5.0)
    with pytest.raises(SettingsError, match="unknown setting 'listne'; did you mean 'listen'"):
        from_mapping({"listne": "1.2.3.4:80"})


@pytest.mark.parametrize("text", ["8080", "localhost:8080", "1.2.3.4:0", "1.2.3.4:x"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    """--listen takes an IP host and a port 1-65535."""
    with pytest.raises(SettingsError):
        Listen.parse(text)


def test_example_settings_file_is_valid() -> None:
    """config/controlplane.yaml uses only known keys with valid values."""
    import yaml

    path = Path(__file__).resolve().parent.parent / "config" / "controlplane.yaml"
    settings = from_mapping(yaml.safe_load(path.read_text()))
    assert settings.admin_socket == Path("/run/envoy/admin.sock")
