"""User-facing errors and the one CLI wrapper that turns them into a line and exit status 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2, no traceback."""


def cli_main(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a console-script ``main`` so user errors and Ctrl-C end cleanly."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:  # output piped into `head` and closed early
            sys.stderr.close()
            sys.exit(0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
