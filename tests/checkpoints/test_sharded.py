"""Shard planning and sizes for model-folder outputs."""

import pytest

from tsvmerge.checkpoints.sharded import parse_size, plan_shards


def test_sizes():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5kb") == 1500
    assert parse_size("123") == 123
    for bad in ("five", "0", "-3MB", "2XB"):
        with pytest.raises(ValueError, match="max-shard-size"):
            parse_size(bad)


def test_shards_fill_in_order_and_big_entries_stand_alone():
    sizes = {"a": 40, "b": 40, "c": 150, "d": 10, "e": 90}
    plan = plan_shards(sizes, 100)
    assert plan.shards == [["a", "b"], ["c"], ["d", "e"]]
    assert plan.names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert plan.weight_map()["e"] == "model-00003-of-00003.safetensors"
    assert plan_shards({"a": 1}, 100).names == ["model.safetensors"]


def test_processes_get_contiguous_runs_of_about_equal_bytes():
    sizes = {f"k{i:02d}": 10 for i in range(20)}
    plan = plan_shards(sizes, 30, world_size=2)
    assert [key for shard in plan.shards for key in shard] == list(sizes)
    per_rank = [sum(sizes[k] for i in plan.owned_by(r) for k in plan.shards[i]) for r in (0, 1)]
    assert per_rank == [100, 100]
    assert plan.owners == sorted(plan.owners)


def test_groups_stay_in_one_shard():
    sizes = {"a": 60, "b": 30, "c": 10, "head": 30}
    plan = plan_shards(sizes, 100, together=[["b", "head"]])
    assert plan.shards == [["a"], ["b", "head", "c"]]  # the pair moves to the next shard whole
