"""The command line: argv -> Settings -> one subcommand. The only place that maps errors
to exit codes: 0 fine, 1 invalid sites (like `nginx -t`), 2 usage or settings, 3 the output
folder is owned by another controlplane process.

Flags win over the settings file (`--config`), which wins over the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from controlplane import loading, logs, model, reconciling, rendering, settings, status, tls
from controlplane.errors import ControlPlaneError, FolderBusy, SettingsError
from controlplane.running import Daemon, stop_on_signals
from controlplane.verifying import Verifier
from controlplane.writing import ensure_folder, hold_lock, write_atomic

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_ENVIRONMENT = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _settings(args)
        result: int = args.command(config, args)
        return result
    except SettingsError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FolderBusy as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except ControlPlaneError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane", description=__doc__)
    parser.add_argument("--config", type=Path, help="settings file (YAML); flags win")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str, *flags: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=handler)
        for flag in flags:
            _FLAGS[flag](sub)
        return sub

    command("check", _check, "validate a sites folder; exit 1 on any problem",
            "sites", "listen", "listen-tls", "envoy", "no-envoy")
    command("render", _render, "validate, then write cds/lds/rds.json once",
            "sites", "out", "listen", "listen-tls", "envoy", "no-envoy")
    command("bootstrap", _bootstrap, "print an Envoy bootstrap reading the files in --out",
            "out", "admin-socket")
    command("run", _run, "the daemon: watch the folder, apply changes, confirm with Envoy",
            "sites", "out", "listen", "listen-tls", "admin-socket", "envoy", "no-envoy", "state",
            "metrics")
    status_cmd = command("status", _status, "print the daemon's status file", "out", "state")
    status_cmd.add_argument("--json", action="store_true", help="print the raw JSON")
    schema_cmd = command("schema", _schema, "print the JSON Schema of a site file")
    schema_cmd.add_argument("--markdown", action="store_true",
                            help="print the site file reference as a Markdown table")
    return parser


_FLAGS = {
    "sites": lambda p: p.add_argument("sites_dir", type=Path, nargs="?", metavar="SITES_DIR"),
    "out": lambda p: p.add_argument("--out", dest="out_dir", type=Path, metavar="DIR"),
    "listen": lambda p: p.add_argument("--listen", metavar="HOST:PORT"),
    "listen-tls": lambda p: p.add_argument("--listen-tls", metavar="HOST:PORT",
                                           help="the HTTPS listener (default 0.0.0.0:8443)"),
    "admin-socket": lambda p: p.add_argument("--admin-socket", type=Path, metavar="PATH"),
    "envoy": lambda p: p.add_argument("--envoy", type=Path, metavar="PATH"),
    "no-envoy": lambda p: p.add_argument(
        "--no-envoy", dest="verify_with_envoy", action="store_false", default=None,
        help="skip `envoy --mode validate` (schema and type checks still run)"),
    "state": lambda p: p.add_argument("--state", dest="state_dir", type=Path, metavar="DIR"),
    "metrics": lambda p: p.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve /healthz, /readyz and /metrics here"),
}


def _settings(args: argparse.Namespace) -> settings.Settings:
    config = settings.Settings()
    if args.config is not None:
        try:
            values = yaml.safe_load(args.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{args.config}: {exc}") from None
        if not isinstance(values, dict):
            raise SettingsError(f"{args.config}: a settings file is a mapping of keys")
        config = settings.from_mapping(values, config)
    flags = {k: v for k, v in vars(args).items()
             if k in {f for f in settings.Settings.__dataclass_fields__} and v is not None}
    for key in ("listen", "metrics", "listen_tls"):
        if key in flags:
            flags[key] = settings.Listen.parse(flags[key])
    return config.replace(**flags)


def _select(config: settings.Settings) -> reconciling.Selection:
    try:
        entries = loading.scan(config.sites_dir)
    except OSError as exc:
        raise SettingsError(f"{config.sites_dir}: {exc.strerror}") from None
    duplicates = reconciling.duplicate_names(entries)
    checked = {}
    for entry in entries:
        checked[entry.name] = (
            reconciling.Checked(name=entry.name, source=entry.location, digest="",
                                problems=tuple(duplicates[entry.name]))
            if entry.name in duplicates else reconciling.check_entry(entry, config))
    verifier = Verifier(config) if config.verify_with_envoy else None
    return reconciling.select(checked, {}, verifier, config.max_certificates)


def _report(selection: reconciling.Selection) -> int:
    problems = [p for name in sorted(selection.problems) for p in selection.problems[name]]
    for problem in problems:
        print(problem, file=sys.stderr)
    for name in sorted(selection.warnings):
        for warning in selection.warnings[name]:
            print(f"warning: {warning}", file=sys.stderr)
    total = len(selection.serving) + len(selection.problems)
    print(f"{total} sites: {len(selection.serving)} valid, {len(selection.problems)} invalid",
          file=sys.stderr)
    return EXIT_INVALID if problems else EXIT_OK


def _check(config: settings.Settings, args: argparse.Namespace) -> int:
    return _report(_select(config))


def _render(config: settings.Settings, args: argparse.Namespace) -> int:
    selection = _select(config)
    if _report(selection) != EXIT_OK:
        print("nothing written", file=sys.stderr)
        return EXIT_INVALID
    resources = [c.resources for c in selection.serving.values() if c.resources is not None]
    files = rendering.assemble(config, resources)
    ensure_folder(config.out_dir)
    with hold_lock(config.out_dir, "render"):  # never under a running daemon's feet
        for secret in files["sds"]:  # certificates before the listeners that name them
            ensure_folder(config.out_dir / tls.SDS_FOLDER)
            _, data = rendering.discovery_response([secret])
            write_atomic(tls.sds_path(config.out_dir, rendering.secret_name_of(secret)), data)
        for kind in ("cds", "rds", "lds"):  # clusters before the routes that name them
            _, data = rendering.discovery_response(files[kind])
            write_atomic(config.out_dir / f"{kind}.json", data)
    print(f"wrote {config.out_dir}/{{cds,rds,lds}}.json", file=sys.stderr)
    return EXIT_OK


def _bootstrap(config: settings.Settings, args: argparse.Namespace) -> int:
    header = ("# Envoy bootstrap generated by `controlplane bootstrap`; do not edit.\n"
              "# Dynamic resources come from the files that controlplane writes.\n")
    body = yaml.safe_dump(rendering.bootstrap(config), sort_keys=False)
    sys.stdout.write(header + body)
    return EXIT_OK


def _run(config: settings.Settings, args: argparse.Namespace) -> int:
    logs.configure()
    daemon = Daemon(config)
    with stop_on_signals(daemon.request_stop):
        daemon.run()
    return EXIT_OK


def _status(config: settings.Settings, args: argparse.Namespace) -> int:
    try:
        document = status.read_status(config.state)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"no status in {config.state}: {exc}") from None
    print(json.dumps(document, indent=2) if args.json else status.table(document))
    return EXIT_OK


def _schema(config: settings.Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(model.reference())
    else:
        print(json.dumps(model.schema(), indent=2, sort_keys=True))
    return EXIT_OK
