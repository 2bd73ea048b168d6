"""`python -m agent --config agent.json [--port P] [--controller-url URL]`: the host agent."""

from __future__ import annotations

import argparse
import os
import sys

from agent.agent_config import agent_config, load_agent_config
from llumctl.errors import LlumctlError
from llumctl.heap import freeze_startup_heap
from llumctl.listen import bind_tcp, server_config
from llumctl.logsetup import setup_logging


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from agent.server import create_app

    p = argparse.ArgumentParser(prog="python -m agent")
    p.add_argument("--config")
    p.add_argument("--agent-id", dest="agent_id")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--controller-url", dest="controller_url")
    p.add_argument("--max-instances", type=int, dest="max_instances")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    setup_logging()
    try:
        if args.config:
            config = load_agent_config(args.config, **overrides)
        else:
            config = agent_config({"secret": os.environ.get("LLUMCTL_SECRET", ""), **overrides})
    except LlumctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    app = create_app(config)
    host = config.bind or config.host
    try:
        sock = bind_tcp(host, config.port)
    except LlumctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    server = uvicorn.Server(server_config(app, host, config.port))

    def stop() -> None:
        server.should_exit = True

    app.api.state.agent.on_shutdown = stop
    freeze_startup_heap()  # the agent hosts sim instances' streams in this process
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
