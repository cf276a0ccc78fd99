"""Reading a replica's vLLM /metrics: gauges summed over label sets, the success counter kept."""

from __future__ import annotations

from autoscaler.scrape import parse_metrics

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 4.0
"""


def test_gauges_and_the_success_counter_are_read() -> None:
    load = parse_metrics("r1", VLLM_METRICS)
    assert load is not None
    assert (load.running, load.waiting, load.kv_cache_usage) == (1.0, 2.0, 0.25)
    assert load.completed == 7.0  # summed over finish reasons


def test_a_replica_that_finished_nothing_reads_zero_or_unknown() -> None:
    fresh = VLLM_METRICS.split("# HELP vllm:request_success_total")[0]
    load = parse_metrics("r1", fresh)
    assert load is not None and load.completed is None
    assert parse_metrics("r1", "garbage{") is None
