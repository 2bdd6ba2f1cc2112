"""`hali serve` under gunicorn: its options, and a bad worker count refused before anything starts."""

from __future__ import annotations

import pytest

from ml_backend.cli import main
from ml_backend.http.server import WORKER_TIMEOUT_S, gunicorn_options


def test_gunicorn_binds_loopback_with_threads_and_outlasts_label_studios_predict_timeout():
    options = gunicorn_options("127.0.0.1", 9090, workers=3, threads=2)
    assert options["bind"] == "127.0.0.1:9090" and options["workers"] == 3 and options["threads"] == 2
    assert options["worker_class"] == "gthread" and options["control_socket_disable"] is True
    assert WORKER_TIMEOUT_S > 100  # Label Studio waits up to 100 s for /predict


@pytest.mark.parametrize("flag", ["--workers", "--threads"])
def test_serve_refuses_fewer_than_one_worker_or_thread(capsys, flag):
    assert main(["serve", "--port", "1", flag, "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_access_log_is_off_by_default_and_ends_each_line_with_the_microseconds_taken():
    assert gunicorn_options("127.0.0.1", 9090, workers=1, threads=1)["accesslog"] is None
    options = gunicorn_options("127.0.0.1", 9090, workers=1, threads=1, access_log="/tmp/access.log")
    assert options["accesslog"] == "/tmp/access.log" and options["access_log_format"].endswith("%(D)s")
