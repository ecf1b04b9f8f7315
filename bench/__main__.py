"""``python -m bench``: measure the bot and print one table; the figures go to bench-report.json.

    python -m bench                     # every figure (about 3 minutes on 2 cores)
    python -m bench --only 1,4          # some figures
    python -m bench --no-real-vllm      # skip the real-vLLM row of figure 3

Figures (the issue's numbering): 1 cost per turn, 2 bookkeeping against history length,
3 prefix-cache reuse, 4 storage, 5 memory, 6 start-up. Each is measured next to a baseline in
the same run; see each module's docstring for what exactly is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import history, memory, prefix, startup, storage, turns
from bench.common import Row, render_table

REPO = Path(__file__).resolve().parents[1]


async def _figure_1(work: Path, args: argparse.Namespace) -> list[Row]:
    plan = turns.Plan(rounds=args.rounds)
    return turns.rows(turns.summarise(await turns.measure(work, plan)))


async def _figure_2(work: Path, args: argparse.Namespace) -> list[Row]:
    return history.rows(await history.measure(work))


async def _figure_3(work: Path, args: argparse.Namespace) -> list[Row]:
    sim = await asyncio.to_thread(prefix.simulate, work)
    if args.no_real_vllm:
        real: dict[str, Any] = {"not_run": "skipped (--no-real-vllm)"}
    else:
        real = await prefix.real_vllm(work, prefix.TURNS)
    return prefix.rows(sim, real)


async def _figure_4(work: Path, args: argparse.Namespace) -> list[Row]:
    return storage.rows(await storage.measure(work))


async def _figure_5(work: Path, args: argparse.Namespace) -> list[Row]:
    return memory.rows(await memory.measure(work))


async def _figure_6(work: Path, args: argparse.Namespace) -> list[Row]:
    return startup.rows(await startup.measure(work))


Figure = Callable[[Path, argparse.Namespace], Awaitable[list[Row]]]
# Run order: the CPU-sensitive ones first, the real vLLM (2 GB, both cores) last.
FIGURES: dict[str, tuple[str, Figure]] = {
    "6": ("start-up", _figure_6),
    "1": ("cost per turn", _figure_1),
    "2": ("bookkeeping against history length", _figure_2),
    "5": ("memory", _figure_5),
    "4": ("storage", _figure_4),
    "3": ("prefix-cache reuse", _figure_3),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", help="comma-separated figure numbers (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-report.json")
    parser.add_argument("--rounds", type=int, default=3, help="figure 1: rounds per variant")
    parser.add_argument("--no-real-vllm", action="store_true", help="figure 3: skip real vLLM")
    return parser  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    wanted = set(args.only.split(",")) if args.only else set(FIGURES)
    unknown = wanted - set(FIGURES)
    if unknown:
        print(f"unknown figure(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="vllm-discord-bot-bench-") as tmp:
        for number, (title, figure) in FIGURES.items():
            if number not in wanted:
                continue
            print(f"[bench] figure {number}: {title} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            work = Path(tmp) / f"figure{number}"
            work.mkdir()
            try:
                rows += await figure(work, args)
            except Exception as exc:  # one broken figure must not hide the others
                failed = True
                traceback.print_exc()
                rows.append(Row(number, title, f"error: {type(exc).__name__}: {exc}"[:200]))
            timings[number] = round(time.monotonic() - t0, 1)
            print(f"[bench] figure {number} took {timings[number]} s", file=sys.stderr)
    rows.sort(key=lambda r: r.figure)
    wall = time.monotonic() - started
    table = render_table(rows)
    print(table)
    print(f"\nwall time {wall:.0f} s ({', '.join(f'{k}: {v} s' for k, v in timings.items())})")
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "wall_seconds": round(wall, 1),
        "figure_seconds": timings,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": [asdict(r) | {"met": r.met} for r in rows],
        "table": table,
    }
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {args.out}")
    return 1 if failed else 0


def main() -> int:
    return asyncio.run(run(_parser().parse_args()))


if __name__ == "__main__":
    sys.exit(main())
