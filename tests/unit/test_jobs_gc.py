"""frozen_gc: the retrain job keeps the garbage collector off what existed before it, and only during it."""

import gc

from ml_backend.retrain.job import frozen_gc


def test_objects_from_before_the_job_are_frozen_during_it_and_released_after():
    before = gc.get_freeze_count()
    with frozen_gc():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == before


def test_the_gc_is_unfrozen_even_when_the_job_fails():
    before = gc.get_freeze_count()
    try:
        with frozen_gc():
            raise RuntimeError("Label Studio went away")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == before
