"""Envoy's verdicts kept in the state folder, judged by the real Envoy binary: a restart
with the same judge runs Envoy for nothing; another Envoy binary, or a setting that
shapes what Envoy is given, runs it again; an unusable verdicts file is ignored with
one warning; the one-shot commands keep nothing."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from controlplane.daemon.reconciling import Reconciler
from controlplane.envoy import verdicts
from controlplane.envoy.twinning import Validators
from controlplane.envoy.verdicts import VERDICTS_FILE
from controlplane.envoy.verifying import Verifier, envoy_binary
from controlplane.intake.checking import check_content
from controlplane.render import rendering
from controlplane.render.rendering import SiteResources
from controlplane.settings import Settings
from controlplane.values import Listen
from tests.envoy_rejections import HATCH, MISTAKES, broken, site_text

pytestmark = pytest.mark.e2e
NAMES = ("alpha", "beta", "gamma")


def _settings(tmp: Path, **changes: object) -> Settings:
    settings = Settings(out_dir=tmp / "out", socket_dirs=(), validator="process",
                        listen=Listen(host="127.0.0.1", port=18080),
                        listen_tls=Listen(host="127.0.0.1", port=18443)).replace(**changes)
    settings.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    return settings


def _sites(settings: Settings, tmp: Path) -> tuple[list[SiteResources], dict[str, str]]:
    resources, sources = [], {}
    for name in NAMES:
        source = str(tmp / "sites" / f"{name}.yaml")
        item = check_content(name, source, site_text(name, "").encode(), settings)
        assert item.resources is not None and not item.problems, item.problems
        resources.append(item.resources)
        sources[name] = source
    return resources, sources


def _runs(settings: Settings, tmp: Path) -> int:
    """Envoy runs of a fresh daemon-style Verifier on the three sites (all pass)."""
    verifier = Verifier(settings, verdicts=settings.state / VERDICTS_FILE)
    assert verifier.verify(*_sites(settings, tmp)) == {}
    return verifier.runs


def test_a_restart_with_the_same_judge_runs_envoy_for_nothing(tmp_path: Path) -> None:
    """A second Verifier on the same state folder and settings takes the kept verdicts:
    zero Envoy runs; and it does not rewrite the file, since nothing new passed."""
    settings = _settings(tmp_path)
    assert _runs(settings, tmp_path) == 1
    path = settings.state / VERDICTS_FILE
    written = os.stat(path)
    assert written.st_mode & 0o777 == 0o600
    assert len(json.loads(path.read_bytes())["passed"]) == len(NAMES)
    assert _runs(settings, tmp_path) == 0
    again = os.stat(path)
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_a_setting_that_shapes_the_listeners_runs_envoy_again(tmp_path: Path) -> None:
    """The HTTP port is not in a site's digest (the listener holds it), yet Envoy judges
    the sites inside that listener: a new port runs Envoy again; a new log level does
    not. Going back to the first settings runs it again too (one judge a file)."""
    first = _settings(tmp_path)
    moved = first.replace(listen=Listen(host="127.0.0.1", port=18081))
    assert [r.digest for r in _sites(first, tmp_path)[0]] == [
        r.digest for r in _sites(moved, tmp_path)[0]]
    assert _runs(first, tmp_path) == 1
    assert _runs(first.replace(log_level="debug"), tmp_path) == 0
    assert _runs(moved, tmp_path) == 1
    assert _runs(moved, tmp_path) == 0
    assert _runs(first, tmp_path) == 1


def test_another_envoy_binary_runs_envoy_again(tmp_path: Path) -> None:
    """The same settings, `envoy` a symlink repointed to the same Envoy under another
    path (a hard link, else a copy): another judge, so Envoy runs again."""
    real = envoy_binary(Settings())
    other = tmp_path / "bin" / "envoy-other"
    other.parent.mkdir()
    try:
        os.link(real, other)
    except OSError:
        shutil.copy2(real, other)
    named = tmp_path / "bin" / "envoy"
    named.symlink_to(real)
    settings = _settings(tmp_path, envoy=named)
    assert _runs(settings, tmp_path) == 1
    assert _runs(settings, tmp_path) == 0
    named.unlink()
    named.symlink_to(other)
    assert _runs(settings, tmp_path) == 1
    assert _runs(settings, tmp_path) == 0


def _corrupt(path: Path, valid: bytes) -> None:
    path.write_bytes(valid[: len(valid) // 2])


def _wrong_shape(path: Path, valid: bytes) -> None:
    document = json.loads(valid)
    path.write_text(json.dumps({**document, "passed": {"digest": True}}))


def _not_digests(path: Path, valid: bytes) -> None:
    document = json.loads(valid)
    path.write_text(json.dumps({**document, "passed": ["../../etc/passwd"]}))


def _oversized(path: Path, valid: bytes) -> None:
    path.write_bytes(valid.rstrip() + b" " * verdicts.MAX_BYTES)


def _symlink(path: Path, valid: bytes) -> None:
    """A valid file for this very judge, but reached through a symlink."""
    target = path.parent.parent / "elsewhere.json"
    target.write_bytes(valid)
    path.unlink()
    path.symlink_to(target)


def _fifo(path: Path, valid: bytes) -> None:
    path.unlink()
    os.mkfifo(path, 0o600)


def _nested(path: Path, valid: bytes) -> None:
    path.write_bytes(b"[" * 200_000)


def _foreign(path: Path, valid: bytes) -> None:
    """A valid file for this judge, owned by another user (only root can make one)."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    os.chown(path, 65534, 65534)


@pytest.mark.parametrize(("spoil", "reason"), [
    (_corrupt, "not JSON"), (_wrong_shape, "`passed` is not a list"),
    (_not_digests, "other than digests"), (_oversized, "larger than"),
    (_symlink, "a symlink"), (_fifo, "not a regular file"), (_nested, "not JSON"),
    (_foreign, "owned by uid 65534")])
def test_an_unusable_verdicts_file_is_ignored_with_one_warning(
        tmp_path: Path, spoil: object, reason: str) -> None:
    """Corrupt, of the wrong shape, holding what is not a digest, too large, a symlink
    (never followed, even to a valid file), a FIFO (never waited on), nested past the
    parser's depth, or another user's: Envoy runs again, one warning says so, and a
    regular file of verdicts replaces it."""
    settings = _settings(tmp_path)
    assert _runs(settings, tmp_path) == 1
    path = settings.state / VERDICTS_FILE
    assert callable(spoil)
    spoil(path, path.read_bytes())
    with capture_logs() as logs:
        assert _runs(settings, tmp_path) == 1
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warned] == ["verdicts.ignored"], logs
    assert reason in warned[0]["reason"]
    assert path.is_file() and not path.is_symlink()
    assert _runs(settings, tmp_path) == 0


def test_another_judges_file_is_ignored_without_a_warning(tmp_path: Path) -> None:
    """A file kept for another judge is normal after an upgrade: said at info."""
    settings = _settings(tmp_path)
    assert _runs(settings, tmp_path) == 1
    path = settings.state / VERDICTS_FILE
    path.write_text(json.dumps({**json.loads(path.read_bytes()), "judge": "someone-else"}))
    with capture_logs() as logs:
        assert _runs(settings, tmp_path) == 1
    assert [e["event"] for e in logs] == ["verdicts.other_judge"]


def test_the_one_shot_verifier_keeps_nothing(tmp_path: Path) -> None:
    """`controlplane check`'s Verifier (no verdicts file) writes nothing in the state
    folder, and a second one runs Envoy again."""
    settings = _settings(tmp_path)
    for _ in range(2):
        verifier = Verifier(settings)
        assert verifier.verify(*_sites(settings, tmp_path)) == {}
        assert verifier.runs == 1
    assert os.listdir(settings.state) == []


@pytest.mark.parametrize("validator", ["process", "twin"])
def test_the_daemons_validators_keep_their_verdicts(short_tmp: Path, validator: str) -> None:
    """The daemon's Validators, built again as after a restart, take the verdicts of
    the first: the second runs neither `--mode validate` nor the twin."""
    settings = _settings(short_tmp, validator=validator)
    for expected in (True, False):
        validators = Validators(threading.Event())
        try:
            verifier = validators.verifier(settings)
            assert verifier is not None
            assert verifier.verify(*_sites(settings, short_tmp)) == {}
            assert (verifier.runs > 0) is expected
        finally:
            validators.close()
    assert (settings.state / VERDICTS_FILE).is_file()


def test_groups_checked_ahead_are_passed_when_verify_comes_to_them(tmp_path: Path) -> None:
    """A pass hands new renders to Envoy in groups while it renders the rest; `verify`
    waits for them and runs Envoy only for what they did not cover."""
    settings = _settings(tmp_path)
    resources, sources = _sites(settings, tmp_path)
    verifier = Verifier(settings)
    verifier.check_ahead(resources[:2])
    assert verifier.verify(resources, sources) == {}
    assert verifier.runs == 2  # the group ahead, then the third site alone
    assert verifier.verify(resources, sources) == {} and verifier.runs == 2


def test_verdicts_passed_ahead_are_kept_for_the_next_start(tmp_path: Path) -> None:
    """Every candidate passed ahead (`verify` runs nothing itself): the verdicts file
    still gets them, so the next start validates nothing."""
    settings = _settings(tmp_path)
    resources, sources = _sites(settings, tmp_path)
    verifier = Verifier(settings, verdicts=settings.state / VERDICTS_FILE)
    verifier.check_ahead(resources)
    assert verifier.verify(resources, sources) == {} and verifier.runs == 1
    assert _runs(settings, tmp_path) == 0


def test_a_group_checked_ahead_that_fails_is_bisected_by_verify(tmp_path: Path) -> None:
    """A group Envoy refuses ahead is only left unknown: `verify` finds the site."""
    settings = _settings(tmp_path)
    resources, sources = _sites(settings, tmp_path)
    source = str(tmp_path / "sites" / "negtimeout.yaml")
    bad = check_content("negtimeout", source, site_text(
        "negtimeout", HATCH["negtimeout"]).encode(), settings)
    assert bad.resources is not None, bad.problems
    sources["negtimeout"] = source
    verifier = Verifier(settings)
    verifier.check_ahead([*resources, bad.resources])
    problems = verifier.verify([*resources, bad.resources], sources)
    assert list(problems) == ["negtimeout"], problems
    assert "Envoy refuses it" in problems["negtimeout"][0].reason


@pytest.mark.parametrize("mistake", MISTAKES)
def test_envoys_verdict_refuses_what_the_skipped_type_checks_would_have(
        tmp_path: Path, mistake: dict[str, str]) -> None:
    """The daemon leaves the type checks of its own renders to Envoy's verdict
    (`envoy_judges`). Should a render of its making ever carry a type error (a bug:
    every value in it comes from a validated file), `--mode validate` refuses it and
    names the site: nothing of the kind goes live (the twin: `test_twin_e2e`)."""
    settings = _settings(tmp_path)
    resources, sources = _sites(settings, tmp_path)
    problems = Verifier(settings).verify([broken(resources[0], mistake), *resources[1:]],
                                         sources)
    assert list(problems) == [resources[0].name], problems


@pytest.mark.parametrize("judged", [True, False])
def test_the_daemon_type_checks_in_python_only_without_envoys_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, judged: bool) -> None:
    """A daemon with a validator leaves its plain renders' type checks to Envoy (and the
    site serves, judged by the real Envoy binary); with `verify_with_envoy: false` it
    parses every render into Envoy's types itself."""
    settings = _settings(tmp_path, sites_dir=tmp_path / "sites", verify_with_envoy=judged)
    settings.sites_dir.mkdir()
    (settings.sites_dir / "alpha.yaml").write_text(site_text("alpha", ""))
    checked: list[str] = []
    real = rendering.check_types
    monkeypatch.setattr(rendering, "check_types",
                        lambda resource, kind, *rest: checked.append(kind) or real(
                            resource, kind, *rest))
    verifier = Verifier(settings) if judged else None
    reconciler = Reconciler(settings, verifier=verifier, ask_envoy=False,
                            stop=threading.Event())
    outcome = reconciler.run_pass()
    assert outcome.added == ["alpha"] and not outcome.invalid, outcome
    assert (checked == []) is judged, checked
    assert (verifier is None) or verifier.runs == 1
