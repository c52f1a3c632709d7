"""Protocol 3's pure parts: the candidate aggregates of round values, the round orders, the stored value of a set of
rounds (no silent zeros), and the protocol version and parameters. No timing at all."""

from __future__ import annotations

import pytest

from profiler_service.engine.aggregate import (
    AGGREGATES,
    aggregate_function,
    aggregate_stats,
    low_quantile,
    median_of_medians,
    min_of_medians,
)
from profiler_service.engine.protocol_presets import protocol_params_for, protocol_version_for
from profiler_service.engine.protocol import PROTOCOL_VERSION, ProtocolParams
from profiler_service.engine.rounds import (
    EXACT_CLOCK_FLOOR_MS,
    lacking_rounds,
    location_floor_ms,
    round_order,
    settled,
    stored_result,
)
from profiler_service.engine.stats import RoundMeasurement, Stats


def flat(median_ms: float, samples: int = 10) -> Stats:
    """Stats whose location statistics all equal ``median_ms``."""
    return Stats(median_ms, median_ms, 0.0, median_ms, median_ms, median_ms, 0.0, samples)


def spread(median_ms: float) -> Stats:
    """Stats around ``median_ms`` with ordered location statistics."""
    return Stats(median_ms, median_ms * 1.05, median_ms * 0.1, median_ms * 0.8, median_ms * 0.9, median_ms * 1.2,
                 median_ms * 0.15, 20)


# --- the candidate aggregates --------------------------------------------------------------------------------
def test_the_three_aggregates_of_round_values() -> None:
    rounds = [1.10, 1.00, 1.30, 1.05]
    assert median_of_medians(rounds) == pytest.approx(1.075)  # the mean of the middle two
    assert median_of_medians([3.0, 1.0, 2.0]) == 2.0
    assert min_of_medians(rounds) == 1.00
    assert low_quantile([1.0, 2.0, 3.0], 0.25) == pytest.approx(1.5)  # halfway between the lowest and the middle
    assert low_quantile(rounds, 0.5) == pytest.approx(median_of_medians(rounds))
    assert set(AGGREGATES) == {"median", "min", "low_quantile"}


def test_one_disturbed_round_stays_out_of_the_median_and_the_minimum() -> None:
    undisturbed = [0.99, 1.02]
    disturbed = [0.99, 1.02, 3.00]  # a neighbour slowed down the third round threefold
    assert min(undisturbed) <= median_of_medians(disturbed) <= max(undisturbed)
    assert low_quantile(disturbed, 0.25) == pytest.approx(1.005)
    assert min_of_medians(disturbed) == 0.99
    assert sum(disturbed) / 3 == pytest.approx(1.67)  # what a mean of rounds would have stored: +66%


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_aggregates_refuse_no_rounds_and_non_finite_values(bad: list[float]) -> None:
    for function in (median_of_medians, min_of_medians, low_quantile):
        with pytest.raises(ValueError, match="rounds"):
            function(bad)


def test_quantile_and_name_are_checked() -> None:
    for q in (0, 1, -0.1, True):
        with pytest.raises(ValueError, match="q"):
            low_quantile([1.0], q)
    with pytest.raises(ValueError, match="q"):
        aggregate_function("low_quantile", 1.5)
    with pytest.raises(ValueError, match="aggregate: expected one of median, min, low_quantile"):
        aggregate_function("mean")
    assert aggregate_function("low_quantile", 0.25)([1.0, 2.0, 3.0]) == pytest.approx(1.5)


@pytest.mark.parametrize("name", AGGREGATES)
def test_aggregate_stats_aggregates_each_statistic_and_keeps_their_order(name: str) -> None:
    rounds = [spread(1.0), spread(1.4), spread(1.1)]
    combined = aggregate_stats(rounds, name)
    combine = aggregate_function(name)
    assert combined.median_ms == pytest.approx(combine([1.0, 1.4, 1.1]))
    assert combined.p90_ms == pytest.approx(combine([1.2, 1.68, 1.32]))
    assert combined.samples == 60
    assert combined.min_ms <= combined.p10_ms <= combined.median_ms <= combined.p90_ms
    with pytest.raises(ValueError, match="rounds"):
        aggregate_stats([], name)


# --- round orders --------------------------------------------------------------------------------------------
def test_a_single_round_keeps_the_jobs_order_and_several_rounds_each_have_their_own() -> None:
    positions = [4, 0, 2, 1, 3, 5, 6, 7]
    assert round_order(positions, seed=0, job_id=7, round_index=0, rounds=1) == sorted(positions)
    orders = [round_order(positions, seed=0, job_id=7, round_index=r, rounds=3) for r in range(3)]
    assert all(sorted(order) == sorted(positions) for order in orders)
    assert len({tuple(order) for order in orders}) == 3  # a fresh order per round
    assert orders == [round_order(positions, seed=0, job_id=7, round_index=r, rounds=3) for r in range(3)]  # seeded
    assert round_order(positions, seed=0, job_id=8, round_index=0, rounds=3) != orders[0]  # and per job
    assert round_order(positions, seed=1, job_id=7, round_index=0, rounds=3) != orders[0]  # and per seed
    with pytest.raises(ValueError, match="round_index"):
        round_order(positions, seed=0, job_id=7, round_index=3, rounds=3)


def test_lacking_rounds() -> None:
    assert lacking_rounds([0, 2], 3) == [1]
    assert lacking_rounds([], 2) == [0, 1]
    assert lacking_rounds([0, 1, 2, 5], 3) == []


# --- the stored value ----------------------------------------------------------------------------------------
PARAMS = ProtocolParams(rounds=3)


def test_the_stored_value_is_the_aggregate_of_the_calibrated_rounds() -> None:
    rounds = [RoundMeasurement(flat(m), correction_ms=0.5, timer_resolution_ms=1e-6) for m in (1.5, 1.7, 3.0)]
    result = stored_result(rounds, PARAMS, costs_compute=True)
    assert (result.stats.median_ms, result.rounds, result.flagged) == (pytest.approx(1.0), 3, None)  # min
    middle = stored_result(rounds, PARAMS.model_copy(update={"aggregate": "median"}), costs_compute=True)
    assert middle.stats.median_ms == pytest.approx(1.2)


def test_an_op_with_multiply_adds_calibrated_to_zero_is_flagged_with_its_sandwich_latency() -> None:
    rounds = [RoundMeasurement(flat(m), correction_ms=0.06, timer_resolution_ms=1e-6) for m in (0.05, 0.052, 0.07)]
    result = stored_result(rounds, PARAMS, costs_compute=True)
    assert result.stats.median_ms == pytest.approx(0.05)  # the op with its boundary ops: an upper bound, not 0
    assert result.flagged.startswith("calibrated_to_zero:") and "0.06 ms" in result.flagged
    identity = stored_result(rounds, PARAMS, costs_compute=False)  # an identity or zero op may cost 0
    assert (identity.stats.median_ms, identity.flagged) == (0.0, None)


def test_an_op_below_the_timer_even_in_groups_is_flagged_with_one_tick_per_group() -> None:
    rounds = [RoundMeasurement(flat(0.0), runs_per_timing=4, timer_resolution_ms=0.01)] * 3
    result = stored_result(rounds, PARAMS, costs_compute=True)
    assert result.stats.median_ms == pytest.approx(0.0025) and result.stats.min_ms == pytest.approx(0.0025)
    assert result.flagged.startswith("below_resolution:") and "timings of 4 runs" in result.flagged
    with pytest.raises(ValueError, match="exact clock"):  # 0 ms from a measurer that claims an exact clock
        stored_result([RoundMeasurement(flat(0.0))], PARAMS, costs_compute=True)


def test_no_location_statistic_of_an_op_with_multiply_adds_is_stored_at_zero() -> None:
    # calibration shifts a wide round by 0.5 ms: its median stays positive, its min and p10 reach 0
    wide = Stats(0.8, 0.85, 0.2, 0.3, 0.45, 1.2, 0.3, 20)
    rounds = [RoundMeasurement(wide, correction_ms=0.5, timer_resolution_ms=0.001)] * 3
    result = stored_result(rounds, PARAMS, costs_compute=True)
    floor = location_floor_ms(rounds)
    assert floor == pytest.approx(0.001) and result.flagged is None  # the median did not need the floor
    assert result.stats.median_ms == pytest.approx(0.3) and result.stats.p90_ms == pytest.approx(0.7)
    location = [result.stats.median_ms, result.stats.mean_ms, result.stats.min_ms, result.stats.p10_ms,
                result.stats.p90_ms]
    assert min(location) >= floor > 0 and result.stats.min_ms == pytest.approx(floor)
    # an exact clock still gets a positive floor; a zero op may cost 0
    exact = [RoundMeasurement(wide, correction_ms=0.5)] * 3
    assert stored_result(exact, PARAMS, costs_compute=True).stats.min_ms == EXACT_CLOCK_FLOOR_MS
    assert stored_result(rounds, PARAMS, costs_compute=False).stats.min_ms == 0.0


def test_a_plain_stats_result_is_a_final_round() -> None:
    round_ = RoundMeasurement.of(flat(2.0))
    assert (round_.correction_ms, round_.runs_per_timing, round_.timer_resolution_ms) == (0.0, 1, 0.0)
    assert round_.calibrated() == flat(2.0)
    assert RoundMeasurement.of(round_) is round_
    with pytest.raises(TypeError, match="Stats or a RoundMeasurement"):
        RoundMeasurement.of(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="runs_per_timing"):
        RoundMeasurement(flat(1.0), runs_per_timing=0)


# --- the protocol ------------------------------------------------------------------------------------------------
def test_protocol_4_measures_in_at_least_three_rounds_and_presets_carry_the_version() -> None:
    params = ProtocolParams()
    assert PROTOCOL_VERSION == "4"
    assert params.rounds >= 3 and params.aggregate == "min" and protocol_params_for("warm").rounds >= 3
    assert ProtocolParams.fast().rounds == 1  # tests and smoke checks
    assert protocol_version_for("default") == "4" and protocol_version_for("warm") == "4+warm"
    dumped = params.model_dump()
    assert {"rounds", "aggregate", "aggregate_q", "min_timing_ticks", "max_runs_per_timing"} <= set(dumped)
    assert ProtocolParams(**dumped) == params
    with pytest.raises(ValueError, match="aggregate"):
        ProtocolParams(aggregate="mean")
    with pytest.raises(ValueError, match="rounds"):
        ProtocolParams(rounds=0)


def _medians(*values: float) -> list[RoundMeasurement]:
    return [RoundMeasurement(raw=Stats.from_samples([v] * 5)) for v in values]


def test_an_item_settles_when_the_missing_rounds_cannot_move_its_median_beyond_the_precision() -> None:
    median3 = ProtocolParams(aggregate="median", rounds=3, settle_rel=0.01)
    assert settled(_medians(1.0, 1.015), median3)  # the median of 3 lies in [1.0, 1.015]: within 1% of 1.0075
    assert not settled(_medians(1.0, 1.05), median3)
    assert not settled(_medians(1.0), median3)  # one round bounds nothing
    assert not settled(_medians(1.0, 1.0, 1.0), median3)  # complete: nothing left to skip
    assert not settled(_medians(1.0, 1.0), median3.model_copy(update={"aggregate": "min"}))  # a lower round may come
    assert not settled(_medians(1.0, 1.0), median3.model_copy(update={"settle_rel": None}))
    median5 = median3.model_copy(update={"rounds": 5})
    assert not settled(_medians(1.0, 1.0), median5)  # 3 missing rounds can make any of them the median
    assert not settled(_medians(1.0, 1.01, 5.0), median5)  # two high rounds would make 5.0 the median
    assert settled(_medians(1.0, 1.01, 1.005), median5)  # the median of 5 lies between the 1st and 3rd sorted
    median4 = median3.model_copy(update={"rounds": 4})  # an even count: the mean of the two middle rounds
    assert settled(_medians(1.0, 1.01, 1.005), median4) and not settled(_medians(1.0, 1.01, 1.5), median4)
