from ml_backend.labels.records import AnnotationRecord, count_changed, merge_labels


def test_later_annotation_wins_when_two_label_one_cell():
    records = {
        1: AnnotationRecord(10, {"c1": "A", "c2": "A"}, updated_at="2026-01-02"),
        2: AnnotationRecord(11, {"c1": "B"}, updated_at="2026-01-03"),
    }
    assert merge_labels(records) == {"c1": "B", "c2": "A"}


def test_count_changed_counts_new_and_relabelled_cells_only():
    assert count_changed({"a": "X", "b": "Y"}, {"a": "X", "b": "Z", "c": "X"}) == 2
    assert count_changed({}, {}) == 0
