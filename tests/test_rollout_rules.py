"""A rollout's rules without a server: what pipelines.toml may say (one-line refusals), how two answers compare,
when a canary is rolled back, and how requests are split between a pipeline and its canary."""

from __future__ import annotations

import pytest

from server.gateway.rollouts import CanaryState, compare, sticky_key
from server.pipeline_spec import SpecError
from server.rollout_spec import Canary, Rollout, Shadow, build_rollout
from server.spec_file import load_spec

PIPELINES = {"fast", "fast_int8", "fusion"}


def spec_text(extra: str) -> str:
    return ('[pipelines.fast]\nmembers = ["vgg_d"]\nscales = [64]\n'
            '[pipelines.fast_int8]\nmembers = ["vgg_d_int8"]\nscales = [64]\n' + extra)


def test_a_rollout_is_read_from_the_pipeline_s_tables(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(spec_text('[pipelines.fast.shadow]\npipeline = "fast_int8"\nfraction = 0.25\n'
                              '[pipelines.fast.canary]\npipeline = "fast_int8"\nweight = 0.1\nmin_agreement = 0.9\n'))
    rollout = load_spec(path).rollouts["fast"]
    assert rollout.shadow == Shadow("fast_int8", 0.25) and rollout.canary.min_agreement == 0.9
    assert Rollout.from_json(rollout.to_json()) == rollout


@pytest.mark.parametrize(("entry", "message"), [
    ({"shadow": {"pipeline": "nope", "fraction": 0.5}}, "'nope' is not a pipeline of this spec"),
    ({"shadow": {"pipeline": "fast_int8", "fraction": 1.5}}, "fraction must be a number in [0, 1], got 1.5"),
    ({"shadow": {"pipeline": "fast_int8", "fraction": -0.1}}, "fraction must be a number in [0, 1]"),
    ({"shadow": {"pipeline": "fast_int8"}}, "fraction is required"),
    ({"shadow": {"pipeline": "fast", "fraction": 0.5}}, "can't be its own shadow"),
    ({"canary": {"pipeline": "fast_int8", "weight": 2}}, "weight must be a number in [0, 1]"),
    ({"canary": {"pipeline": "fast_int8", "weight": 0.1, "max_latency_ratio": 0.5}}, "max_latency_ratio must be"),
    ({"canary": {"pipeline": "fast_int8", "weight": 0.1, "window": 0}}, "window must be a positive integer"),
    ({"canary": {"pipeline": "fast_int8", "weight": 0.1, "color": "red"}}, "unknown key 'color'"),
    ({"canary": {"pipeline": "fast_int8", "weight": 0.1, "min_agreement": 0.9}}, "min_agreement needs a shadow"),
])
def test_bad_rollouts_are_refused_with_one_line(entry, message):
    with pytest.raises(SpecError) as refused:
        build_rollout("fast", entry, PIPELINES)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_comparing_two_answers():
    primary = [{"index": 3, "score": 0.6}, {"index": 1, "score": 0.3}, {"index": 2, "score": 0.1}]
    same = compare(primary, primary, 1.0)
    assert same.top1_agrees and same.top5_overlap == 1.0 and same.max_abs_diff == 0.0
    other = compare(primary, [{"index": 1, "score": 0.5}, {"index": 3, "score": 0.45}, {"index": 2, "score": 0.05}],
                    1.3)
    assert not other.top1_agrees and other.top5_overlap == 1.0
    assert other.max_abs_diff == pytest.approx(0.2) and other.latency_ratio == 1.3


def test_a_canary_is_judged_once_enough_answers_are_in():
    canary = CanaryState("fast", Canary("fast_v2", 0.2, max_error_rate=0.1, max_latency_ratio=1.5,
                                        min_agreement=0.9, window=10, min_requests=4))
    for _ in range(3):
        canary.outcomes.append((False, 0.1))
    assert canary.judge(None) is None  # three failures, but fewer answers than min_requests
    canary.outcomes.append((True, 0.1))
    assert canary.judge(None).startswith("error rate 75.0% > 10.0%")
    canary.set("active", 0.2, "")
    for _ in range(4):
        canary.outcomes.append((True, 0.3))
        canary.stable_latency.append(0.1)
    assert canary.judge(None) == "latency ratio 3.00 > 1.5"
    canary.set("active", 0.2, "")
    for _ in range(4):
        canary.outcomes.append((True, 0.1))
        canary.stable_latency.append(0.1)
    assert canary.judge(0.95) is None and canary.judge(0.5) == "top-1 agreement 50.0% < 90.0%"


def test_the_split_is_sticky_per_key_and_near_its_weight():
    canary = CanaryState("fast", Canary("fast_v2", 0.3))
    keys = [f"key:caller-{i}" for i in range(4000)]
    chosen = [canary.chooses(key) for key in keys]
    assert chosen == [canary.chooses(key) for key in keys]  # the same side every time
    assert 0.27 < sum(chosen) / len(keys) < 0.33  # 4000 keys: the share's sd is 0.7 points
    canary.set("rolled_back", 0.0, "by hand")
    assert not any(canary.chooses(key) for key in keys[:100])
    assert sticky_key({"x-rollout-key": "a", "authorization": "Bearer k"}) == "header:a"
    assert sticky_key({"authorization": "Bearer k"}) == "key:k" and sticky_key({}) is None
