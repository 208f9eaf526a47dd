"""JSON access logs on the real Envoy: `access_log.format` as a mapping writes one JSON
object a line with the allowed format commands; a command off the allow-list in any
value is refused with its field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.intake.checking import check_content
from controlplane.settings import Settings
from tests.parts import Node, temporary_node, wait_for

pytestmark = pytest.mark.e2e
FORMAT = ("{status: '%RESPONSE_CODE%', method: '%REQ(:METHOD)%', path: '%REQ(:PATH)%',"
          " upstream: {host: '%UPSTREAM_HOST%'}}")


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, Path]]:
    with temporary_node("cp-json-") as running:
        log = running.folder / "logs" / "shop.log"
        log.parent.mkdir()
        running.put("shop", running.site("shop", ["shop.example"], running.upstreams.start(
            "shop"), f"access_log: {{path: {log}, format: {FORMAT}}}\n"))
        running.start()
        wait_for(lambda: running.serves("shop.example", "shop /a", "/a"), 20, "shop.example")
        yield running, log


def test_each_request_is_one_json_object(node: tuple[Node, Path]) -> None:
    """The log holds one JSON object a line, with the values Envoy formatted."""
    running, log = node
    assert running.serves("shop.example", "shop /b?x=1", "/b?x=1")
    # Envoy flushes its file logs on a timer (about 10 s here): wait for the line.
    wait_for(lambda: any('"/b?x=1"' in line for line in log.read_text().splitlines()), 30,
             "the request logged")
    entry = next(json.loads(line) for line in log.read_text().splitlines() if "/b?x=1" in line)
    assert (entry["status"], entry["method"], entry["path"]) == (200, "GET", "/b?x=1")
    assert entry["upstream"]["host"].endswith("shop.sock")


@pytest.mark.parametrize(("value", "field"), [
    ("'%ENVIRONMENT(HOME)%'", "access_log.format.home"),
    ("{inner: '%HOSTNAME%'}", "access_log.format.home.inner"),
])
def test_a_command_off_the_allow_list_is_refused(tmp_path: Path, value: str, field: str) -> None:
    """Formats in JSON values obey the same allow-list as text formats, field by field."""
    text = (f"domains: [a.example]\nupstream: {{socket: /tmp/a.sock}}\n"
            f"access_log: {{path: {tmp_path}/a.log, format: {{home: {value}}}}}\n")
    checked = check_content("a", "a.yaml", text.encode(), Settings(verify_with_envoy=False))
    assert any(p.field == field for p in checked.problems), [str(p) for p in checked.problems]
