"""The `msunet` command line: the only argv parser. Each subcommand calls one library function.

Library functions raise; this module turns their errors into one readable line on stderr and a
non-zero exit code, never a traceback from deep inside Keras.
"""

from __future__ import annotations

import argparse
import sys

from msunet import __version__

EXIT_USAGE = 2


def _load_model_config(args: argparse.Namespace):
    from msunet.config import ModelConfig

    config = ModelConfig.from_json(args.config) if args.config else ModelConfig()
    return config.override(args.set or [])


def cmd_summary(args: argparse.Namespace) -> int:
    from msunet.models import build_model, parse_size, summarize

    size = parse_size(args.size) if args.size else None
    config = _load_model_config(args)
    if args.save_config:
        config.to_json(args.save_config)
    if size is not None and config.input_size is None:
        config = config.replace(input_size=size)  # so that every layer shows its real shape
    print(summarize(build_model(config), size))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msunet", description="Multi-scale U-Net segmentation for Keras 3: a mask at every decoder scale."
    )
    parser.add_argument("--version", action="version", version=f"msunet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("summary", help="build a model and print its layers, parameters and output shapes")
    p.add_argument("--config", help="model config JSON file (default: the built-in defaults)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable), e.g. depth=3"
    )
    p.add_argument("--size", help="input size HxW for which to print each output's shape, e.g. 256x256")
    p.add_argument("--save-config", metavar="FILE", help="also write the resolved config to FILE")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # ConfigError is a ValueError
        print(f"msunet {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
