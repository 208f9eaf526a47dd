"""Settings: the defaults are pinned, so changing one is a visible decision; every source
(flags, CONTROLPLANE_* environment, the settings file) is validated the same way, and
each problem names where it was written."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from controlplane import configuring
from controlplane.configuring import from_mapping
from controlplane.errors import SettingsError
from controlplane.settings import Settings
from controlplane.values import Listen

REPO = Path(__file__).resolve().parent.parent


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
    assert (s.log_level, s.log_format) == ("info", "auto")
    assert s.state == Path("out/.controlplane")
    assert (s.admin_max_bytes, s.retry_max_s, s.write_close_wait_s) == (4 << 20, 30.0, 5.0)


def test_edge_defaults_are_the_edge_proxy_guides() -> None:
    """Envoy's "Configuring Envoy as an edge proxy" values, where the guide gives one."""
    s = Settings()
    assert (s.buffer_limit_bytes, s.max_heap_bytes, s.listener_max_connections) == (
        32 * 1024, 2 * 1024**3, 10_000)
    assert (s.request_headers_timeout_s, s.request_timeout_s, s.stream_idle_timeout_s,
            s.idle_timeout_s) == (10.0, 300.0, 300.0, 3600.0)
    assert (s.http2_max_concurrent_streams, s.http2_initial_stream_window_bytes,
            s.http2_initial_connection_window_bytes) == (100, 64 * 1024, 1024 * 1024)
    assert (s.headers_with_underscores, s.escaped_slashes) == ("reject_request",
                                                              "unescape_and_redirect")


def test_edge_choices_are_checked() -> None:
    """A choice setting takes one of its documented values, nothing else."""
    assert from_mapping({"escaped_slashes": "reject_request"}).escaped_slashes == (
        "reject_request")
    with pytest.raises(SettingsError, match=r"escaped_slashes: .*\(got 'REJECT'\)"):
        from_mapping({"escaped_slashes": "REJECT"})


def test_settings_file_keys_apply_and_unknown_keys_fail() -> None:
    """A settings file sets the same values as flags; a typo is an error with a hint."""
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
    settings = configuring.load(REPO / "config" / "controlplane.yaml", {}, {})
    assert settings.admin_socket == Path("/run/envoy/admin.sock")


@pytest.mark.parametrize(("value", "expected"), [
    ("/dev/shm", ("/dev/shm",)),
    ("/srv/a:/srv/b", ("/srv/a", "/srv/b")),
    (["/srv/a"], ("/srv/a",)),
    ("", ()),
])
def test_a_string_where_a_list_is_expected_is_whole_folders(value: object,
                                                           expected: tuple[str, ...]) -> None:
    """`socket_dirs: /dev/shm` is one folder (PATH-style `:` separates several), never
    one-letter paths."""
    assert from_mapping({"socket_dirs": value}).socket_dirs == tuple(Path(p) for p in expected)


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("resync_s", -1, "greater than 0"),
    ("confirm_timeout_s", 0, "greater than 0"),
    ("debounce_quiet_s", -0.5, "greater than or equal to 0"),
    ("max_certificates", 0, "greater than or equal to 1"),
    ("max_file_bytes", 1.5, "integer"),
    ("https_redirect_port", 70000, "less than or equal to 65535"),
    ("listen", "127.0.0.1:0", "port must be 1-65535"),
    ("metrics", 9102, "write HOST:PORT as a string"),
    ("socket_dirs", ["sockets"], "must be absolute"),
    ("verify_with_envoy", "maybe", "boolean"),
    ("stat_prefix", "a b", "pattern"),
    ("log_level", "loud", "'debug', 'info', 'warning' or 'error'"),
])
def test_types_and_ranges_are_validated(key: str, value: object, reason: str) -> None:
    """A value of the wrong type or out of range is refused, naming the key and why."""
    with pytest.raises(SettingsError, match=f"settings: {key}: .*{reason}"):
        from_mapping({key: value})


def test_file_problems_name_the_line_and_all_come_at_once(tmp_path: Path) -> None:
    """Every problem of a settings file at once, each as FILE:LINE: key: reason."""
    path = tmp_path / "controlplane.yaml"
    path.write_text("listen: 127.0.0.1:8080\nresync_s: -3\nmax_certificates: 0\nlisnte: 1\n")
    with pytest.raises(SettingsError) as caught:
        configuring.load(path, {}, {})
    assert str(caught.value).splitlines() == [
        f"{path}:2: resync_s: Input should be greater than 0 (got -3)",
        f"{path}:3: max_certificates: Input should be greater than or equal to 1 (got 0)",
        f"{path}:4: lisnte: unknown setting 'lisnte'; did you mean 'listen'?",
    ]


@pytest.mark.parametrize(("text", "reason"), [
    ("listen: [\n", ":2: not valid YAML"),
    ("- listen\n", "a settings file is a mapping of keys"),
    ("resync_s: 1\nresync_s: 2\n", ":2: resync_s: set twice (first on line 1); keep one"),
])
def test_malformed_settings_files_are_refused(tmp_path: Path, text: str, reason: str) -> None:
    """Broken YAML, a list, a key set twice: each refused with where and why."""
    path = tmp_path / "controlplane.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=re.escape(reason)):
        configuring.load(path, {}, {})


def test_precedence_is_flags_then_environment_then_file(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """flags > CONTROLPLANE_* environment > settings file > defaults, key by key."""
    path = tmp_path / "controlplane.yaml"
    path.write_text("resync_s: 5\nretry_s: 5\nmax_certificates: 5\n")
    monkeypatch.setenv("CONTROLPLANE_RESYNC_S", "6")
    monkeypatch.setenv("CONTROLPLANE_RETRY_S", "6")
    s = configuring.load(path, {"resync_s": "7"}, {})
    assert (s.resync_s, s.retry_s, s.max_certificates, s.confirm_timeout_s) == (7, 6, 5, 5.0)


def test_environment_values_are_validated_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad environment value names its variable; lists come as JSON or PATH-style."""
    monkeypatch.setenv("CONTROLPLANE_SOCKET_DIRS", '["/srv/a", "/srv/b"]')
    monkeypatch.setenv("CONTROLPLANE_LOG_DIRS", "/srv/logs")
    monkeypatch.setenv("CONTROLPLANE_METRICS", "127.0.0.1:9102")
    s = configuring.load(None, {}, {})
    assert (s.socket_dirs, s.log_dirs) == ((Path("/srv/a"), Path("/srv/b")), (Path("/srv/logs"),))
    assert s.metrics == Listen(host="127.0.0.1", port=9102)
    monkeypatch.setenv("CONTROLPLANE_MAX_CERTIFICATES", "-2")
    expected = r"^\$CONTROLPLANE_MAX_CERTIFICATES: .* 1 \(got '-2'\)$"
    with pytest.raises(SettingsError, match=expected):
        configuring.load(None, {}, {})


def test_a_misspelt_environment_variable_gets_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTROLPLANE_RESYNC is not a setting: a warning names the one meant."""
    monkeypatch.setenv("CONTROLPLANE_RESYNC", "5")
    hints: list[str] = []
    configuring.load(None, {}, {}, hints.append)
    assert hints == ["$CONTROLPLANE_RESYNC is not a setting; did you mean $CONTROLPLANE_RESYNC_S?"]


def test_flag_problems_name_the_flag() -> None:
    """A bad flag value is reported under the flag's own name."""
    with pytest.raises(SettingsError, match=r"^--out: "):
        configuring.load(None, {"out_dir": 5}, {"out_dir": "--out"})


def test_settings_are_frozen_and_replace_validates() -> None:
    """Everything below the CLI gets a frozen object; `replace` validates like the rest."""
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.resync_s = 1.0  # type: ignore[misc]
    assert s.replace(resync_s=3).resync_s == 3.0 and s.resync_s == 30.0
    with pytest.raises(pydantic.ValidationError):
        s.replace(max_certificates=0)
