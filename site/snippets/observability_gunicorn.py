"""A gunicorn.conf.py for prometheus_client's multiprocess mode (run here with a fake worker)."""
import os
import tempfile

os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()  # (setup: a fresh directory)

# --8<-- [start:conf]
# gunicorn.conf.py
import os

from prometheus_client import multiprocess

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/prometheus")  # empty it before start


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
# --8<-- [end:conf]


class Worker:
    pid = os.getpid()


child_exit(None, Worker())
