"""Idempotency and backfill: three data dates run as daily runs and as a backfill give the
same SIDs, and rerunning a date replaces its run folder."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import write_config
from onesearch_tasks.config import load_config
from onesearch_tasks.sid.refresh import QualityGateError, layout_for, run_extract, run_refresh, warehouse_for
from onesearch_tasks.spark.demo_data import generate_demo_data
from onesearch_tasks.spark.kuaisearch import load_kuaisearch
from onesearch_tasks.spark.session import get_spark
from onesearch_tasks.storage import read_json, read_pointer

pytestmark = pytest.mark.spark

DAYS = ("2025-08-01", "2025-08-02", "2025-08-03")
# Items per day and the share of changed titles: the catalog grows and changes a little.
DAY_DATA = ((300, 0.0), (315, 0.01), (330, 0.02))
# Files whose bytes depend only on the data and the settings, not on the run.
MODEL_FILES = ("rq_codes.npy", "opq_codes.npy", "residuals.npy", "embeddings.npy", "model/opq.faiss", "model/rq_model.json")


def _config(root: Path, name: str):
    return load_config(write_config(root / f"{name}.yaml", root / name))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run DAYS as daily runs (each day's partition loaded just before its run), then as a
    backfill in another home whose warehouse contains all three partitions before the first run."""
    root = tmp_path_factory.mktemp("backfill")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ONESEARCH_HOME", raising=False)
        patch.delenv("ONESEARCH_CONFIG", raising=False)
        daily = _config(root, "daily")
        daily_layout = layout_for(daily)
        spark = get_spark(daily)
        for index, (ds, (items, changed)) in enumerate(zip(DAYS, DAY_DATA)):
            source = root / "source" / ds
            generate_demo_data(source, n_items=items, n_users=60, seed=11, changed_fraction=changed, change_seed=index)
            load_kuaisearch(spark, source, warehouse_for(daily, daily_layout), ds)
            run_refresh(daily, ds)

        backfill = _config(root, "backfill")
        backfill_layout = layout_for(backfill)
        shutil.copytree(warehouse_for(daily, daily_layout), warehouse_for(backfill, backfill_layout))
        for ds in DAYS:
            run_refresh(backfill, ds)
    return SimpleNamespace(root=root, daily=daily_layout, backfill=backfill_layout, backfill_config=backfill)


def _sids(folder: Path, entity: str) -> pd.DataFrame:
    return pd.read_parquet(folder / f"sid_{entity}.parquet", columns=["key", "sid", "status"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("ds", DAYS)
@pytest.mark.parametrize("entity", ["items", "queries"])
def test_backfill_sids_match_daily(runs, ds, entity):
    daily = _sids(runs.daily.version_dir(f"{ds}.r1"), entity)
    backfill = _sids(runs.backfill.version_dir(f"{ds}.r1"), entity)
    pd.testing.assert_frame_equal(backfill, daily)


@pytest.mark.parametrize("ds", DAYS)
def test_backfill_models_match_daily(runs, ds):
    for name in MODEL_FILES:
        daily = runs.daily.version_dir(f"{ds}.r1") / name
        backfill = runs.backfill.version_dir(f"{ds}.r1") / name
        assert _sha256(backfill) == _sha256(daily), name


def test_backfill_builds_on_previous_day(runs):
    pointer = read_pointer(runs.backfill)
    assert pointer["version"] == f"{DAYS[2]}.r1"
    assert pointer["history"] == [f"{DAYS[1]}.r1", f"{DAYS[0]}.r1"]
    for previous, ds in zip(DAYS, DAYS[1:]):
        metrics = read_json(runs.backfill.version_dir(f"{ds}.r1") / "metrics.json")
        assert metrics["mode"] == "incremental"
        assert metrics["reference_version"] == f"{previous}.r1"
        assert metrics["entities"]["items"]["churn"]["churn"] == 0.0


def test_rerun_replaces_run_folder(runs, tmp_path):
    """A failed attempt leaves a full run folder; the rerun's extract replaces it whole."""
    ds = DAYS[2]
    # Two clusters per layer and 1-bit OPQ codes cannot keep 90% of the items apart.
    failing = load_config(write_config(
        tmp_path / "failing.yaml", runs.backfill.home,
        rq={"k": "2-2-2", "mode": "full"}, opq={"bits": 1}, gates={"min_item_icr": 0.9},
    ))
    with pytest.raises(QualityGateError, match=r"items\.icr="):
        run_refresh(failing, ds)
    run_dir = runs.backfill.run_dir(ds)
    first_run_id = read_json(run_dir / "manifest.json")["run_id"]
    assert (run_dir / "metrics.json").is_file()

    run_extract(runs.backfill_config, ds)
    assert sorted(path.name for path in runs.backfill.runs.iterdir()) == [ds]
    assert sorted(path.name for path in run_dir.iterdir()) == ["extract", "manifest.json"]
    assert read_json(run_dir / "manifest.json")["run_id"] != first_run_id

    published = run_refresh(runs.backfill_config, ds)
    assert published.version == f"{ds}.r2"
    assert list(runs.backfill.runs.iterdir()) == []
    for entity in ("items", "queries"):
        rerun = _sids(published.path, entity)[["key", "sid"]]
        first = _sids(runs.backfill.version_dir(f"{ds}.r1"), entity)[["key", "sid"]]
        pd.testing.assert_frame_equal(rerun, first)
