"""``colbert-index`` command line: build | index-texts | add | delete | compact | search | serve | info | bench |
demo (:mod:`.parser`); the commands live in :mod:`.commands` (index files), :mod:`.texts` (passage files and a
model) and :mod:`.demo` (demo and bench)."""

from __future__ import annotations

import sys

from colbert_index.cli.parser import build_parser
from colbert_index.errors import DeviceUnavailableError, IndexLockedError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a "*" positional at the first option: `search INDEX --model M "text"` leaves "text" over.
    if extra and args.command == "search" and not any(e.startswith("-") for e in extra):
        args.args += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"colbert-index: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # unknown ids
        print(f"colbert-index: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not isinstance(e, (IndexLockedError, DeviceUnavailableError)):
            raise
        print(f"colbert-index: error: {e}", file=sys.stderr)
        return 2
