"""The verdicts file's judge and bound, without Envoy: the settings it leaves out of the
judge shape nothing Envoy is given; the file keeps the current sites' digests and drops
the oldest others."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.envoy import verdicts
from controlplane.envoy.verifying import envoy_binary, scratch_bootstrap
from controlplane.intake.checking import check_content
from controlplane.render.rendering import SiteResources
from controlplane.render.twinfiles import twin_files
from controlplane.settings import Settings
from controlplane.values import Listen
from tests.envoy_rejections import site_text

OTHER = {"log_level": "debug", "log_format": "json"}


def _given(settings: Settings, tmp: Path) -> tuple[list[str], object, object]:
    """A site's digest, and the scratch bootstrap and twin files it is judged in."""
    item = check_content("blog", str(tmp / "blog.yaml"), site_text("blog", "").encode(),
                         settings)
    assert item.resources is not None, item.problems
    group: list[SiteResources] = [item.resources]
    return ([item.resources.digest], scratch_bootstrap(settings, group),
            twin_files(settings, group, tmp / "hc.sock", tmp / "rds.json"))


@pytest.mark.parametrize("field", sorted(verdicts.UNSHAPING))
def test_a_setting_left_out_of_the_judge_shapes_nothing_envoy_is_given(
        tmp_path: Path, field: str) -> None:
    """Changing it keeps the judge, and the site's digest, scratch bootstrap and twin
    files are the same bytes: a kept verdict stays true."""
    settings = Settings(out_dir=tmp_path / "out", socket_dirs=())
    value = getattr(settings, field)
    changed = settings.replace(**{field: OTHER[field] if field in OTHER else value * 2 + 1})
    assert getattr(changed, field) != value
    binary = envoy_binary(settings)
    assert verdicts.judge(changed, binary) == verdicts.judge(settings, binary)
    assert _given(changed, tmp_path) == _given(settings, tmp_path)


def test_a_setting_that_shapes_the_listeners_changes_the_judge(tmp_path: Path) -> None:
    """The HTTP port is in no site's digest, but in the listener Envoy judges."""
    settings = Settings(out_dir=tmp_path / "out")
    moved = settings.replace(listen=Listen(host="0.0.0.0", port=8081))
    binary = envoy_binary(settings)
    assert verdicts.judge(moved, binary) != verdicts.judge(settings, binary)


def _digests(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:015x}" for i in range(count)]


def test_the_kept_verdicts_are_bounded_oldest_out() -> None:
    """Above the bound, the current candidates' digests stay, however old, and the
    oldest of the others go: `PER_SITE` per current site, at least `MIN_KEPT`."""
    current = _digests("a", 300)
    old = _digests("b", 2000)
    passed = dict.fromkeys(current[:150] + old + current[150:])
    found = verdicts.kept(passed, set(current))
    assert len(found) == verdicts.PER_SITE * len(current)
    assert set(current) <= set(found)
    assert [d for d in found if d.startswith("b")] == old[-900:]
    assert list(found) == [d for d in passed if d in found]  # the order is kept


def test_few_sites_keep_up_to_the_floor() -> None:
    """Under `MIN_KEPT` nothing is dropped; and no more than `MAX_VERDICTS` are kept."""
    passed = dict.fromkeys(_digests("b", verdicts.MIN_KEPT))
    assert verdicts.kept(passed, set()) is passed
    many = dict.fromkeys(_digests("c", verdicts.MAX_VERDICTS + 10))
    found = verdicts.kept(many, set(many))
    assert list(found) == list(many)[10:]
