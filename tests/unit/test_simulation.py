"""`hali simulate`'s core: the oracle replay, its time model, and the learning curves, on synthetic cells."""

import numpy as np
import pytest
import torch

from ml_backend.simulation.dataset import CellDataset, parse_class_map, split_pool_test
from ml_backend.simulation.effectiveness import curve_area, label_grid, learning_curve
from ml_backend.simulation.efficiency import (
    ReplayConfig,
    TimeModel,
    replay_annotator,
    summarize_replay,
)
from ml_backend.simulation.tasks import group_tasks, spatial_order


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _blobs(n_per_class=60, n_classes=3, d=8, seed=0):
    """Gaussian clusters far apart: features (N, d) float32 and classes (N,) in blocks of n_per_class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(n_classes, d))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32), y


def _dataset(n_images=4, per_image=30, seed=0):
    rng = np.random.default_rng(seed)
    image = np.repeat([f"img{i}_{k:03d}" for i in range(n_images // 2) for k in range(2)], per_image)
    source = np.array([name.rsplit("_", 1)[0] for name in image])
    xy = rng.uniform(0, 256, size=(len(image), 2))
    split = np.where(np.char.startswith(source, "img0"), "test", "train")
    return CellDataset(image, source, xy, rng.integers(0, 2, len(image)), ("a", "b"), split)


def test_time_model_all_suggestions_right_costs_the_task_plus_a_tenth_per_cell():
    assert TimeModel().task_cost(10, n_wrong=0) == pytest.approx(3 + 1.0)
    assert TimeModel().task_cost(10, n_wrong=2) == pytest.approx(3 + 1.0 + 2)
    assert TimeModel().task_cost(10, n_wrong=None) == pytest.approx(3 + 10)


def test_replay_labels_every_cell_at_most_once_and_stops_after_the_budget():
    x, y = _blobs()
    tasks = group_tasks(np.zeros(len(y), dtype=int), 20)
    replay = replay_annotator(x, y, tasks, 3, ReplayConfig("entropy", max_labels=70, retrain_every=30, max_epochs=10))
    assert len(np.unique(replay.order)) == len(replay.order) == 80  # four whole 20-cell tasks
    assert sum(len(t.cells) for t in replay.tasks) == 80


def test_sequential_control_labels_cells_in_walking_order():
    x, y = _blobs()
    tasks = group_tasks(np.repeat([0, 1], 90), 25)  # 90 = 3 x 23 + 21: short last task of each source
    replay = replay_annotator(x, y, tasks, 3, ReplayConfig("sequential", max_labels=len(y), retrain_every=1000))
    np.testing.assert_array_equal(replay.order, np.arange(len(y)))


def test_focused_tasks_box_only_k_cells():
    x, y = _blobs()
    replay = replay_annotator(x, y, group_tasks(np.zeros(len(y), int), 50), 3,
                              ReplayConfig("margin", focus_cells=5, max_labels=30, retrain_every=10, max_epochs=10))
    assert [len(t.cells) for t in replay.tasks] == [5] * 6
    assert len(set(replay.order.tolist())) == 30


def test_on_separable_cells_suggestions_are_accepted_and_labelling_speeds_up():
    x, y = _blobs()
    replay = replay_annotator(x, y, group_tasks(np.zeros(len(y), int), 10), 3,
                              ReplayConfig("coreset", max_labels=100, retrain_every=20, ready_after=20, max_epochs=20))
    summary = summarize_replay(replay)
    assert summary["acceptance_share"] >= 0.85
    assert summary["speedup_assisted"] > 2.0  # 13 / (3 + 1 + wrong) per 10-cell task


def test_uncertainty_sampling_finds_every_class_where_the_control_sees_one():
    x, y = _blobs(seed=1)
    xt, yt = _blobs(seed=1)[0] + 0.1, y  # same clusters, shifted test cells
    walk = np.argsort(y, kind="stable")  # a walk through one class after another: the control's worst case
    tasks = group_tasks(np.zeros(len(y), int), 5)
    grid = [10, 20, 30]
    curves = {}
    for strategy in ("entropy", "sequential"):
        config = ReplayConfig(strategy, max_labels=30, retrain_every=10, max_epochs=20)
        replay = replay_annotator(x[walk], y[walk], tasks, 3, config)
        curve = learning_curve(x[walk], y[walk], replay.order, xt, yt, grid, 3, max_epochs=20)
        curves[strategy] = curve["accuracy"]
    assert curves["entropy"][-1] > 0.9
    assert curves["sequential"][-1] < 0.5  # 30 labels of one class
    assert curve_area(grid, curves["entropy"]) > curve_area(grid, curves["sequential"])


def test_replay_is_deterministic_under_a_seed():
    x, y = _blobs()
    tasks = group_tasks(np.zeros(len(y), int), 10)
    config = ReplayConfig("random", max_labels=40, retrain_every=20, max_epochs=10, random_state=3)
    a, b = replay_annotator(x, y, tasks, 3, config), replay_annotator(x, y, tasks, 3, config)
    np.testing.assert_array_equal(a.order, b.order)
    assert a.tasks == b.tasks


def test_group_tasks_never_crosses_a_source_and_keeps_sizes_near_the_target():
    source = np.repeat(["a", "b"], [45, 7])
    task = group_tasks(source, 20)
    assert set(task[:45]).isdisjoint(task[45:])
    assert np.bincount(task).tolist() == [15, 15, 15, 7]


def test_spatial_order_walks_one_source_at_a_time():
    data = _dataset()
    walk = spatial_order(data, grid_px=64, random_state=1)
    sources = data.source[walk]
    changes = np.flatnonzero(sources[1:] != sources[:-1])
    assert len(changes) == 1 and sorted(walk.tolist()) == list(range(len(data)))


def test_split_keeps_each_source_on_one_side():
    data = _dataset()
    pool, test = split_pool_test(data)
    assert set(data.source[test]) == {"img0"} and set(data.source[pool]) == {"img1"}
    no_split = CellDataset(data.image, data.source, data.xy, data.y, data.class_names)
    pool, test = split_pool_test(no_split, test_fraction=0.5)
    assert set(data.source[pool]).isdisjoint(data.source[test])


def test_label_grid_ends_at_the_budget():
    assert label_grid(200) == [5, 10, 20, 30, 50, 75, 100, 150, 200]
    assert label_grid(60)[-2:] == [50, 60]


def test_class_map_orders_named_classes_first_and_rejects_bad_items():
    assert parse_class_map("inflammatory=TIL,*=other") == {"inflammatory": "TIL", "*": "other"}
    with pytest.raises(Exception, match="RAW=CLASS"):
        parse_class_map("inflammatory")


def test_cli_simulate_names_a_missing_table(tmp_path, capsys):
    from ml_backend.cli import main

    code = main(["simulate", "--cells-csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out")])
    assert code == 2 and "nope.csv" in capsys.readouterr().err


def _tiny_table(tmp_path) -> list[str]:
    """Three 64 px images of 12 dark or pale nuclei (2 train, 1 test); the CLI options that read them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["name,part,x,y,kind"]
    for i, split in enumerate(["train", "train", "test"]):
        pixels = np.full((64, 64, 3), 230, np.uint8)
        for k in range(12):
            x, y, dark = 8 + 16 * (k % 4), 10 + 20 * (k // 4), k % 2
            pixels[y - 3 : y + 3, x - 3 : x + 3] = (60, 20, 120) if dark else (200, 120, 160)
            rows.append(f"im{i},{split},{x + rng.uniform(-1, 1):.1f},{y},{'dark' if dark else 'pale'}")
        Image.fromarray(pixels).save(tmp_path / f"im{i}.png")
    (tmp_path / "cells.csv").write_text("\n".join(rows) + "\n")
    return ["simulate", "--cells-csv", str(tmp_path / "cells.csv"), "--images-dir", str(tmp_path),
            "--image-suffix", ".png", "--image-col", "name", "--x-col", "x", "--y-col", "y",
            "--class-col", "kind", "--split-col", "part", "--cells-per-task", "6", "--runs", "1",
            "--max-labels", "12", "--ready-after", "6", "--patch-px", "16", "--cache-dir", str(tmp_path / "cache")]


def test_cli_simulate_writes_figures_for_a_tiny_table(tmp_path):
    import json

    from ml_backend.cli import main

    code = main([*_tiny_table(tmp_path), "--strategies", "random,sequential", "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert code == 0 and report["classes"] == ["dark", "pale"] and report["pool"]["cells"] == 24
    assert {r["strategy"] for r in report["results"]} == {"random", "sequential"}
    assert (tmp_path / "out" / "learning_curves.png").is_file()


def test_reports_run_apart_merge_into_the_report_run_together(tmp_path, capsys):
    import json

    from ml_backend.cli import main
    from ml_backend.simulation.summary import main as merge_main

    options = _tiny_table(tmp_path)
    for strategies, out in (("relevance,sequential", "both"), ("relevance", "a"), ("sequential", "b")):
        assert main([*options, "--strategies", strategies, "--out", str(tmp_path / out)]) == 0
    paths = [str(tmp_path / name / "simulation.json") for name in ("a", "b")]
    assert merge_main([str(tmp_path / "merged"), *paths]) == 0
    assert "| 6 | relevance |" in capsys.readouterr().out
    merged = json.loads((tmp_path / "merged" / "simulation.json").read_text())
    both = json.loads((tmp_path / "both" / "simulation.json").read_text())
    assert [r["strategy"] for r in merged["results"]] == ["relevance", "sequential"]
    for m, b in zip(merged["results"], both["results"]):
        gain = "auc_small_gain_pct"
        assert m["balanced_accuracy"][gain] == pytest.approx(b["balanced_accuracy"][gain])
        assert m["speedup"] == pytest.approx(b["speedup"])
    other = json.loads((tmp_path / "b" / "simulation.json").read_text())
    other["settings"]["runs"] = 3
    (tmp_path / "c.json").write_text(json.dumps(other))
    assert merge_main([str(tmp_path / "bad"), paths[0], str(tmp_path / "c.json")]) == 2
    assert "runs" in capsys.readouterr().err


def test_hybrid_meets_every_class_where_coreset_misses_one():
    # The coreset weakness of docs/simulation.md: a class-by-class walk, 5-cell tasks, 30 labels.
    x, y = _blobs(seed=0)
    walk = np.argsort(y, kind="stable")
    tasks = group_tasks(np.zeros(len(y), int), 5)
    seen = {}
    for strategy in ("coreset", "hybrid"):
        config = ReplayConfig(strategy, max_labels=30, retrain_every=10, max_epochs=20)
        replay = replay_annotator(x[walk], y[walk], tasks, 3, config)
        seen[strategy] = np.bincount(y[walk][replay.order], minlength=3)
    assert (seen["coreset"] == 0).any()
    assert (seen["hybrid"] >= 5).all()


def test_paper_patch_is_balanced_and_from_one_source():
    from ml_backend.simulation.paper import balanced_patch

    y = np.r_[np.zeros(150, int), np.ones(30, int), np.zeros(120, int), np.ones(120, int)]
    source = np.r_[np.full(180, "poor"), np.full(240, "rich")]
    patch = balanced_patch(y, source, 200, random_state=0)
    assert set(source[patch]) == {"rich"} and np.bincount(y[patch]).tolist() == [100, 100]
    assert (np.diff(patch) > 0).all()  # walking order


def test_paper_protocol_on_separable_cells_nears_its_ceiling():
    from ml_backend.simulation.paper import replay_paper_patch

    x, y = _blobs(n_per_class=120, n_classes=2)
    result = replay_paper_patch(x, y, np.zeros(len(y), int), learner="logreg")
    assert result["n_cells"] == 200 and result["n_shown"] == 180
    assert result["acceptance_share"] > 0.95
    assert result["speedup"] == pytest.approx(203 / (3 + 20 + 18 + result["n_wrong"]))


def test_replay_with_logreg_and_smoothing_is_deterministic_and_learns():
    from ml_backend.model.context import spatial_neighbours

    x, y = _blobs()
    nbrs = spatial_neighbours(np.c_[np.arange(len(y)), np.zeros(len(y))], k=4)  # a line: same-class neighbours
    tasks = group_tasks(np.zeros(len(y), int), 10)
    config = ReplayConfig("spread", max_labels=60, ready_after=10, learner="logreg", smooth_alpha=0.5)
    groups = np.arange(len(y)) // 30
    a = replay_annotator(x, y, tasks, 3, config, groups=groups, neighbours=nbrs)
    b = replay_annotator(x, y, tasks, 3, config, groups=groups, neighbours=nbrs)
    np.testing.assert_array_equal(a.order, b.order)
    seen: set[int] = set()
    for task in a.tasks:  # a suggestion is wrong only where a class nobody has labelled yet first appears
        classes = set(y[list(task.cells)].tolist())
        assert not task.n_wrong or not classes <= seen
        seen |= classes


def test_cli_simulate_runs_the_paper_protocol_beside_the_campaign(tmp_path, capsys):
    import json

    from ml_backend.cli import main

    code = main([*_tiny_table(tmp_path), "--strategies", "spread,sequential", "--learner", "logreg",
                 "--context-neighbours", "3", "--smooth", "0.5", "--protocol", "campaign,paper",
                 "--paper-patch-cells", "12", "--paper-ready-after", "4", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert code == 0 and "paper protocol (12-cell balanced patch" in out and "accepted with 0-50" in out
    assert report["paper_protocol"]["runs"][0]["n_cells"] == 12
    assert report["results"][0]["acceptance_by_labels"][0]["labels"] == [0, 50]


def test_cli_simulate_refuses_an_mc_strategy_with_a_learner_without_mc_passes(tmp_path, capsys):
    from ml_backend.cli import main

    code = main([*_tiny_table(tmp_path), "--strategies", "hybrid", "--learner", "logreg", "--out", str(tmp_path / "o")])
    assert code == 2 and "MC dropout" in capsys.readouterr().err


def test_cli_simulate_runs_the_paper_protocol_alone(tmp_path, capsys):
    from ml_backend.cli import main

    code = main([*_tiny_table(tmp_path), "--protocol", "paper", "--paper-patch-cells", "12",
                 "--paper-ready-after", "4", "--out", str(tmp_path / "out")])
    assert code == 0 and "paper protocol (12-cell" in capsys.readouterr().out


def test_exploit_share_serves_tasks_of_confident_suggestions():
    x_easy, y_easy = _blobs()  # 18 one-class tasks of 10 cells, classes far apart
    rng = np.random.default_rng(1)
    x_hard = (x_easy.mean(axis=0) + 0.1 * rng.normal(size=(60, x_easy.shape[1]))).astype(np.float32)
    x, y = np.vstack([x_easy, x_hard]), np.r_[y_easy, rng.integers(0, 3, 60)]  # 6 tasks the model cannot call
    tasks = group_tasks(np.zeros(len(y), int), 10)
    hard = set(np.unique(tasks[len(y_easy):]).tolist())

    def run(share):
        config = ReplayConfig("random", max_labels=150, retrain_every=10, ready_after=10, learner="logreg",
                              exploit_share=share, exploit_top=0)
        replay = replay_annotator(x, y, tasks, 3, config)
        return replay, [t.task for t in replay.tasks if t.n_wrong is not None]

    plain, plain_shown = run(0.0)
    exploit, exploit_shown = run(1.0)
    assert hard & set(plain_shown)  # the random queue meets tasks it cannot call
    assert not hard & set(exploit_shown)  # exploitation serves the ones it can
    assert summarize_replay(exploit)["acceptance_share"] > summarize_replay(plain)["acceptance_share"]
