"""`python -m bench [--full] [--quick] [NAME ...]`: run the benchmarks, write each one's
results under bench/results/, then `summary.json` and `summary.md` (the table the README
shows, with the machine it ran on).

`--full` adds the 10,000-site cold start (written as `scale-full.*` and `summary-full.*`,
beside the default run's files); `--quick` runs each benchmark briefly (for
trying changes; its numbers are not worth committing). A benchmark that fails is
reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import burst, common, datapath, hitless, price, propagation, scale, twin
from controlplane.demo import servers
from controlplane.envoy.verifying import envoy_binary
from controlplane.settings import Settings

BENCHMARKS: dict[str, ModuleType] = {
    "propagation": propagation, "scale": scale, "burst": burst, "hitless": hitless,
    "datapath": datapath, "price": price, "twin": twin,
}
HEADERS = ["benchmark", "case", "controlplane", "reference (same run)", "ratio", "target"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--full", action="store_true", help="add the 10,000-site case")
    parser.add_argument("--quick", action="store_true", help="short runs, for trying changes")
    parser.add_argument("--summary", action="store_true",
                        help="run nothing: write summary.md from the saved results")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    names = args.names or list(BENCHMARKS)
    if args.summary:
        return _summarize(args.full)
    started = time.monotonic()
    rows: list[list[str]] = []
    failed: list[str] = []
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            data = BENCHMARKS[name].run(args.full, args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        rows += BENCHMARKS[name].summary(data)
        print(f"bench: {name} done in {time.monotonic() - began:.0f} s", file=sys.stderr,
              flush=True)
    machine = {**_machine(), "full": args.full, "quick": args.quick,
               "wall_s": round(time.monotonic() - started), "failed": failed}
    if set(names) == set(BENCHMARKS):
        _write_summary(rows, machine)
    print(common.table(HEADERS, rows))
    print(f"bench: {machine['wall_s']} s in all" + (f"; failed: {failed}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def _summarize(full: bool) -> int:
    """summary.md again from each benchmark's saved JSON (after a benchmark was run
    again on its own): the rows are the same functions' output."""
    rows: list[list[str]] = []
    for name, module in BENCHMARKS.items():
        saved = common.RESULTS / f"{'scale-full' if full and name == 'scale' else name}.json"
        if not saved.exists():
            print(f"bench: no saved {saved.name}; run `python -m bench"
                  f"{' --full' if full else ''} {name}` first", file=sys.stderr)
            return 1
        rows += module.summary(json.loads(saved.read_text()))
    machine = {**_machine(), "full": full, "quick": False, "wall_s": 0, "failed": [],
               "assembled": True}
    _write_summary(rows, machine)
    print(common.table(HEADERS, rows))
    return 0


def _machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": _envoy_version(),
        "upstream": servers.available_kind(),
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]).split(" [")[0] or "missing (Python load generator)",
        "commit": _commit(),
    }


def _commit() -> str:
    """The commit measured, with `+changes` when controlplane/ differs from it."""
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                            "controlplane", "tests"], capture_output=True, text=True).stdout
    return head.stdout.strip() + ("+changes" if dirty.strip() else "")


def _envoy_version() -> str:
    """`1.40.0` from `PATH  version: COMMIT/1.40.0/Clean/RELEASE/BoringSSL`."""
    text = _version([str(envoy_binary(Settings())), "--version"])
    parts = text.rpartition("version: ")[2].split("/")
    return parts[1] if len(parts) > 1 else "unknown"


def _version(command: list[str]) -> str:
    if shutil.which(command[0]) is None and not os.path.exists(command[0]):
        return ""
    done = subprocess.run(command, capture_output=True, text=True)
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0].strip() if text else ""


def _write_summary(rows: list[list[str]], machine: dict[str, Any]) -> None:
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    name = "summary-full" if machine["full"] else "summary"
    (common.RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=2, sort_keys=True) + "\n")
    m = machine
    header = (f"controlplane {m['commit']}, run on {m['date']}: {m['nproc']} cores"
              f" ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']},"
              f" Python {m['python']}, Envoy {m['envoy']}, upstream {m['upstream']}"
              f" ({m['nginx'] or 'stand-in'}), load by {m['wrk']};"
              f" `make bench{'-full' if m['full'] else ''}` took {m['wall_s'] / 60:.1f} min.\n\n")
    if m.get("assembled"):
        header = (f"Assembled by `python -m bench --summary` at controlplane {m['commit']},"
                  f" {m['date']}, from each benchmark's saved results (see its NAME.md)"
                  f" on {m['nproc']} cores ({m['cpu']}), Envoy {m['envoy']}.\n\n")
    (common.RESULTS / f"{name}.md").write_text(header + common.table(HEADERS, rows))


if __name__ == "__main__":
    raise SystemExit(main())
