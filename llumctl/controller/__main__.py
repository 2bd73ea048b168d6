"""`python -m llumctl.controller [--config FILE] [--host H] [--port P] [--secret S]`."""

from __future__ import annotations

import argparse
import os
import sys

from llumctl.controller.config import ControllerConfig, config_from_dict, load_config
from llumctl.errors import LlumctlError
from llumctl.heap import freeze_startup_heap
from llumctl.listen import bind_tcp, server_config
from llumctl.logsetup import setup_logging


def parse_args(argv: list[str] | None = None) -> ControllerConfig:
    p = argparse.ArgumentParser(prog="python -m llumctl.controller")
    p.add_argument("--config", help="TOML or JSON controller config")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--secret", help="cluster secret (default: $LLUMCTL_SECRET)")
    p.add_argument("--policy")
    p.add_argument("--policy-period-s", type=float, dest="policy_period_s")
    args = p.parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "secret": args.secret or os.environ.get("LLUMCTL_SECRET"),
        "policy": args.policy,
        "policy_period_s": args.policy_period_s,
    }
    if args.config:
        return load_config(args.config, **overrides)
    return config_from_dict({k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from llumctl.controller.app import create_app

    setup_logging()
    try:
        config = parse_args(argv)
    except LlumctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if not config.secret:
        print("error: a cluster secret is required (--secret or LLUMCTL_SECRET)", file=sys.stderr)
        sys.exit(2)
    try:
        sock = bind_tcp(config.host, config.port)
    except LlumctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    app = create_app(config)
    freeze_startup_heap()
    uvicorn.Server(server_config(app, config.host, config.port)).run(sockets=[sock])


if __name__ == "__main__":
    main()
