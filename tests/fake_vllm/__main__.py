"""`python -m tests.fake_vllm`: run FakeVLLM as a process (until SIGTERM/SIGINT).

Every `ServerConfig` and `Script` field is a flag (`--max-model-len 512`, `--rate 20`,
`--cut-after 3 --cut rst`); script flags set the default script. `--script FILE` reads
`{"server": {...}, "default": {...}, "queue": [{...}, ...]}`; flags override it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from .script import Script, ServerConfig, from_dict
from .server import FakeVLLM


def _converter(type_name: str) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        if value.lower() == "none" and "None" in type_name:
            return None
        if type_name.startswith("bool"):
            return value.lower() in ("1", "true", "yes")
        if type_name.startswith("int"):
            return int(value)
        if type_name.startswith("float"):
            return float(value)
        return value

    return convert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_vllm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--script", help="JSON file: {server, default, queue}")
    for cls in (ServerConfig, Script):
        group = parser.add_argument_group(cls.__name__)
        for f in dataclasses.fields(cls):
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f"{cls.__name__}.{f.name}",
                metavar=str(f.type).split(" ")[0].upper(),
                type=_converter(str(f.type)),
                default=argparse.SUPPRESS,
                help=f"({f.type}, default {f.default!r})",
            )
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> FakeVLLM:
    spec: dict[str, Any] = {}
    if args.script:
        with open(args.script, encoding="utf-8") as fh:
            spec = json.load(fh)
    flags = vars(args)
    server = dict(spec.get("server", {}))
    default = dict(spec.get("default", {}))
    for key, value in flags.items():
        cls_name, _, name = key.partition(".")
        if cls_name == "ServerConfig":
            server[name] = value
        elif cls_name == "Script":
            default[name] = value
    config = from_dict(ServerConfig, server)
    fake = FakeVLLM(
        **dataclasses.asdict(config),
        default=from_dict(Script, default),
        host=args.host,
        port=args.port,
        control_port=args.control_port,
    )
    fake.push(*(from_dict(Script, s) for s in spec.get("queue", [])))
    return fake


async def main(argv: list[str] | None = None) -> None:
    fake = build(parse_args(argv))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        ready = {"port": fake.port, "control_port": fake.control_port, "base_url": fake.base_url}
        print(json.dumps(ready), flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
