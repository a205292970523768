"""Agreeing on failure: a bad input on any rank stops every rank, and no rank hangs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import EdgempiError
from .communicator import Communicator

T = TypeVar("T")


class JobError(Exception):
    """Raised on every rank when any rank met bad input; the message is the first rank's."""


def collectively(comm: Communicator, step: Callable[[], T]) -> T | None:
    """Run ``step`` on every rank, then agree: if it raised ``EdgempiError`` on any rank,
    every rank raises ``JobError`` with the lowest failing rank's message.

    Collective: every rank of ``comm`` must call it, in the same order.
    """
    try:
        result, error = step(), None
    except EdgempiError as exc:
        result, error = None, str(exc)
    errors = comm.allgather(error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise JobError(first)
    return result
