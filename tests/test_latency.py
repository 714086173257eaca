"""The latency measurement: interleaved rounds, a spread per model, ranks only where spreads part."""

import pytest
import torch

from facekd.models import build_model, named_config
from facekd.latency import latency_record, measure_latency, rank_groups, spread, time_interleaved


def test_models_are_interleaved_in_rotated_rounds():
    calls = []
    timed = time_interleaved({n: (lambda n=n: calls.append(n)) for n in "abc"}, runs=4, warmup=1)
    warm, rounds = calls[:3], calls[3:]
    assert warm == ["a", "b", "c"]
    # every round times each model once, and no model always goes first
    assert [sorted(rounds[i:i + 3]) for i in range(0, 12, 3)] == [["a", "b", "c"]] * 4
    assert [rounds[i] for i in range(0, 12, 3)] == ["a", "b", "c", "a"]
    assert {n: len(t) for n, t in timed.items()} == {"a": 4, "b": 4, "c": 4}


def test_spread_orders_its_statistics():
    s = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["min_ms"] == 1.0 and s["max_ms"] == 5.0 and s["median_ms"] == 3.0 and s["runs"] == 5
    assert s["min_ms"] <= s["q1_ms"] <= s["median_ms"] <= s["q3_ms"] <= s["max_ms"]


def test_a_slower_model_is_ranked_only_when_its_spread_is_clear(fake_clock):
    # On the wall clock a no-op preempted on a busy machine can take longer than a 5 ms sleep;
    # on this clock "fast" costs 1 ms and "slow" 5 ms, whatever else runs.
    timed = time_interleaved({"fast": lambda: fake_clock.advance(0.001), "slow": lambda: fake_clock.advance(0.005)},
                             runs=6, warmup=0, clock=fake_clock)
    assert timed["fast"] == pytest.approx([1.0] * 6) and timed["slow"] == pytest.approx([5.0] * 6)
    spreads = {n: spread(t) for n, t in timed.items()}
    assert rank_groups(spreads) == {"fast": 1, "slow": 2}
    overlapping = {"a": {"median_ms": 10, "q1_ms": 9, "q3_ms": 12}, "b": {"median_ms": 11, "q1_ms": 10, "q3_ms": 13},
                   "c": {"median_ms": 20, "q1_ms": 19, "q3_ms": 21}}
    assert rank_groups(overlapping) == {"a": 1, "b": 1, "c": 2}


def test_latency_record_of_tiny_students_at_both_thread_counts():
    tiny = build_model(named_config("tiny", 64))
    threads = torch.get_num_threads()
    record = latency_record({"tiny": tiny, "again": tiny}, size=64, threads=(1, 2), runs=4)
    assert torch.get_num_threads() == threads  # restored
    for n in ("1", "2"):
        assert record["threads"][n]["matmul_gflops"] > 0
        assert set(record["threads"][n]["models"]) == {"tiny", "again"}
        assert record["threads"][n]["models"]["tiny"]["runs"] == 4


def test_too_few_runs_is_refused():
    with pytest.raises(ValueError, match="at least 4 runs"):
        measure_latency({"m": torch.nn.Identity()}, size=8, runs=2)
