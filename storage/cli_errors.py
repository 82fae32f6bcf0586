"""How every ``compress-*`` command reports a failure: one line, the right exit status.

All four CLIs build their click group with ``compress_group``. A ``CompressError`` (or an
``OSError`` naming a file, or an error re-raised from a DataLoader worker) raised by a
command is printed as ``Error: <message>`` on one line, with exit status 2 for usage errors
and 1 for data errors. The full traceback is shown only with ``--debug`` (an option of every
group) or ``COMPRESS_DEBUG=1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import click

from storage.errors import CompressError

DEBUG_ENV = "COMPRESS_DEBUG"
_DEBUG_META = "compress.debug"  # set by --debug for this invocation only (the environment is left alone)
_WORKER_MARK = "Original Traceback"
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)\w*: (.*)$")


def debug_enabled() -> bool:
    """True when ``COMPRESS_DEBUG`` is set to a true value."""
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line.

    An error re-raised by a DataLoader worker carries the worker's whole traceback in its
    message; its last ``SomeError: message`` line is the message.
    """
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip() or type(error).__name__
    if _WORKER_MARK in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for line in reversed(lines):
            match = _EXC_LINE.match(line)
            if match:
                return match.group(1)
        return lines[-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def exit_code(error: BaseException) -> int:
    """2 for usage errors, 1 for data errors (``CompressError.exit_code``; 1 for ``OSError``)."""
    return int(getattr(error, "exit_code", 1))


class CompressGroup(click.Group):
    """A click group whose commands report ``CompressError`` / ``OSError`` as one line.

    Adds ``--debug`` (show tracebacks) to the group.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["--debug"], is_flag=True, expose_value=False, is_eager=True,
            callback=_set_debug, help=f"Show full tracebacks of errors (also: {DEBUG_ENV}=1).",
        ))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CompressError, OSError) as error:
            if ctx.meta.get(_DEBUG_META) or debug_enabled():
                raise
            click.echo(f"Error: {one_line(error)}", err=True)
            ctx.exit(exit_code(error))


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG_META] = True


def compress_group(**kwargs: Any) -> Callable[[Callable[..., Any]], CompressGroup]:
    """``@click.group`` for a ``compress-*`` CLI (``-h``/``--help``, ``--debug``, one-line errors)."""
    settings = {"help_option_names": ["-h", "--help"], **kwargs.pop("context_settings", {})}
    return click.group(cls=CompressGroup, context_settings=settings, **kwargs)
