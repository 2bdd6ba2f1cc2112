"""The stack supervisor's restart rule (scripts/supervisor.py), with stand-in services: no process is started."""

from __future__ import annotations

import json

import pytest

from scripts.services import StackError
from scripts.stack import StackConfig
from scripts.supervisor import MAX_DELAY_S, Supervisor


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self):
        return None


def _supervisor(tmp_path, alive: dict, fail: set):
    pids = {}

    def starter(name):
        def start():
            if name in fail:
                raise StackError(f"{name} would not start")
            alive[name] = True
            return FakeProc(100 + len(pids))
        return start

    sup = Supervisor({"worker": starter("worker")}, read_pid=lambda n: 1 if alive.get(n) else None,
                     write_pid=lambda n, p: pids.__setitem__(n, p), record_path=tmp_path / "sup.json",
                     log=lambda m: None)
    return sup, pids


def test_a_service_that_dies_is_restarted_and_counted(tmp_path):
    alive = {"worker": True}
    sup, pids = _supervisor(tmp_path, alive, set())
    sup.check_once()
    assert pids == {}, "a running service is left alone"
    alive["worker"] = False
    sup.check_once()  # seen dead: waits its delay (1 s) first
    sup.watches["worker"].next_start = 0.0
    sup.check_once()
    assert alive["worker"] and pids == {"worker": 100}
    assert json.loads((tmp_path / "sup.json").read_text())["worker"]["restarts"] == 1


def test_a_first_start_is_not_a_restart_and_failures_back_off(tmp_path):
    sup, _ = _supervisor(tmp_path, {}, {"worker"})
    sup.check_once()
    watch = sup.watches["worker"]
    assert watch.restarts == 0 and "would not start" in watch.last_error
    assert [Supervisor.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, MAX_DELAY_S, MAX_DELAY_S]


@pytest.mark.parametrize("value", ["mysql", "postgresql"])
def test_an_unknown_label_studio_database_is_refused_with_the_choices(value, tmp_path):
    with pytest.raises(StackError, match="choose postgres, sqlite or auto"):
        StackConfig.from_env({"HALI_LS_DB": value, "HALI_STATE_DIR": str(tmp_path)})


def test_the_database_defaults_to_auto_and_worker_counts_must_be_positive(tmp_path):
    assert StackConfig.from_env({"HALI_STATE_DIR": str(tmp_path)}).ls_db == "auto"
    with pytest.raises(StackError, match="HALI_LS_WORKERS"):
        StackConfig.from_env({"HALI_STATE_DIR": str(tmp_path), "HALI_LS_WORKERS": "0"})
