# acme_cli.py: a command for the corestore CLI, installed through the "corestore.cli" entry-point group
from corestore.cli import add_command, config_path, emit


def _arguments(parser):
    parser.add_argument("who")


def _run(args):  # returns the exit code
    emit(args, {"hello": args.who, "config": config_path(args)}, f"hello {args.who}")
    return 0


def register(subparsers):
    add_command(subparsers, "acme-hello", "greet someone", _arguments, _run)
