"""Command line: `chatterbox-realtime serve|make-checkpoint|settings`."""

from __future__ import annotations

import argparse
import sys

from app.engine.chatterbox.model_names import MODEL_KINDS, SIZES
from app.settings import add_arguments, load_settings, settings_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatterbox-realtime", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP/WebSocket server")
    add_arguments(serve)

    make = commands.add_parser("make-checkpoint", help="write a synthetic checkpoint in the official layout")
    make.add_argument("--model", choices=MODEL_KINDS, default="standard",
                      help="which model's official layout: standard (ResembleAI/chatterbox), turbo "
                           "(ResembleAI/chatterbox-turbo), multilingual (ResembleAI/chatterbox's multilingual files)")
    make.add_argument("--size", choices=SIZES, default="tiny")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("directory")

    commands.add_parser("settings", help="print the settings table (markdown)")

    args = parser.parse_args(argv)
    if args.command == "serve":
        from app.server.app import serve as run_server

        return run_server(load_settings(args))
    if args.command == "make-checkpoint":
        from app.engine.chatterbox.checkpoint import CHECKPOINT_WRITERS

        CHECKPOINT_WRITERS[args.model](args.directory, size=args.size, seed=args.seed)
        print(f"wrote a {args.size} synthetic {args.model} checkpoint to {args.directory}")
        return 0
    print(settings_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
