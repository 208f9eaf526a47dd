"""Ordered, confirmed apply of the three dynamic files: make before break.

Envoy serves 503 (or rejects) routes that name a cluster it does not have yet, so one
apply is up to three steps, each confirmed through the admin socket before the next:

  0. SDS files of new certificates, `sds/<secret>.json` (before any listener names them;
     nothing watches them yet, so there is nothing to confirm)
  1. CDS with the old and the new clusters     (only when clusters are added or changed)
  2. RDS, then LDS                             (only the ones whose content changed)
  3. CDS without the clusters no route needs   (only when clusters are removed), and the
     SDS files no listener names any more

A rejection re-installs the last confirmed file under a new version and is reported; a
timeout keeps the files and leaves the step unconfirmed, to be re-checked next pass.
Once every file was confirmed, a step is confirmed by the version readouts alone, on
counters kept from an earlier read (`_settled`); any doubt reads the counters again.
Without an admin socket the steps are written in the same order with a short gap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from controlplane.envoy import files
from controlplane.envoy.admin import ALREADY_WRITTEN, AdminClient, Counters
from controlplane.envoy.files import FILES, Confirmation, FileState, Report, about, cause
from controlplane.errors import EnvoyRejected, EnvoyUnavailable
from controlplane.render.rendering import discovery_response
from controlplane.render.snapshot import Snapshot
from controlplane.settings import Settings
from controlplane.writing import write_atomic

SECONDS_PER_CLUSTER = 0.0015
"""The confirm timeout's floor per cluster: 1.5x what Envoy took to apply one here."""


class Publisher:
    """Owns the output folder; knows what each file holds; applies a target in order."""

    @classmethod
    def asking(cls, settings: Settings, stop: threading.Event) -> Publisher:
        """A Publisher that confirms each step through Envoy's admin socket (none
        without `admin_socket`)."""
        admin = None if settings.admin_socket is None else AdminClient(settings.admin_socket,
                                                                       settings)
        return cls(settings, admin, stop)

    @property
    def asks_envoy(self) -> bool:
        return self._admin is not None

    def __init__(self, settings: Settings, admin: AdminClient | None,
                 stop: threading.Event) -> None:
        self._settings = settings
        self._admin = admin
        self._stop = stop
        self._salt = 0
        self._stale: set[str] = set()
        self.files = {kind: files.read_state(settings.out_dir, kind) for kind in FILES}
        self._names = files.cluster_names(self.files["cds"].fragments)
        """Cluster fragment -> its name, for every fragment cds.json holds or may hold
        again (the last confirmed one); filled from the snapshots applied."""
        self.secrets = files.read_secrets(settings.out_dir)
        """What each SDS file holds, by secret name."""
        self._baseline: dict[str, Counters] | None = None
        """The counters last read, by file kind, kept while every step since was
        confirmed: the `before` of a settled step. None after any doubt."""

    def cluster_fragments(self) -> dict[str, str]:
        """Cluster name -> fragment of what cds.json holds."""
        return {self._names[text]: text for text in self.files["cds"].fragments
                if text in self._names}

    def apply(self, target: Snapshot, *, secrets: bool = True) -> Report:
        """Bring the files to the snapshot, in the make-before-break order. `secrets`
        False leaves the SDS files as they are."""
        report = Report()
        if secrets:
            files.write_secrets(self._settings.out_dir, self.secrets, report, target.secrets)
        wanted = target.files()
        self._remember_names(target.clusters)
        self._create_missing(report, wanted)
        current = self.cluster_fragments()
        union = {**current, **target.clusters}
        if union != current or self.files["cds"].confirmed is Confirmation.UNCONFIRMED:
            self._step(report, {"cds": tuple(union[name] for name in sorted(union))})
        if self._may_go_on(report):
            self._step(report, {"rds": wanted["rds"], "lds": wanted["lds"]})
        if self._may_go_on(report):
            self._step(report, {"cds": wanted["cds"]})
        if secrets and self._may_go_on(report):
            files.remove_secrets(self._settings.out_dir, self.secrets, report, target.secrets)
        if self._admin is not None and not report.asked and self._may_go_on(report):
            self._probe(report)
        return report

    def _remember_names(self, clusters: Mapping[str, str]) -> None:
        """Learn the target's names; forget those of fragments no file can hold again."""
        state = self.files["cds"]
        keep = {*state.fragments, *(state.last_confirmed or ())}
        self._names = {text: name for text, name in self._names.items() if text in keep}
        self._names.update({text: name for name, text in clusters.items()})

    def runs_ours(self) -> bool:
        """One text-readout read: Envoy runs every file's confirmed version."""
        if self._admin is None or any(f.confirmed is not Confirmation.CONFIRMED
                                      for f in self.files.values()):
            return True
        try:
            running = self._admin.versions()
        except EnvoyUnavailable:
            running = {}
        ours = all(running.get(kind) == f.version for kind, f in self.files.items())
        if not ours:
            self._baseline = None  # a new Envoy, perhaps: read the counters again
        return ours

    def _probe(self, report: Report) -> None:
        """A pass with nothing to write still asks Envoy (one cheap text-readout read)
        whether it runs the files' versions: after Envoy died or restarted on other
        files, the status must not go on saying that it serves them."""
        assert self._admin is not None
        try:
            running = self._admin.versions()
        except EnvoyUnavailable as exc:
            self._baseline = None
            report.unconfirmed.append(exc)
            return
        for kind, state in self.files.items():
            if running.get(kind) != state.version:
                self._baseline = None
                state.confirmed, state.before = Confirmation.UNCONFIRMED, None
                self._stale.add(kind)  # renamed again next pass, so Envoy reloads it
                report.unconfirmed.append(EnvoyUnavailable(
                    f"{FILES[kind]}: Envoy runs version {running.get(kind)!r}, not"
                    f" {state.version!r}; re-checking"))

    def _may_go_on(self, report: Report) -> bool:
        """The next step only after this one was confirmed, and never once stopping."""
        return not (report.rejected or report.unconfirmed or self._stop.is_set())

    def _create_missing(self, report: Report, targets: dict[str, tuple[str, ...]]) -> None:
        """Envoy cannot start until all three files exist, and cannot have loaded a file
        that did not exist: missing files are written at once, complete, unconfirmed."""
        for kind, fragments in targets.items():
            if not self._exists(kind):
                self._write(kind, fragments)
                report.written.append(kind)

    def _exists(self, kind: str) -> bool:
        return (self._settings.out_dir / FILES[kind]).exists()

    def _step(self, report: Report, targets: dict[str, tuple[str, ...]]) -> None:
        """Write the files that differ, then confirm every file of the step."""
        if all(fragments == self.files[kind].fragments and self.files[kind].version
               and self.files[kind].confirmed is not Confirmation.UNCONFIRMED
               for kind, fragments in targets.items()):
            return  # nothing to write or confirm: spare Envoy a /stats read
        settled = self._settled(targets)
        report.asked = report.asked or settled
        before = self._baseline if settled else self._counters(report)
        for kind in targets:
            if files.not_loaded(self.files[kind], (before or {}).get(kind)):
                self._stale.add(kind)
        for kind, fragments in targets.items():
            state = self.files[kind]
            if fragments == state.fragments and state.version and kind not in self._stale:
                continue
            self._salt += kind in self._stale
            salt = f"resync-{self._salt}" if kind in self._stale else ""
            self._stale.discard(kind)
            self._write(kind, fragments, salt, before=(before or {}).get(kind))
            report.written.append(kind)
        self._confirm(report, targets, before, settled)

    def _settled(self, targets: Mapping[str, tuple[str, ...]]) -> bool:
        """A step may skip the counters read before its write, and be confirmed by the
        version readouts alone, when every file of it was confirmed (Envoy's
        `version_text` was its version) and counters from an earlier read are kept.

        Why the readout is then enough: a version is a digest of the file's content
        (plus a salt for resyncs and re-installs), and `version_text` is the last
        version Envoy accepted whole: a rejected update, even partly applied, leaves it
        as it was. The step writes only files whose content differs from the confirmed
        one, so the new version differs from what Envoy showed, and showing it can only
        mean that Envoy accepted the new file. An Envoy restarted since then loaded the
        same confirmed files from disk (or rejected them: an empty readout), which
        changes nothing. The kept counters were read before the write and only rise in
        one Envoy, so a rejection still shows above them; below them, a new Envoy,
        which proves nothing: the confirmation waits for the readout or times out.
        Anything unknown (a file unconfirmed or to resync, no counters kept after a
        rejection, a timeout or Envoy not answering) takes the full path: counters
        before the write, and `update_success` must move."""
        baseline = self._baseline
        return baseline is not None and all(
            self.files[kind].confirmed is Confirmation.CONFIRMED and kind in baseline
            and kind not in self._stale for kind in targets)

    def _counters(self, report: Report) -> dict[str, Counters] | None:
        if self._admin is None:
            return None
        report.asked = True
        try:
            counters = dict(self._admin.counters())
        except EnvoyUnavailable as exc:
            self._baseline = None
            report.errors.append(exc)
            return {}
        self._baseline = dict(counters)
        files.adopt(self.files, counters)
        return counters

    def _write(self, kind: str, fragments: tuple[str, ...], salt: str = "",
               before: Counters | None = None) -> None:
        version, data = discovery_response(list(fragments), salt)
        write_atomic(self._settings.out_dir / FILES[kind], data, force=bool(salt))
        self.files[kind] = FileState(fragments=fragments, version=version,
                                     confirmed=Confirmation.UNCONFIRMED,
                                     last_confirmed=self.files[kind].last_confirmed,
                                     before=before)

    def _confirm(self, report: Report, targets: dict[str, tuple[str, ...]],
                 before: dict[str, Counters] | None, settled: bool) -> None:
        if self._admin is None or before is None:
            if any(kind in report.written for kind in targets):
                self._stop.wait(self._settings.unconfirmed_gap_s)
            for kind in targets:
                self.files[kind].confirmed = Confirmation.UNASKED
            return
        for kind in targets:
            self._confirm_one(report, kind, self.files[kind].before or ALREADY_WRITTEN,
                              settled)

    def _confirm_one(self, report: Report, kind: str, before: Counters,
                     settled: bool) -> None:
        """A file written this step (or still unconfirmed) confirmed, or its rejection
        reported and the last good one re-installed. Counters read on the way become the
        baseline; any failure drops it, so the next step reads them fresh."""
        state = self.files[kind]
        if state.confirmed is Confirmation.CONFIRMED:
            return
        assert self._admin is not None
        try:
            now = self._admin.confirm(kind, before, state.version, self._confirm_timeout(),
                                      self._stop, settled=settled)
        except EnvoyRejected as exc:
            self._baseline = None
            report.rejected.append(cause(self._admin, kind, about(FILES[kind], exc)))
            self._reinstall(report, kind)
            return
        except EnvoyUnavailable as exc:
            self._baseline = None
            report.unconfirmed.append(about(FILES[kind], exc))
            return
        if not settled and self._baseline is not None:
            self._baseline[kind] = now
        state.confirmed, state.before = Confirmation.CONFIRMED, None
        state.last_confirmed = state.fragments

    def _confirm_timeout(self) -> float:
        """`confirm_timeout_s`, or more for a big configuration: Envoy takes about 1 s
        per 1,000 clusters here (10,000 sites: 4.5-5 s), and a first apply is no failure."""
        return max(self._settings.confirm_timeout_s,
                   SECONDS_PER_CLUSTER * len(self.files["cds"].fragments))

    def _reinstall(self, report: Report, kind: str) -> None:
        """After a rejection: the last confirmed content, under a new version."""
        good = self.files[kind].last_confirmed
        if good is None or self._admin is None:
            self._stale.add(kind)  # nothing to fall back to: offer Envoy the file again
            report.errors.append(EnvoyRejected(f"{FILES[kind]}: no file Envoy confirmed is"
                                               " known to re-install; Envoy keeps what it"
                                               " applied"))
            return
        self._salt += 1
        try:
            before = self._admin.counters()[kind]
            self._write(kind, good, salt=f"reinstall-{self._salt}", before=before)
            self._admin.confirm(kind, before, self.files[kind].version,
                                self._confirm_timeout(), self._stop)
        except (EnvoyRejected, EnvoyUnavailable) as exc:
            report.errors.append(about(f"{FILES[kind]}: re-installing the last good file", exc))
            return
        state = self.files[kind]
        state.confirmed, state.before, state.last_confirmed = (
            Confirmation.CONFIRMED, None, good)
