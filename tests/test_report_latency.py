"""Latency measurement: interleaved pairs, per-example figures, paired ratios robust to load drift, ordered
spreads, an exact JSON round trip; and a real (sleep-based) measurement whose ratio is roughly right."""

from __future__ import annotations

import json
import random
import time

import pytest

from robustcert.errors import RobustCertError
from robustcert.evaluation.latency import LatencyResult, Procedure, Spread, measure_latency
from robustcert.report.format import ratio_range, seconds_range, significant


class FakeClock:
    """A clock that only moves when a fake procedure 'runs'; ``load`` scales every cost (machine load)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.calls: list[str] = []
        self.load = lambda t: 1.0

    def __call__(self) -> float:
        return self.t

    def procedure(self, name: str, cost: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            self.calls.append(name)
            self.t += cost * self.load(self.t)

        return run


def test_ratio_and_per_example_seconds_are_exact_on_a_fake_clock() -> None:
    clock = FakeClock()
    # 20 undefended examples at 0.5 ms each; 3 smoothed examples at 125 ms each: a ratio of exactly 250
    result = measure_latency(
        clock.procedure("u", 20 * 0.0005),
        {"predict": Procedure(clock.procedure("d", 3 * 0.125), batch_size=1000, detail="n = 10000")},
        undefended_examples=20,
        defended_examples=3,
        repeats=5,
        clock=clock,
    )
    assert result.undefended.seconds.median == pytest.approx(0.0005)
    assert result.undefended.examples == 20 and result.undefended.batch_size == 1
    d = result.defended["predict"]
    assert d.seconds.median == pytest.approx(0.125)
    assert d.ratio.median == pytest.approx(250.0)
    assert (d.examples, d.batch_size, d.detail) == (3, 1000, "n = 10000")
    assert len(d.samples) == len(d.ratios) == 5


def test_calls_are_warmed_up_then_interleaved_in_pairs() -> None:
    clock = FakeClock()
    measure_latency(
        clock.procedure("u", 1.0),
        {"a": clock.procedure("a", 2.0), "b": clock.procedure("b", 3.0)},
        undefended_examples=1,
        defended_examples=1,
        repeats=4,
        warmup=2,
        clock=clock,
    )
    warm, timed = clock.calls[:6], clock.calls[6:]
    assert warm == ["u", "a", "b", "u", "a", "b"]
    pairs = [tuple(timed[k : k + 2]) for k in range(0, len(timed), 2)]
    # every defended call sits next to an undefended one; the order alternates between rounds
    assert pairs == [("u", "a"), ("u", "b"), ("a", "u"), ("b", "u")] * 2


def test_paired_ratio_survives_load_drift() -> None:
    """Load rising 20-fold during the measurement: timing all undefended calls first and all defended calls
    after would be off by ~10x; the paired ratio stays within 10% of the true ratio of 40."""
    clock = FakeClock()
    clock.load = lambda t: 1.0 + 20.0 * min(t / 400.0, 1.0)
    result = measure_latency(
        clock.procedure("u", 0.1),
        {"d": clock.procedure("d", 4.0)},
        undefended_examples=1,
        defended_examples=1,
        repeats=9,
        clock=clock,
    )
    r = result.defended["d"].ratio
    assert r.median == pytest.approx(40.0, rel=0.1)
    # the undefended time itself did drift: its spread shows it
    u = result.undefended.seconds
    assert u.maximum > 3 * u.minimum


def test_spread_is_ordered_for_any_sample() -> None:
    rng = random.Random(0)
    for size in (1, 2, 3, 4, 7, 20):
        for _ in range(50):
            values = [rng.lognormvariate(0, 2) for _ in range(size)]
            s = Spread.of(values)
            assert s.minimum <= s.low <= s.median <= s.high <= s.maximum
            assert s.minimum == min(values) and s.maximum == max(values)
    with pytest.raises(RobustCertError):
        Spread.of([])
    with pytest.raises(RobustCertError):
        Spread.of([1.0, float("nan")])


def test_json_round_trip_is_exact_and_old_files_are_refused() -> None:
    clock = FakeClock()
    result = measure_latency(
        clock.procedure("u", 0.0011),
        {"x": clock.procedure("d", 0.37)},
        undefended_examples=2,
        defended_examples=1,
        repeats=3,
        clock=clock,
    )
    data = json.loads(json.dumps(result.to_json()))
    assert LatencyResult.from_json(data) == result
    assert data["defended"]["x"]["ratio"]["median"] == result.defended["x"].ratio.median  # full precision
    with pytest.raises(RobustCertError, match="older robustcert"):
        LatencyResult.from_json({"undefended_seconds": 0.001, "smoothed_predict_seconds": 0.1})
    broken = dict(data)
    broken["defended"] = {"x": {**data["defended"]["x"], "ratios": [1.0]}}
    with pytest.raises(RobustCertError, match="ratios"):
        LatencyResult.from_json(broken)


def test_invalid_arguments_are_refused() -> None:
    def noop() -> None:
        pass

    for kwargs in ({"repeats": 0}, {"undefended_examples": 0}, {"defended_examples": -1}, {"warmup": -1}):
        args = {"undefended_examples": 1, "defended_examples": 1, **kwargs}
        with pytest.raises(RobustCertError):
            measure_latency(noop, {"d": noop}, **args)  # type: ignore[arg-type]
    with pytest.raises(RobustCertError, match="no measurable time"):
        measure_latency(noop, {"d": noop}, undefended_examples=1, defended_examples=1, clock=lambda: 0.0)


def test_real_sleeps_give_roughly_the_right_ratio() -> None:
    """Not a benchmark: sleeps of known relative cost (1 ms vs 10 ms per example) must come out ordered
    and within a generous band around 10, whatever the machine's load."""

    def undefended() -> None:
        time.sleep(0.002)  # 2 examples of 1 ms

    def defended() -> None:
        time.sleep(0.010)  # 1 example of 10 ms

    result = measure_latency(
        undefended, {"slow": defended}, undefended_examples=2, defended_examples=1, repeats=5
    )
    r = result.defended["slow"].ratio
    assert 4.0 < r.median < 12.0, r
    assert r.low <= r.median <= r.high
    assert result.undefended.seconds.median >= 0.001 * 0.95
    assert result.torch_threads >= 1


def test_render_formats_two_significant_digits() -> None:
    assert [significant(v) for v in (1234.5, 9.96, 250.0, 0.04567, 1.0, 0.0)] == [
        "1,200",
        "10",
        "250",
        "0.046",
        "1.0",
        "0",
    ]
    assert ratio_range(251.3, 240.2, 266.0) == "250× (240–270)"
    assert seconds_range(0.000213, 0.000201, 0.000229) == "210 µs (200–230)"
    assert seconds_range(0.0523, 0.05, 0.061) == "52 ms (50–61)"
    assert seconds_range(3.44, 3.0, 4.0) == "3.4 s (3.0–4.0)"
