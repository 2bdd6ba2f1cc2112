"""Settings of the ML backend (``hali serve``) and its jobs (``hali worker``), from ``HALI_*`` variables.

Built once per entry point (``create_app``, the worker, each job) and passed down.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from adapters.settings import SharedSettings

# Typed choices, so a typo fails when the settings are built at start-up, not inside the first job.
# tests/unit/test_settings.py checks that they equal the registries (STRATEGIES, OPTIMIZER_PRESETS).
StrategyName = Literal[
    "coreset", "entropy", "margin", "random", "sequential", "relevance", "hybrid", "density", "cluster", "spread"
]
OptimizerName = Literal["adam", "paper-sgd"]
LearnerName = Literal["mlp", "logreg"]
# tests/unit/test_settings.py checks these against needs_mc_passes and ml_backend.model.learners.MC_LEARNERS.
MC_STRATEGIES = frozenset({"relevance", "hybrid"})  # strategies that need MC dropout passes
MC_LEARNERS = frozenset({"mlp"})  # learners that give them


class BackendSettings(SharedSettings):
    retrain_every: int = Field(5, ge=1, description="new cell labels that trigger a retrain")
    max_body_mb: float = Field(10.0, gt=0, description="larger request bodies are refused with 413")
    strategy: StrategyName = Field("spread", description="query strategy (ml_backend/ordering/strategies.py)")
    learner: LearnerName = Field(
        "logreg", description="classifier on the cell features (ml_backend/model/learners.py): logreg or mlp (the "
        "paper's 2x32 head); relevance/hybrid need mlp and get it when HALI_LEARNER is unset"
    )
    # relevance / hybrid (Sadafi et al. 2019; ml_backend/ordering/relevance.py). Only these two use MC passes.
    mc_passes: int = Field(10, ge=1, description="stochastic (MC dropout) head passes for relevance/hybrid")
    mc_dropout: float = Field(
        0.25, ge=0.0, lt=1.0, description="head dropout when relevance/hybrid is selected (0 for the others)"
    )
    relevance_alpha: float = Field(1.0, ge=0.0, description="tile score weight of #(U_c <= certainty max)")
    relevance_beta: float = Field(1.0, ge=0.0, description="weight of #(U_d <= detection max); U_d is 1 here")
    relevance_gamma: float = Field(10.0, ge=0.0, description="weight of #cells flagged as the rare class")
    relevance_class_certainty_max: float = Field(0.8, ge=0.0, le=1.0, description="U_c at or below: uncertain")
    relevance_detection_certainty_max: float = Field(0.9, ge=0.0, le=1.0, description="U_d at or below: uncertain")
    relevance_rare_min_proba: float = Field(0.2, ge=0.0, le=1.0, description="mean p(rare) above: rare flag")
    relevance_rare_class: str = Field("", description="the rare class's name; empty: the class with fewest labels")
    optimizer: OptimizerName = Field("adam", description="head optimiser preset: adam (default) or paper-sgd")
    retrain_lease_s: float = Field(
        30.0, gt=0, description="the training lock is a lease renewed while a retrain runs: a killed worker's "
        "lock frees within this, and the next retrain can start"
    )
    predictions_top_k: int = Field(
        100, ge=1, description="open tasks that get each new version's prediction: the top of the queue, which "
        "all annotators open before the next retrain (about one task per retrain each)"
    )
    predictions_first_n: int = Field(
        10, ge=1, description="of the top K, the tasks whose predictions are pushed before the new version goes live "
        "(the tasks annotators open next); the rest follow right after the switch. Each prediction costs Label "
        "Studio about 10 ms to import, so this, not K, sets how long a label waits for the new order"
    )
    prune_after_s: float = Field(
        1800.0, ge=0, description="a superseded model version's predictions are deleted from Label Studio this long "
        "after the next version went live: an annotator who opened a task under it can still submit (Label Studio "
        "refuses an annotation whose parent prediction is gone); 0 prunes at once"
    )
    reconcile_s: float = Field(
        20.0, ge=0, description="the worker reads the tasks Label Studio updated since its last look this often, so "
        "labels whose webhook was lost (backend or Redis down) reach a retrain without another submit; 0: never"
    )
    full_reconcile_s: float = Field(
        900.0, gt=0, description="and compares every task with the label mirror this often (and when it starts): "
        "catches deleted tasks and annotations"
    )
    stale_retrain_s: float = Field(
        300.0, gt=0, description="/status and the worker log warn when a project's labels have waited this long "
        "for a retrain"
    )
    consensus: Literal["majority", "dawid-skene"] = Field(
        "majority", description="how a cell labelled by several annotators gets the label training uses: the "
        "majority (a tie goes to the latest save), or Dawid-Skene, which weighs each annotator by their estimated "
        "reliability per class (docs/labels.md)"
    )
    query_budget: int = Field(100, ge=1, description="cells the strategy picks before they roll up to tiles")
    exploit_share: float = Field(
        1.0, ge=0.0, le=1.0, description="share of tasks served for suggestions the annotator will keep: the most "
        "confident of the strategy's first HALI_EXPLOIT_TOP tasks goes first (ml_backend/ordering/exploit.py, "
        "docs/replay.md, \"Exploitation in the queue\"); 0: the strategy's order only (before 2026-12-01)"
    )
    exploit_top: int = Field(10, ge=0, description="exploit serves choose among this many of the strategy's first "
                             "tasks; 0: among every open task")
    gold_share: float = Field(
        0.05, ge=0.0, lt=1.0, description="share of labelled cells held out of training (chosen by a hash of the "
        "cell id, so fixed) to score each model version on: the dashboard's learning curve; 0 turns it off"
    )
    public_url: str = Field(
        "", description="the backend's URL as browsers reach it, for the dashboard link in the project's "
        "description; empty: the URL Label Studio connects to"
    )
    # Spatial context (ml_backend/suggestions/context.py): docs/replay.md and bench/bench_suggestions.py measure it.
    context: bool = Field(
        False, description="the learner sees each cell's features plus the mean features of its spatial neighbours "
        "and its local density; off by default: it gains 2-3 points of right suggestions on 4 classes with random "
        "labels, but not on the tasks the replay served (docs/replay.md)"
    )
    context_neighbours: int = Field(8, ge=1, le=64, description="spatial neighbours per cell (context and smoothing)")
    context_radius_um: float = Field(25.0, gt=0, description="radius of the local density count, micrometres")
    # With cellnet features 0.7 kept more in offline walks over the replay's tasks but fewer end to end (one
    # replay per class map); 0.5 stays until more replays settle it (docs/replay.md, "cellnet features").
    smooth_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="each cell's shown (and ranked) probabilities are this share its own and "
        "the rest the mean of its spatial neighbours'; 1 turns smoothing off"
    )
    rank_pool_cells: int = Field(
        100_000, ge=0, description="a retrain ranks the open tasks of a seeded random sample of about this many "
        "cells (every open task when there are fewer; 0: always all), so its cost stops growing with the project"
    )
    retrain_in_process: bool = Field(
        True, description="`hali worker` runs retrain jobs in its own process, not a forked child, so the next "
        "retrain finds the project's tiles, cell tables and neighbour graphs in memory (docs/predictions.md)"
    )
    seed: int = 0
    torch_threads: int = Field(
        1, ge=1, description="torch threads per process: the head is tiny, and more threads only add overhead"
    )

    @field_validator("learner")
    @classmethod
    def _learner_fits_strategy(cls, learner: str, info: ValidationInfo) -> str:
        strategy = info.data.get("strategy")
        if strategy in MC_STRATEGIES and learner not in MC_LEARNERS:
            raise ValueError(f"HALI_STRATEGY={strategy} needs MC dropout passes, which only "
                             f"{'/'.join(sorted(MC_LEARNERS))} gives; unset HALI_LEARNER or set it to mlp")
        return learner

    @model_validator(mode="before")
    @classmethod
    def _mc_strategy_means_mlp(cls, data: Any) -> Any:
        """relevance/hybrid with HALI_LEARNER unset: the mlp (the only learner with MC passes)."""
        if isinstance(data, dict) and data.get("strategy") in MC_STRATEGIES and data.get("learner") is None:
            return {**data, "learner": "mlp"}
        return data
