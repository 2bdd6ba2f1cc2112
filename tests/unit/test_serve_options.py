"""`hali serve` under gunicorn: its options, and a bad worker count refused before anything starts."""

from __future__ import annotations

import os

import pytest

from ml_backend.cli import main
from ml_backend.http.server import WORKER_TIMEOUT_S, exit_worker_now, gunicorn_options


def test_gunicorn_binds_loopback_with_threads_and_outlasts_label_studios_predict_timeout():
    options = gunicorn_options("127.0.0.1", 9090, workers=3, threads=2)
    assert options["bind"] == "127.0.0.1:9090" and options["workers"] == 3 and options["threads"] == 2
    assert options["worker_class"] == "gthread" and options["control_socket_disable"] is True
    assert WORKER_TIMEOUT_S > 100  # Label Studio waits up to 100 s for /predict


@pytest.mark.parametrize("flag", ["--workers", "--threads"])
def test_serve_refuses_fewer_than_one_worker_or_thread(capsys, flag):
    assert main(["serve", "--port", "1", flag, "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


class _Worker:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def _exit_status_of_a_worker_leaving_with(leave) -> int:
    """Fork a child that plays a gunicorn worker: it leaves by ``leave()`` and runs the hook in ``finally``."""
    pid = os.fork()
    if pid == 0:  # the child: exits through the hook, or with 99 if the hook returned
        try:
            leave()
        except SystemExit:
            exit_worker_now(None, _Worker(os.getpid()))  # as in gunicorn's finally: the SystemExit is in flight
        os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_worker_leaves_at_once_with_the_status_it_was_leaving_with():
    def boot_error():
        raise SystemExit(3)  # gunicorn's WORKER_BOOT_ERROR: the master must see it to halt

    def served():
        raise SystemExit(0)

    assert exit_worker_now in gunicorn_options("127.0.0.1", 9090, workers=1, threads=1).values()
    assert _exit_status_of_a_worker_leaving_with(boot_error) == 3
    assert _exit_status_of_a_worker_leaving_with(served) == 0


def test_the_hook_does_nothing_in_the_master_for_a_worker_already_gone():
    assert exit_worker_now(None, _Worker(os.getpid() + 1)) is None  # still here: it returned
