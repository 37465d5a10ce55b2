"""Compares the instruction counts of benches/instructions.rs with the stored reference.

Usage: python3 benches/instructions.py RUN.jsonl STORED.json
RUN.jsonl is iai-callgrind's `--output-format=json` (one benchmark per line). Exits 1 when a
benchmark's instruction count (callgrind's `Ir`) is more than 10 % above the stored one, or a
stored benchmark did not run; with UPDATE=1 in the environment, writes the counts instead.
"""

import json
import os
import sys

TOLERANCE = 0.10


def new_value(metrics):
    """The new side of iai-callgrind's EitherOrBoth of metrics: {"Left": m} or {"Both": [m, old]}."""
    side = metrics["Left"] if "Left" in metrics else metrics["Both"][0]
    return int(side["Int"] if isinstance(side, dict) else side)


def counts(run_path):
    out = {}
    with open(run_path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            bench = json.loads(line)
            name = bench["module_path"].split("::", 1)[-1]
            if bench.get("id"):
                name += "/" + bench["id"]
            for profile in bench["profiles"]:
                if profile["tool"] != "Callgrind":
                    continue
                summary = profile["summaries"]["total"]["summary"]["Callgrind"]
                out[name] = new_value(summary["Ir"]["metrics"])
    return out


def main():
    run_path, stored_path = sys.argv[1], sys.argv[2]
    measured = counts(run_path)
    if not measured:
        sys.exit(f"no instruction counts in {run_path}")
    if os.environ.get("UPDATE") == "1":
        with open(stored_path, "w") as f:
            json.dump(dict(sorted(measured.items())), f, indent=2)
            f.write("\n")
        print(f"stored {len(measured)} counts in {stored_path}")
        return
    with open(stored_path) as f:
        stored = json.load(f)
    failed = []
    print(f"{'benchmark':<40} {'stored':>12} {'now':>12} {'change':>8}")
    for name in sorted(set(stored) | set(measured)):
        old, new = stored.get(name), measured.get(name)
        if new is None:
            failed.append(f"{name}: stored but did not run")
            print(f"{name:<40} {old:>12} {'-':>12}")
            continue
        if old is None:
            print(f"{name:<40} {'-':>12} {new:>12}   (new: store it with UPDATE=1)")
            continue
        change = new / old - 1
        print(f"{name:<40} {old:>12} {new:>12} {change:>+7.1%}")
        if change > TOLERANCE:
            failed.append(f"{name}: {old} -> {new} instructions ({change:+.1%})")
    if failed:
        print("\nmore than 10 % above the stored counts (benches/instructions.json):")
        for f in failed:
            print("  " + f)
        print("If the change is deliberate, store the new counts in the same commit:")
        print("  UPDATE=1 bash benches/instructions.sh")
        sys.exit(1)


if __name__ == "__main__":
    main()
