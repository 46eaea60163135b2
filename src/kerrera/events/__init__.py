"""Events: what a running job tells the world, and how.

Progress reports (`job.progress()`: throttled, stored in `meta["progress"]` and
published), pub/sub (`subscribe`/`publish`, job events while someone listens), the wire
form of those events on the notification channel, and insert telemetry. Sits above the
queue runtime, which publishes through the `JobEvents` contract it defines.
"""

# Loading the package installs the progress reporter that `Job.progress()` calls.
from kerrera.events import progress as progress
