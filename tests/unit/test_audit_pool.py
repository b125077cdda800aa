"""The audit's reference pool on disk: it round-trips, refuses changed bytes, and knows its deleted share."""

import numpy as np
import pytest

from tasks.adapters.audit_pool import PoolManifest, PoolTamperedError, load_pool, save_pool
from tasks.production.audit import deleted_share
from unlearn.audit import AuditError, ReferenceScores, half_splits

IDS = tuple(f"d/train/{i:05d}" for i in range(6)) + ("d/test/00000", "d/test/00001")


def saved(folder):
    members = np.zeros((4, len(IDS)), dtype=bool)
    members[:, :6] = half_splits(6, 4, seed=0)
    scores = np.random.default_rng(0).standard_normal((4, len(IDS)))
    manifest = PoolManifest(
        model="m", champion_version="2", references=4, seed=0, seeds=[0, 1, 2, 3], pruner="omp", sparsity=0.95,
        train_samples=6, excluded_samples=0, ledger_rows=0, ledger_digest="", built_at="2026-12-01T00:00:00+00:00",
        seconds=1.0, reference_seconds=[0.25] * 4,
    )  # fmt: skip
    written = save_pool(folder, ReferenceScores(scores, members), IDS, np.array([0, 1]), np.array([6]), manifest)
    return written, scores, members


def test_a_pool_round_trips_with_its_sha256(tmp_path):
    written, scores, members = saved(tmp_path / "pool")
    pool = load_pool(tmp_path / "pool", written.sha256)
    np.testing.assert_array_equal(pool.reference.scores, scores)
    np.testing.assert_array_equal(pool.reference.members, members)
    assert pool.sample_ids == IDS and pool.manifest == written and len(written.sha256) == 64
    assert pool.columns_of(["d/test/00001", "d/train/00002"]).tolist() == [7, 2]
    assert pool.member_probe.tolist() == [0, 1] and pool.nonmember_probe.tolist() == [6]


def test_changed_bytes_are_refused_naming_who_recorded_the_digest(tmp_path):
    written, _, _ = saved(tmp_path / "pool")
    with pytest.raises(PoolTamperedError, match="the registry recorded"):
        load_pool(tmp_path / "pool", "0" * 64)
    data = (tmp_path / "pool" / "pool.npz").read_bytes()
    (tmp_path / "pool" / "pool.npz").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(PoolTamperedError, match="pool.json recorded"):
        load_pool(tmp_path / "pool")


def test_a_missing_pool_and_an_unscored_sample_are_one_line_errors(tmp_path):
    with pytest.raises(AuditError, match="no reference pool at .*unlearn audit build"):
        load_pool(tmp_path / "nothing")
    saved(tmp_path / "pool")
    with pytest.raises(AuditError, match=r"no score of samples \['d/train/99999'\]"):
        load_pool(tmp_path / "pool").columns_of(["d/train/99999"])


def test_the_deleted_share_counts_only_samples_the_references_trained_on(tmp_path):
    saved(tmp_path / "pool")
    pool = load_pool(tmp_path / "pool")
    assert deleted_share(pool, set()) == 0.0
    assert deleted_share(pool, {"d/train/00000", "d/test/00000", "other"}) == pytest.approx(1 / 6)
