"""The scheduled release job: build whichever release of a schedule is due and not yet
published (:mod:`lcstore.ops.release_job`). Run it from cron or any scheduler::

    python pipelines/release_job.py SCHEDULE.toml [--today YYYY-MM-DD] [--scheduler ADDRESS]

Exit status: 0 done (or nothing due), 1 a build failed, 2 bad schedule (or a due release's
cutoffs earlier than the latest release's), 75 store busy.
"""

import sys

from lcstore.ops.release_job import main

if __name__ == "__main__":
    sys.exit(main())
