"""The mark of a run that found no work, so `ppcli manager` does not keep it (issue 23).

The manager's control loops start an archive (or dispatch) run only when the store says there
is work, but another run may take that work first (a race): the run then finds nothing. Such a
run ends in a Completed state with the message NOTHING_DONE (`tasks.states.nothing_done`), and
the control loop that started it deletes it once it is over (podcastpile/cli/control.py): an
idle manager's run list holds runs that did something.
"""

from __future__ import annotations

NOTHING_DONE = "nothing to do"
