from __future__ import annotations

from shutdown_harness import versions


def test_labels_sort_as_versions_and_kinds_keep_their_order() -> None:
    labels = ["etcd-0.5.1-explicit", "pkg==0.12.1", "etcd-0.4.1-explicit", "pkg==0.2.0",
              "pkg==0.2.0rc1", "etcd-0.5.1-atexit"]
    assert versions.sort_labels(labels) == [
        "etcd-0.4.1-explicit", "etcd-0.5.1-explicit", "pkg==0.2.0rc1", "pkg==0.2.0",
        "pkg==0.12.1", "etcd-0.5.1-atexit"]
    assert sorted(["a==0.12.1", "a==0.2.0"], key=versions.label_key) == ["a==0.2.0", "a==0.12.1"]
