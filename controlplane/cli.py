"""controlplane: a file-based control plane for Envoy.

Exit codes:
  0  fine
  1  some site is invalid (check, render), or not served as written (status)
  2  usage: a bad flag, environment variable or settings file
  3  environment: the Envoy binary cannot run, a folder is missing or unreadable,
     the daemon is not running or its status is stale (status), another daemon owns
     the out folder (run, render), no live Envoy to compare with (diff)
`diff` follows diff(1): 0 the same, 1 different.
A closed stdout (`controlplane status --json | head -1`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from controlplane import configuring, logs, options, settings
from controlplane.daemon import liveness, statusfile
from controlplane.daemon.running import Daemon
from controlplane.daemon.signals import daemon_signals
from controlplane.envoy import diffing, files
from controlplane.envoy.verifying import Verifier
from controlplane.errors import ControlPlaneError, EnvoyUnavailable, SettingsError, SiteError
from controlplane.intake import checking, explaining, probing, selecting
from controlplane.issuing import listing
from controlplane.render import bootstraps, snapshot
from controlplane.site import schema
from controlplane.writing import ensure_folder, hold_lock

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_ENVIRONMENT = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _settings(args)
        result: int = args.command(config, args)
        sys.stdout.flush()
        return result
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing, and keep the interpreter's own
        # flush at exit from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ControlPlaneError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return (EXIT_USAGE if isinstance(exc, SettingsError)
                else EXIT_INVALID if isinstance(exc, SiteError) else EXIT_ENVIRONMENT)
    except OSError as exc:
        print(f"controlplane: {_os_error(exc)}", file=sys.stderr)
        return EXIT_ENVIRONMENT


def _os_error(exc: OSError) -> str:
    where = exc.filename or "a file or socket"
    return (f"{where}: {exc.strerror or exc}; check that it exists and that this user"
            " may read (and, for the out and state folders, write) it")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane", description=__doc__,
                                     formatter_class=options.Formatter)
    parser.add_argument("--version", action="version", version=options.version())
    options.settings_options(parser, top=True)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str, sites: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help,
                                  formatter_class=options.Formatter)
        sub.set_defaults(command=handler)
        if sites:
            sub.add_argument("sites_dir", nargs="?", metavar="SITES_DIR",
                             default=argparse.SUPPRESS, help="the folder of site files (the"
                             " same as --sites; default: config/sites)")
        options.settings_options(sub, top=False)
        return sub

    check = command("check", _check, "validate a sites folder; exit 1 on any problem", True)
    check.add_argument("--json", action="store_true",
                       help="one JSON document on stdout: every problem and warning")
    render = command("render", _render, "validate, then write cds/lds/rds.json once", True)
    render.add_argument("--pretty", action="store_true",
                        help="indented JSON, keys sorted, so a plain diff reads well")
    command("bootstrap", _bootstrap, "print an Envoy bootstrap reading the files in --out")
    command("run", _run, "the daemon: watch the folder, apply changes, confirm with Envoy", True)
    explain = command("explain", _explain, "which site, route and upstream serve a URL"
                      " (offline, from the files the daemon would apply)", True)
    explain.add_argument("url", metavar="URL", help="e.g. http://blog.example.com/a?b=1")
    explain.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                         help="a request header (repeat for more)")
    _query_commands(command)
    return parser


def _query_commands(command: Any) -> None:
    """The commands that read: what serves, the live diff, the status, the references."""
    command("diff", _diff, "compare what SITES_DIR would render with what the live Envoy"
            " holds (--admin-socket); exit 0 same, 1 different, 3 no Envoy", True)
    status_cmd = command("status", _status, "is the daemon alive, and what does each site serve")
    status_cmd.add_argument("--json", action="store_true", help="print it as JSON")
    certs = command("certificates", _certificates, "the ACME certificates of the sites"
                    " (--out, --state): list them, renew one now, or clean up", True)
    certs.add_argument("--renew", metavar="SITE", help="ask the daemon to renew SITE's"
                       " certificate now")
    certs.add_argument("--clean", action="store_true", help="remove the files of sites"
                       " that no longer ask for a certificate")
    certs.add_argument("--json", action="store_true", help="print the list as JSON")
    schema_cmd = command("schema", _schema, "print the JSON Schema of a site file")
    schema_cmd.add_argument("--markdown", action="store_true",
                            help="print the site file reference as a Markdown table")
    settings_cmd = command("settings", _settings_cmd,
                           "print the settings in effect (after flags, environment, file)")
    settings_cmd.add_argument("--markdown", action="store_true",
                              help="print the settings reference as a Markdown table")
    completion = command("completion", _completion, "print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell")


def _settings(args: argparse.Namespace) -> settings.Settings:
    return configuring.load(getattr(args, "config", None), options.flags_given(args),
                            options.flag_names(), lambda hint: print(f"warning: {hint}",
                                                                     file=sys.stderr))


def _select(config: settings.Settings) -> selecting.Selection:
    try:
        found = checking.scan(config, lambda entry: checking.check_entry(entry, config))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(config.sites_dir)) from None
    verifier = Verifier(config) if config.verify_with_envoy else None
    selection = selecting.select(found.checked, {}, verifier, config.max_certificates,
                                 checking.fence_of(config))
    selection.ignored = found.ignored
    return selection


def _report(selection: selecting.Selection, as_json: bool = False) -> int:
    problems = [p for name in sorted(selection.problems) for p in selection.problems[name]]
    warnings = [w for name in sorted(selection.warnings) for w in selection.warnings[name]]
    warnings_listed = [*warnings, *selection.ignored]
    total = len(selection.serving) + len(selection.problems)
    if as_json:
        listed = ([statusfile.problem_dict(p, "error") for p in problems]
                  + [statusfile.problem_dict(w, "warning") for w in warnings_listed])
        print(json.dumps({"sites": total, "valid": len(selection.serving),
                          "invalid": len(selection.problems), "problems": listed}, indent=2))
    else:
        for problem in problems:
            print(problem, file=sys.stderr)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for ignored in selection.ignored:
            print(f"warning: {ignored}", file=sys.stderr)
        print(f"{total} sites: {len(selection.serving)} valid, {len(selection.problems)}"
              " invalid", file=sys.stderr)
    return EXIT_INVALID if problems else EXIT_OK


def _check(config: settings.Settings, args: argparse.Namespace) -> int:
    selection = _select(config)
    fence = checking.fence_of(config)
    for name, item in selection.serving.items():
        found = probing.warnings(item.source, item.uses, fence)
        if found:
            selection.warnings.setdefault(name, []).extend(found)
    return _report(selection, args.json)


def _render(config: settings.Settings, args: argparse.Namespace) -> int:
    selection = _select(config)
    if _report(selection) != EXIT_OK:
        print("nothing written", file=sys.stderr)
        return EXIT_INVALID
    target = snapshot.snapshot(config, [c.resources for c in selection.serving.values()
                                         if c.resources is not None])
    ensure_folder(config.out_dir)
    with hold_lock(config.out_dir, "render"):  # never under a running daemon's feet
        files.write_once(config.out_dir, target, pretty=args.pretty)
    print(f"wrote {config.out_dir}/{{cds,rds,lds}}.json", file=sys.stderr)
    return EXIT_OK


def _bootstrap(config: settings.Settings, args: argparse.Namespace) -> int:
    header = ("# Envoy bootstrap generated by `controlplane bootstrap`; do not edit.\n"
              "# Dynamic resources come from the files that controlplane writes.\n")
    body = yaml.safe_dump(bootstraps.bootstrap(config), sort_keys=False)
    sys.stdout.write(header + body)
    return EXIT_OK


def _run(config: settings.Settings, args: argparse.Namespace) -> int:
    logs.configure(config.log_level, config.log_format)  # only the daemon logs
    daemon = Daemon(config, reload=lambda: _settings(args))
    with daemon_signals(daemon.request_stop, daemon.request_reload):
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
    target = snapshot.snapshot(config, [c.resources for c in selection.serving.values()
                                         if c.resources is not None])
    try:
        live = diffing.live_resources(config)
    except EnvoyUnavailable as exc:
        print(f"controlplane: cannot read the live Envoy's configuration: {exc}",
              file=sys.stderr)
        return EXIT_ENVIRONMENT
    difference = diffing.compare(diffing.rendered(target), live)
    sys.stdout.write(difference.diff)
    print(difference.summary(), file=sys.stderr)
    return EXIT_OK if difference.same else EXIT_INVALID


def _status(config: settings.Settings, args: argparse.Namespace) -> int:
    report = liveness.inspect(config)
    if args.json:
        print(json.dumps(report.document, indent=2, sort_keys=True))
    else:
        print(report.text)
    return {liveness.OK: EXIT_OK, liveness.SITES: EXIT_INVALID}.get(report.verdict,
                                                                     EXIT_ENVIRONMENT)


def _certificates(config: settings.Settings, args: argparse.Namespace) -> int:
    asking = {name for name, item in checking.scan(
        config, lambda entry: checking.check_entry(entry, config)).checked.items() if item.acme}
    if args.renew:
        listing.renew(config, args.renew, asking)
        print(f"{args.renew}: renewal requested; the daemon orders it at its next round")
    if args.clean:
        for name in listing.clean(config, asking):
            print(f"{name}: removed (no site asks for its certificate)")
    entries = listing.report(config, asking)
    print(json.dumps(entries, indent=2) if args.json else listing.text(entries))
    return EXIT_OK


def _schema(config: settings.Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(schema.reference())
    else:
        print(json.dumps(schema.schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _settings_cmd(config: settings.Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(options.reference())
    else:
        sys.stdout.write(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return EXIT_OK


def _completion(config: settings.Settings, args: argparse.Namespace) -> int:
    import shtab  # here alone: 40 ms of every start otherwise

    parser = _parser()
    options.with_completions(parser, {options.COMPLETE_FILE: shtab.FILE,
                                      options.COMPLETE_DIRECTORY: shtab.DIRECTORY})
    print(shtab.complete(parser, shell=args.shell))
    return EXIT_OK
