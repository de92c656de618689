"""The long soak of the reliability suite, and RELIABILITY.md from its figures.

    python3 -m bench.soak                      # SYNCD_SOAK=1: 60 kills, 60,000-event flood, ...
    python3 -m bench.soak --bounded            # the CI form (what scripts/test.sh runs)
    python3 -m bench.soak --kills 200 --seed 7 --render RELIABILITY.md

`SYNCD_SOAK=1` makes tests/reliability run longer: 60 SIGKILLs instead of 20, a 60,000-event MQTT
flood instead of 12,000, ten times the hypothesis examples, 200 schemathesis examples per
operation. The figures go to a JSON file (`--figures`, default under /tmp), and with `--render`
RELIABILITY.md is written from them (tests/reliability/render.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bounded", action="store_true", help="the CI form, not the soak")
    parser.add_argument("--kills", type=int, help="SIGKILLs in the kill loop")
    parser.add_argument("--seed", type=int, help="seed of the kill loop")
    parser.add_argument("--figures", type=Path,
                        default=Path(f"/tmp/syncd-reliability-{os.getpid()}.json"))
    parser.add_argument("--render", type=Path, help="write RELIABILITY.md here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    env = {**os.environ, "SYNCD_RELIABILITY_FIGURES": str(args.figures)}
    if not args.bounded:
        env["SYNCD_SOAK"] = "1"
    if args.kills is not None:
        env["SYNCD_KILLS"] = str(args.kills)
    if args.seed is not None:
        env["SYNCD_KILL_SEED"] = str(args.seed)
    args.figures.unlink(missing_ok=True)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rxX",
           "--timeout", "3600", "tests/reliability", *args.pytest_args]
    print("$", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
    print(f"reliability suite: exit {code} after {time.monotonic() - started:.0f} s; "
          f"figures in {args.figures}", flush=True)
    if args.render is not None and args.figures.exists():
        text = subprocess.run([sys.executable, "-m", "tests.reliability.render",
                               str(args.figures)], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout
        args.render.write_text(text)
        print(f"wrote {args.render}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
