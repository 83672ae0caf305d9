"""Parts of the extraction (one per plan_id range), staged on the storage root and assembled: the
same bytes for any number of ranges, a retried part rewrites only its own key, and the assembler
takes exactly this run's finished parts (never a stale attempt's or another run's)."""
from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from include.core import storage
from include.dataset import parts
from include.dataset.window import partition_bounds, resolve_window
from tests.dataset.world import END, SECOND, World

WINDOW = resolve_window("2026-11-23", 28)
MID = END - timedelta(days=10)


@pytest.fixture()
def world(clean_source) -> World:
    world = World(clean_source)
    hids = [world.household(MID - timedelta(days=100)) for _ in range(3)]
    for i in range(40):
        world.plan(hids[i % 3], MID + i * SECOND, MID + i * SECOND + timedelta(minutes=1))
    world.event("plan_accepted", hids[0], MID, {"plan": {}})  # quarantined (no plan_id): the first range's
    return world


def _extract_all(dsn: str, specs: list[dict]) -> list[dict]:
    return [parts.extract_range(dsn, spec) for spec in specs]


def _tree(directory: Path) -> dict:
    return {p.relative_to(directory).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in directory.rglob("*") if p.is_file()}


def test_ranges_are_a_pure_function_of_their_count_and_keyed_by_the_run(storage_root):
    specs = parts.plan_ranges(WINDOW, 4, run_key="planner_dataset/manual__1")
    assert specs == parts.plan_ranges(WINDOW, 4, run_key="planner_dataset/manual__1")
    assert [(s["low"], s["high"]) for s in specs] == partition_bounds(4) == [("", "40"), ("40", "80"),
                                                                            ("80", "c0"), ("c0", "")]
    assert {s["parts_uri"] for s in specs} == {parts.parts_uri(WINDOW, "planner_dataset/manual__1")}
    assert specs[0]["parts_uri"].startswith(storage.join(storage.datasets_root(), storage.STAGING_DIR, "2026-11-23-"))
    assert parts.parts_uri(WINDOW, "planner_dataset/manual__2") != specs[0]["parts_uri"]
    with pytest.raises(ValueError, match="1..64"):
        parts.plan_ranges(WINDOW, 0, run_key="x")


def test_the_same_bytes_whatever_the_number_of_ranges(world):
    one, three, four = world.build(parts=1), world.build(parts=3), world.build(parts=4)
    assert one.rows.num_rows == 40 and one.quarantine.num_rows == 1
    assert (one.path / "training.parquet").read_bytes() == (three.path / "training.parquet").read_bytes()
    assert storage.content_digest_of(one.path) == storage.content_digest_of(three.path) == \
        storage.content_digest_of(four.path)
    assert not (one.path / "_parts").exists()  # the in-process parts never reach the version


def test_a_retried_part_rewrites_only_its_own_key_and_the_stale_attempt_is_never_assembled(world, storage_root,
                                                                                        tmp_path):
    specs = parts.plan_ranges(WINDOW, 3, run_key="planner_dataset/manual__retry")
    first = _extract_all(world.dsn, specs)
    root = storage.local_path(specs[0]["parts_uri"])
    others = {name: _tree(root / name) for name in (parts.range_name(0, 3), parts.range_name(2, 3))}

    again = parts.extract_range(world.dsn, specs[1])  # the retry (or a clear) of part 1

    assert {name: _tree(root / name) for name in others} == others  # the other parts: not touched
    assert sorted(p.name for p in root.iterdir()) == [parts.range_name(i, 3) for i in range(3)]
    assert again["attempt"] != first[1]["attempt"] and again["rows"] == first[1]["rows"]
    with pytest.raises(parts.PartsError, match="stale part"):  # the first attempt's result: refused
        parts.assemble_parts(world.dsn, WINDOW, specs, tmp_path / "a", 1.0, extracted=first)
    assert not (tmp_path / "a" / "training.parquet").exists()
    (tmp_path / "b").mkdir()
    counts = parts.assemble_parts(world.dsn, WINDOW, specs, tmp_path / "b", 1.0,
                                  extracted=[first[0], again, first[2]])
    assert counts["rows"] == 40 and counts["quarantined"] == 1
    assert storage.content_digest_of(tmp_path / "b") == storage.content_digest_of(world.build(parts=1).path)


def test_a_part_marker_of_another_run_or_an_unfinished_part_is_never_assembled(world, storage_root, tmp_path):
    other = parts.plan_ranges(WINDOW, 2, run_key="planner_dataset/manual__earlier")
    ours = parts.plan_ranges(WINDOW, 2, run_key="planner_dataset/manual__now")
    earlier = _extract_all(world.dsn, other)
    mine = [parts.extract_range(world.dsn, ours[0])]
    # A part of the earlier run lands in our key (a copy, a misconfigured path): its marker names that run.
    shutil.copytree(storage.local_path(other[0]["parts_uri"]) / parts.range_name(1, 2),
                    storage.local_path(ours[0]["parts_uri"]) / parts.range_name(1, 2))
    with pytest.raises(parts.PartsError, match="not written for this run"):
        parts.assemble_parts(world.dsn, WINDOW, ours, tmp_path, 1.0, extracted=[mine[0], earlier[1]])
    with pytest.raises(parts.PartsError, match="not written for this run"):  # without recorded attempts too
        parts.check_parts(ours, None)

    finished = parts.extract_range(world.dsn, ours[1])
    marker = storage.local_path(ours[0]["parts_uri"]) / parts.range_name(1, 2) / parts.MARKER
    marker.unlink()  # as while an attempt rewrites it
    with pytest.raises(parts.PartsError, match="has no _PART.json"):
        parts.check_parts(ours, [mine[0], finished])
    finished = parts.extract_range(world.dsn, ours[1])
    assert len(parts.check_parts(ours, [mine[0], finished])) == 2

    (storage.local_path(ours[0]["parts_uri"]) / parts.range_name(2, 3)).mkdir()  # not one of ours
    with pytest.raises(parts.PartsError, match="unexpected"):
        parts.check_parts(ours, [mine[0], finished])
    with pytest.raises(parts.PartsError, match="results for parts"):  # a part without a result did not succeed
        parts.check_parts(ours, [mine[0]])


def test_a_part_file_changed_after_its_marker_is_refused(world, storage_root, tmp_path):
    specs = parts.plan_ranges(WINDOW, 2, run_key="planner_dataset/manual__tampered")
    extracted = _extract_all(world.dsn, specs)
    rows = storage.local_path(specs[0]["parts_uri"]) / parts.range_name(1, 2) / parts.ROWS
    rows.write_bytes(rows.read_bytes() + b"x")
    with pytest.raises(parts.PartsError, match="does not hold the bytes its marker names"):
        parts.assemble_parts(world.dsn, WINDOW, specs, tmp_path, 1.0, extracted=extracted)


def test_remove_parts_removes_only_the_runs_own_key(world, storage_root):
    mine = parts.plan_ranges(WINDOW, 2, run_key="planner_dataset/manual__mine")
    theirs = parts.plan_ranges(WINDOW, 2, run_key="planner_dataset/manual__theirs")
    _extract_all(world.dsn, mine + theirs)
    parts.remove_parts(mine[0]["parts_uri"])
    assert not storage.local_path(mine[0]["parts_uri"]).exists()
    assert len(parts.check_parts(theirs, None)) == 2


def test_row_groups_have_a_fixed_size_whatever_the_tables_they_arrive_in(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.dataset.build import ExtractionOrderError, RowGroups

    # Values of ~400 kB: a group spans several 1 MB data pages, whose breaks follow the chunks a writer is
    # handed; a group must be one contiguous chunk for the bytes not to depend on how the rows arrived.
    table = pa.table({"plan_id": [f"{i:04x}" for i in range(50)], "input": [f"{i:04d}" * 100_000 for i in range(50)]})

    def written(splits: list[int]) -> bytes:
        path = tmp_path / f"{'-'.join(map(str, splits))}.parquet"
        with pq.ParquetWriter(path, table.schema, compression="zstd") as out:
            groups, start = RowGroups(out, size=7), 0
            for end in [*splits, table.num_rows]:
                groups.add(pa.concat_tables([table.slice(start, (end - start) // 2),
                                             table.slice(start + (end - start) // 2, end - start - (end - start) // 2)]))
                start = end
            groups.close()
        assert [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(8)] == [7] * 7 + [1]
        return path.read_bytes()

    assert written([]) == written([3, 10, 11, 30]) == written([7, 14, 49])
    with pq.ParquetWriter(tmp_path / "order.parquet", table.schema) as out:
        groups = RowGroups(out, size=7)
        groups.add(table.slice(10, 5))
        with pytest.raises(ExtractionOrderError):  # parts appended out of plan_id order
            groups.add(table.slice(0, 5))
