"""`python -m tests.dataset.slow_export DATABASE_URL OUT [PAUSE]`: an export that pauses after every
episode (PAUSE seconds, default 0.05), so a test can kill it (SIGKILL) while a shard is half-written.

The pause is the export's own progress callback: the exporter itself runs unchanged.
"""

from __future__ import annotations

import sys
import time

from podcastpile.dataset.export import export_dataset
from podcastpile.dataset.writer import WriterLimits
from podcastpile.store import make_engine

# Five episodes per shard, one per row group: a shard file grows row group by row group.
LIMITS = WriterLimits(max_rows=5, row_group_rows=1)


def main(database_url: str, out: str, pause: str = "0.05") -> None:
    engine = make_engine(database_url)
    seconds = float(pause)
    export_dataset(engine, out, limits=LIMITS, chunk_size=1, on_progress=lambda n: time.sleep(seconds))


if __name__ == "__main__":
    main(*sys.argv[1:])
