"""The command line: argv -> Settings -> one subcommand. The only place that maps errors
to exit codes: 0 fine, 1 invalid sites (like `nginx -t`), 2 usage or settings, 3 the output
folder is owned by another controlplane process.

Flags win over the settings file (`--config`), which wins over the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from controlplane import (
    diffing,
    explaining,
    loading,
    logs,
    model,
    reconciling,
    rendering,
    settings,
    status,
    tls,
)
from controlplane.envoy_admin import AdminClient
from controlplane.errors import ControlPlaneError, EnvoyUnavailable, FolderBusy, SettingsError
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
            "sites", "out", "listen", "listen-tls", "admin-socket", "envoy", "no-envoy", "state",
            "client-ip")
    render_cmd = command("render", _render, "validate, then write cds/lds/rds.json once",
                         "sites", "out", "listen", "listen-tls", "admin-socket", "envoy",
                         "no-envoy", "state", "client-ip")
    render_cmd.add_argument("--pretty", action="store_true",
                            help="indented JSON, keys sorted, so a plain diff reads well")
    command("bootstrap", _bootstrap, "print an Envoy bootstrap reading the files in --out",
            "out", "admin-socket", "max-heap-bytes", "stats-listen")
    command("run", _run, "the daemon: watch the folder, apply changes, confirm with Envoy",
            "sites", "out", "listen", "listen-tls", "admin-socket", "envoy", "no-envoy", "state",
            "metrics", "client-ip")
    explain_cmd = command("explain", _explain, "which site, route and upstream serve a URL"
                          " (offline, from the files the daemon would apply)",
                          "sites", "listen", "listen-tls", "admin-socket", "no-envoy", "client-ip")
    explain_cmd.add_argument("url", metavar="URL", help="e.g. http://blog.example.com/a?b=1")
    explain_cmd.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                             help="a request header (repeat for more)")
    command("diff", _diff, "compare what SITES_DIR would render with what the live Envoy"
            " holds; exit 0 same, 1 different, 3 trouble", "sites", "out", "listen",
            "listen-tls", "admin-socket", "envoy", "no-envoy", "client-ip")
    status_cmd = command("status", _status, "print the daemon's status file", "out", "state")
    status_cmd.add_argument("--json", action="store_true", help="print the raw JSON")
    schema_cmd = command("schema", _schema, "print the JSON Schema of a site file")
    schema_cmd.add_argument("--markdown", action="store_true",
                            help="print the site file reference as a Markdown table")
    return parser


_FLAGS: dict[str, Callable[[argparse.ArgumentParser], object]] = {
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
    "max-heap-bytes": lambda p: p.add_argument(
        "--max-heap-bytes", type=int, metavar="BYTES",
        help="Envoy's heap for the overload manager; set it below Envoy's memory limit"),
    "client-ip": lambda p: _client_ip_flags(p),
    "stats-listen": lambda p: p.add_argument(
        "--stats-listen", metavar="HOST:PORT",
        help="serve Envoy's /stats/prometheus and /ready (nothing else of admin) here"),
    "state": lambda p: p.add_argument("--state", dest="state_dir", type=Path, metavar="DIR"),
    "metrics": lambda p: p.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve /healthz, /readyz and /metrics here"),
}


def _client_ip_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trusted-proxies", action="append", metavar="CIDR[,CIDR...]",
                        help="balancers whose X-Forwarded-For is believed (repeatable)")
    parser.add_argument("--xff-trusted-hops", type=int, metavar="N",
                        help="believe N hops of X-Forwarded-For from anyone (default 0)")
    parser.add_argument("--proxy-protocol", action="store_true", default=None,
                        help="listeners expect the PROXY protocol from a balancer")


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
    if "trusted_proxies" in flags:
        try:
            flags["trusted_proxies"] = settings.cidrs(
                [c for given in flags["trusted_proxies"] for c in given.split(",") if c])
        except ValueError as exc:
            raise SettingsError(f"--trusted-proxies: {exc}") from None
    for key in ("listen", "metrics", "listen_tls", "stats_listen"):
        if key in flags:
            flags[key] = settings.Listen.parse(flags[key])
    return config.replace(**flags)


def _select(config: settings.Settings) -> reconciling.Selection:
    try:
        entries, ignored = loading.scan_all(config.sites_dir)
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
    selection = reconciling.select(checked, {}, verifier, config.max_certificates,
                                   reconciling.fence_of(config))
    selection.ignored = ignored
    return selection


def _report(selection: reconciling.Selection) -> int:
    problems = [p for name in sorted(selection.problems) for p in selection.problems[name]]
    for problem in problems:
        print(problem, file=sys.stderr)
    for name in sorted(selection.warnings):
        for warning in selection.warnings[name]:
            print(f"warning: {warning}", file=sys.stderr)
    for ignored in selection.ignored:
        print(f"warning: {ignored}", file=sys.stderr)
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

    def encoded(fragments: list[str]) -> bytes:
        _, data = rendering.discovery_response(fragments)
        if args.pretty:
            data = (json.dumps(json.loads(data), indent=2, sort_keys=True) + "\n").encode()
        return data

    with hold_lock(config.out_dir, "render"):  # never under a running daemon's feet
        for secret in files["sds"]:  # certificates before the listeners that name them
            ensure_folder(config.out_dir / tls.SDS_FOLDER)
            write_atomic(tls.sds_path(config.out_dir, rendering.secret_name_of(secret)),
                         encoded([secret]))
        for kind in ("cds", "rds", "lds"):  # clusters before the routes that name them
            write_atomic(config.out_dir / f"{kind}.json", encoded(files[kind]))
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


def _explain(config: settings.Settings, args: argparse.Namespace) -> int:
    try:
        request = explaining.Request.parse(args.url, args.header)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    answer = explaining.explain(request, _select(config).serving, config)
    print("\n".join(answer.lines()))
    return EXIT_OK if answer.matched else EXIT_INVALID


def _diff(config: settings.Settings, args: argparse.Namespace) -> int:
    if config.admin_socket is None:
        raise SettingsError("diff: give --admin-socket PATH, the live Envoy's admin socket")
    selection = _select(config)
    for name in sorted(selection.problems):  # the daemon would serve their last good version
        for problem in selection.problems[name]:
            print(f"warning: left out: {problem}", file=sys.stderr)
    files = rendering.assemble(config, [c.resources for c in selection.serving.values()
                                        if c.resources is not None])
    try:
        dump = json.loads(AdminClient(config.admin_socket, config).get("/config_dump"))
    except (EnvoyUnavailable, ValueError) as exc:
        print(f"controlplane: cannot read the live Envoy's configuration: {exc}",
              file=sys.stderr)
        return EXIT_ENVIRONMENT
    difference = diffing.compare(diffing.rendered(files), diffing.live(dump))
    sys.stdout.write(difference.diff)
    print(difference.summary(), file=sys.stderr)
    return EXIT_OK if difference.same else EXIT_INVALID


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
