"""`hali` turns bad input into one line on stderr that names the problem and the fix, and exit status 2."""

import numpy as np
import pytest
from PIL import Image

from ml_backend.cli import main


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("HALI_LS_URL", "http://127.0.0.1:1")  # nothing listens on port 1
    monkeypatch.setenv("HALI_LS_API_KEY", "0" * 40)
    monkeypatch.setenv("HALI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HALI_LS_FILES_ROOT", str(tmp_path / "files"))
    return tmp_path


def _run(capsys, *argv):
    code = main(["preprocess", *argv, "--project", "p", "--no-progress"])
    return code, capsys.readouterr().err


def test_missing_slide_names_the_path(env, capsys):
    code, err = _run(capsys, str(env / "nope.svs"))
    assert code == 2 and "nope.svs" in err and "Traceback" not in err


def test_corrupt_slide_says_what_to_do(env, capsys):
    bad = env / "broken.svs"
    bad.write_bytes(b"\x00garbage" * 100)
    code, err = _run(capsys, str(bad))
    assert code == 2 and "broken.svs" in err


def test_slide_without_mpp_asks_for_mpp(env, capsys):
    png = env / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(png)
    code, err = _run(capsys, str(png))
    assert code == 2 and "--mpp" in err


def test_label_studio_down_is_a_clear_error(env, capsys):
    png = env / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(png)
    code, err = _run(capsys, str(png), "--mpp", "0.5")
    assert code == 2 and "unreachable" in err and "HALI_LS_URL" in err


def test_preprocess_without_a_slide_or_project_says_what_to_give(env, capsys):
    assert main(["preprocess", "--project", "p"]) == 2
    assert "give a slide" in capsys.readouterr().err


def test_preprocess_status_with_redis_down_names_the_url(env, capsys):
    code = main(["preprocess", "--status", "--redis-url", "redis://127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert code == 2 and "redis://127.0.0.1:1/0" in err and "--redis-url" in err


def test_a_folder_without_slides_is_a_clear_error(env, capsys):
    (env / "empty").mkdir()
    code, err = _run(capsys, str(env / "empty"))
    assert code == 2 and "holds no slides" in err
