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


# Every case below fails before Label Studio is called (it is down in these tests), in seconds, in one line.

def _one_line_before_ls(code, err, *expected):
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "unreachable" not in err, "bad input must be caught before any Label Studio call"
    for text in expected:
        assert text in err, (text, err)


@pytest.fixture
def demo_tiff(env):
    from tests.broken_slides import ihc_image, write_slide

    return write_slide(env / "demo.tiff", ihc_image())


def test_truncated_slide_says_it_is_truncated(env, demo_tiff, capsys):
    from tests.broken_slides import truncated_copy

    cut = truncated_copy(demo_tiff, env / "half.tiff", 0.5)
    _one_line_before_ls(*_run(capsys, str(cut)), "half.tiff", "truncated or corrupt", "copy it again")


def test_random_bytes_named_like_a_slide_are_called_corrupt(env, capsys):
    bad = env / "scan.tiff"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    _one_line_before_ls(*_run(capsys, str(bad)), "scan.tiff", "corrupt", "pyramidal TIFF")


def test_unknown_format_is_named(env, capsys):
    notes = env / "slide.txt"
    notes.write_text("not an image\n")
    _one_line_before_ls(*_run(capsys, str(notes)), "slide.txt", "extension '.txt'", "PNG/JPEG/TIFF")


def test_directory_and_empty_file_are_told_apart(env, capsys):
    folder = env / "case7.mrxs"
    folder.mkdir()
    _one_line_before_ls(*_run(capsys, str(folder)), "case7.mrxs is a directory")
    empty = env / "case8.svs"
    empty.touch()
    _one_line_before_ls(*_run(capsys, str(empty)), "case8.svs is empty (0 bytes)")


def test_blank_slide_says_no_tissue(env, capsys):
    from tests.broken_slides import write_slide

    blank = write_slide(env / "blank.tiff", np.full((1024, 1024, 3), 255, np.uint8))
    _one_line_before_ls(*_run(capsys, str(blank)), "blank.tiff shows no tissue", "right file")


def test_unreadable_backbone_checkpoint_fails_before_segmentation(env, demo_tiff, capsys):
    ckpt = env / "resnet18.pt"
    ckpt.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 46827520\n")
    code, err = _run(capsys, str(demo_tiff), "--checkpoint", str(ckpt))
    _one_line_before_ls(code, err, "resnet18.pt is a Git LFS pointer", "git lfs pull")


def test_backbone_checkpoint_of_another_model_names_its_keys(env, demo_tiff, capsys):
    import torch

    ckpt = env / "other.pt"
    torch.save({"encoder.conv.weight": torch.zeros(3)}, ckpt)
    code, err = _run(capsys, str(demo_tiff), "--checkpoint", str(ckpt))
    _one_line_before_ls(code, err, "other.pt does not fit ResNet-18", "missing keys", "encoder.conv.weight")


def test_truncated_hovernet_weights_fail_before_segmentation(env, demo_tiff, capsys):
    import torch

    weights = env / "hovernet.tar"
    torch.save({"desc": {"conv0./.weight": torch.zeros(64, 3, 7, 7)}}, weights)
    weights.write_bytes(weights.read_bytes()[:300])
    code, err = _run(capsys, str(demo_tiff), "--segmenter-weights", str(weights))
    _one_line_before_ls(code, err, "hovernet.tar", "truncated or corrupt")


def test_multi_line_library_messages_are_folded_to_one_line():
    from ml_backend.cli import one_line

    assert one_line("Weights only load failed.\n\t(1) \x1b[1mdo this\x1b[0m\n(2) or that") == \
        "Weights only load failed. (1) do this (2) or that"


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
