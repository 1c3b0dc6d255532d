"""Final states the flows return on purpose."""

from __future__ import annotations

from typing import Any

from prefect.states import Completed, State

from podcastpile.nothing_done import NOTHING_DONE


def nothing_done(result: Any) -> State:
    """Completed, with `result` as its value and the "nothing to do" mark as its message: the
    manager deletes such a run it started (podcastpile/nothing_done.py). A caller of the flow
    function still gets `result`."""
    return Completed(message=NOTHING_DONE, data=result)
