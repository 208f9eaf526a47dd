"""Safe reading and parsing of site files: every refusal names the file and the reason."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from controlplane.errors import SiteError
from controlplane.intake import loading


def _parse_problem(content: bytes) -> str:
    with pytest.raises(SiteError) as caught:
        loading.parse(content, "s.yaml")
    return str(caught.value)


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "s.yaml: the file is empty"),
    (b"# only a comment\n", "s.yaml: the file is empty"),
    (b"a: 1\x00\n", "s.yaml: NUL byte at offset 4"),
    (b"domains: [caf\xe9]\n", "s.yaml: not UTF-8 (byte 13)"),
    (b"a: &x [1]\nb: *x\n", "s.yaml:2: b: YAML anchors and aliases are not allowed"),
    (b"a: !!python/object:os.system x\n", "s.yaml:1: a: the tag 'tag:yaml.org,2002:python/"),
    (b"a: 1\na: 2\n", "s.yaml:2: a: duplicate key"),
    (b"a: [1\n", "s.yaml:2: YAML: "),
    (b"a: 1\n---\nb: 2\n", "s.yaml:2: YAML: "),
    (b"? [x]\n: 1\n", "keys must be plain strings"),
    (b"a: 2024-01-01\n", "the tag 'tag:yaml.org,2002:timestamp' is not allowed"),
    (b"base: &b {x: 1}\nsite:\n  <<: *b\n", "not allowed"),
    (b"x: " + b"[" * 40 + b"]" * 40 + b"\n", "s.yaml:1: nested deeper than 32"),
    # Deep enough that PyYAML >= 6.0.4 refuses it in its scanner, before our count:
    (b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "s.yaml:1: nested deeper than 32"),
    (b"x:\n" + b"".join(b"  " * i + b"- \n" for i in range(40)), "nested deeper than 32"),
])
def test_unsafe_or_broken_yaml_is_refused_with_a_reason(content: bytes, expected: str) -> None:
    """Each unsafe or broken document is refused with its file, line and reason."""
    assert expected in _parse_problem(content)


def test_alias_bomb_is_refused_before_it_expands() -> None:
    """A billion-laughs document is refused at its first alias, without expanding."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    assert "anchors and aliases are not allowed" in _parse_problem("\n".join(lines).encode())


def test_plain_document_parses_with_lines() -> None:
    """A plain document parses, and each field path knows its line."""
    document = loading.parse(b"domains: [a.example]\nupstream:\n  socket: /tmp/a.sock\n", "s")
    assert document.data == {"domains": ["a.example"], "upstream": {"socket": "/tmp/a.sock"}}
    assert document.lines[("upstream", "socket")] == 3


@pytest.mark.parametrize(("name", "considered"), [
    ("blog.yaml", True), ("blog.yml", True), (".blog.yaml", False), ("..data", False),
    ("blog.yaml~", False), (".blog.yaml.swp", False), ("blog.yaml.tmp", False),
    ("4913", False), ("blog.json", False), ("README", False),
])
def test_scan_skips_editor_and_tool_files(name: str, considered: bool) -> None:
    """Dotfiles, backups, swap and temp files, vim's probe and non-YAML are not sites."""
    assert loading.is_site_name(name) is considered


def _entry(folder: Path, filename: str) -> loading.Entry:
    (entry,) = [e for e in loading.scan(folder) if e.path.name == filename]
    return entry


def _read_problem(folder: Path, filename: str, max_bytes: int = 1024) -> str:
    with pytest.raises(SiteError) as caught:
        loading.read(_entry(folder, filename), folder, max_bytes)
    return str(caught.value)


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO, a socket or a folder named like a site is refused, never opened to block."""
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock.yaml"))
        for name in ("fifo.yaml", "folder.yaml"):
            assert "not a regular file" in _read_problem(tmp_path, name)
        assert "cannot open" in _read_problem(tmp_path, "sock.yaml")


def test_symlinks_are_followed_only_inside_the_folder(tmp_path: Path) -> None:
    """A ConfigMap-style link into `..data` reads; a link to outside is refused."""
    sites, outside = tmp_path / "sites", tmp_path / "secret.yaml"
    (sites / "..2024").mkdir(parents=True)
    (sites / "..2024" / "blog.yaml").write_text("a: 1\n")
    os.symlink("..2024", sites / "..data")
    os.symlink("..data/blog.yaml", sites / "blog.yaml")
    outside.write_text("secret: 1\n")
    os.symlink(outside, sites / "evil.yaml")
    assert loading.read(_entry(sites, "blog.yaml"), sites, 1024) == b"a: 1\n"
    assert "symlink to outside the sites folder" in _read_problem(sites, "evil.yaml")


def test_size_cap_and_names(tmp_path: Path) -> None:
    """Files over the cap are refused unread; names must be DNS labels."""
    (tmp_path / "big.yaml").write_bytes(b"#" * 2048)
    (tmp_path / "Bad_Name.yaml").write_text("a: 1\n")
    assert "2048 bytes; the limit is 1024" in _read_problem(tmp_path, "big.yaml")
    assert "must be a DNS label" in _read_problem(tmp_path, "Bad_Name.yaml")
