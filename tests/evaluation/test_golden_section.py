"""ESM's golden-section α search (SPEC_ESM §E7): the three sequences of property test E10.7, and no α evaluated
twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tsvmerge.evaluation.alpha_search import GoldenSectionResult, golden_section_search

QUADRATIC = [0.763932, 1.236068, 0.472136, 0.944272, 1.055728, 0.875388, 0.832816, 0.901699, 0.917961, 0.891649,
             0.907911, 0.897861, 0.904072, 0.900233]
#: Ties move right: a constant f pushes the bracket to b = 2.
CONSTANT = [0.763932, 1.236068, 1.527864, 1.708204, 1.819660, 1.888544, 1.931116, 1.957428, 1.973689, 1.983739,
            1.989950, 1.993789, 1.996161, 1.997628]
#: The search follows f (peak at 1.7) while the choice follows g (peak at 0.3).
SPLIT = [0.763932, 1.236068, 1.527864, 1.708204, 1.819660, 1.639320, 1.750776, 1.681893, 1.724465, 1.698154,
         1.691943, 1.701993, 1.695781, 1.699620]


def _quadratic(alpha: float) -> tuple[float, float]:
    value = 1 - (alpha - 0.9) ** 2
    return value, value


def _constant(alpha: float) -> tuple[float, float]:
    return 0.5, 0.5


def _split(alpha: float) -> tuple[float, float]:
    return 1 - abs(alpha - 1.7), 1 - abs(alpha - 0.3)


@pytest.mark.parametrize(("evaluate", "points", "chosen"), [
    (_quadratic, QUADRATIC, 0.900233),
    (_constant, CONSTANT, 0.763932),
    (_split, SPLIT, 0.763932),
])
def test_the_spec_sequences(evaluate: Callable[[float], tuple[float, float]], points: list[float],
                            chosen: float) -> None:
    result = golden_section_search(evaluate)
    assert isinstance(result, GoldenSectionResult)
    assert result.points == pytest.approx(points, abs=1e-6)
    assert result.chosen == pytest.approx(chosen, abs=1e-6)
    assert result.search_scores == [evaluate(a)[0] for a in result.points]
    assert result.choice_scores == [evaluate(a)[1] for a in result.points]


def test_each_alpha_is_evaluated_once() -> None:
    calls: list[float] = []

    def evaluate(alpha: float) -> tuple[float, float]:
        calls.append(alpha)
        return _quadratic(alpha)

    result = golden_section_search(evaluate)
    assert len(calls) == 14 and calls == result.points
    assert len(set(calls)) == 14, "the point kept in the bracket reuses its value"


def test_max_iter_and_tol_bound_the_search() -> None:
    assert len(golden_section_search(_quadratic, max_iter=3).points) == 2 + 3
    assert len(golden_section_search(_quadratic, tol=10.0).points) == 2
    with pytest.raises(ValueError, match="a < b"):
        golden_section_search(_quadratic, a=1.0, b=1.0)
