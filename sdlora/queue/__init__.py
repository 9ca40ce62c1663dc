"""A queue of trainings on disk: jobs run one after another, each as its own `sdlora train` process.

`store` owns the queue file (outputs/queue.json, written atomically) and the job states; `runner` runs the jobs.
The app and the command line share the one file; one runner at a time holds `outputs/.queue/runner.lock`.
"""

from sdlora.queue.store import STATES, Job, Queue

__all__ = ["STATES", "Job", "Queue"]
