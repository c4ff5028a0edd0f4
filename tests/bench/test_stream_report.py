"""bench/stream_report.py and bench_stream's profile areas: the Runtimes section's
per-message profile is the samples' CPU divided by the messages drained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.bench_stream import summarize_profile
from bench.stream_report import render, render_runtimes, render_targets

SITE = ".venv/lib/python3.11/site-packages"


def _run(rate: float, messages: int, profile: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"txn_per_s": rate, "seconds": 1.0, "messages": messages, "count": 10,
            "expected_outcomes": 10, "cpu": {"own_cores": 1.0, "wall": 1.0},
            "profile": profile, "profile_file": "p.txt"}


def test_faust_frames_get_their_own_areas_and_the_table_is_per_message(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        f"_drain_messages ({SITE}/faust/transport/consumer.py:1200) 30\n"
        f"take_events ({SITE}/faust/streams.py:480);"
        f"put (engine/streams/faust_runtime.py:120) 20\n"
        f"take_events ({SITE}/faust/streams.py:480) 40\n"
        f"decide (engine/streams/shard.py:10) 10\n")
    fp = summarize_profile(raw, 1.0)
    areas = {a: c for a, c, _ in fp["areas"]}
    assert areas == {"Faust: consumer thread, conductor, fetcher (faust.transport)": 30,
                     "Faust facade (engine.streams.faust_runtime: event -> record, queue)": 20,
                     "Faust: stream, agent, take_events (faust.streams, .agents, .channels)": 40,
                     "decide: state lookups + kernel (engine.streams.shard, rules.kernel)": 10}
    ap = {"samples": 5, "areas": [("decide: state lookups + kernel (engine.streams.shard, "
                                   "rules.kernel)", 5, 100.0)], "self": []}
    results = {"machine": {"nproc": 2, "cpu": "x"}, "sizes": {
        "batched_users": 1, "batched_txns": 1, "batch": 1, "single_users": 1,
        "single_txns": 1, "faust_events": 1}, "date": "d", "mode": "full",
        "engine": {"start": "c"}, "profile_rate": 100, "loadavg_start": (1.5, 1.0, 0.5),
        "runs": {"profile_single_aiokafka": _run(9.0, 1000, ap),
                 "profile_single_faust": _run(3.0, 1000, fp)}}
    md = render_runtimes(results)
    # 100 samples at 100 Hz = 1 s of CPU over 1,000 messages: 1,000 µs each
    assert "| **all** | **50.0** | **1,000.0** |" in md
    assert "| Faust: stream, agent, take_events (faust.streams, .agents, .channels) | 0.0 | " \
           "400.0 |" in md
    assert "Load average (1, 5, 15 min) at the start: 1.50, 1.00, 0.50" in md


def test_runtimes_section_has_each_runtimes_p99_at_half_its_rate() -> None:
    lat = {"measured": True, "achieved_rate": 990.0, "target_rate": 1000.0, "matched": 500,
           "sent": 500, "p50": 12.0, "p99": 87.5, "max": 140.0,
           "cpu": {"own_cores": 0.8, "foreign_cores": 0.1}}
    results = {"machine": {"nproc": 2, "cpu": "x"}, "sizes": {
        "batched_users": 1, "batched_txns": 1, "batch": 1, "single_users": 1,
        "single_txns": 1, "faust_events": 1}, "date": "d", "mode": "full",
        "engine": {"start": "c"}, "runs": {"latency_aiokafka": lat,
                                           "latency_faust": {"error": "stalled"}}}
    md = render_runtimes(results)
    assert "| aiokafka | 990 / 1,000 | 500 of 500 | 12.0 | **87.5** | 140.0 | 0.80 / 0.10 |" in md
    assert "| faust | failed: stalled |" in md



def test_targets_are_issue_9s_judged_on_one_worker() -> None:
    """The verdicts use one worker's figures against issue 9's targets (≥ 100,000
    batched, ≥ 30× Faust one-record, p99 ≤ 100 ms): two workers meeting a target
    one worker misses do not make it met."""
    runs = {"batched_1w": {"txn_per_s": 54_000.0}, "batched_2w": {"txn_per_s": 120_000.0},
            "single_1w": {"txn_per_s": 24_000.0}, "single_2w": {"txn_per_s": 70_000.0},
            "faust": {"events_per_s": 2_000.0},
            "latency": {"p99": 90.0, "achieved_rate": 12_000.0}}
    text = "\n".join(render_targets(runs))
    assert "one worker: **missed**: 0.54x" in text, text
    assert "(two workers: 120,000/s)" in text
    assert "(2,000 events/s → ≥ 60,000/s): one worker against one Faust worker " \
           "**missed**" in text
    assert "p99 ≤ 100 ms at half load: **met**" in text
    assert "stretch 20 ms: **missed**" in text


def test_the_warm_up_runs_are_shown_apart_from_the_measurements() -> None:
    results: dict[str, Any] = {
        "machine": {"nproc": 2, "cpu": "x", "hypervisor": "kvm", "ram_gib": 24,
                    "kernel": "k", "python": "3.11", "kafka": "k", "java": "j"},
        "sizes": {"batched_users": 1, "batched_txns": 1, "batch": 1,
                  "single_users": 1, "single_txns": 1, "faust_events": 1},
        "date": "d", "mode": "full", "engine": {"start": "c"},
        "runs": {"warmup_batched": {"txn_per_s": 70_153.2},
                 "warmup_single": {"txn_per_s": 35_365.0}}}
    md = render(results)
    assert "discarded" in md and "batched 70,153 and one-record 35,365 transactions/s" in md
    assert "70,153" not in "\n".join(render_targets(results["runs"]))


def _machine_results(runs: dict[str, Any]) -> dict[str, Any]:
    """A full run's results with ``runs``, for what the Machine list says of them."""
    machine = {"nproc": 2, "cpu": "x", "hypervisor": "kvm", "ram_gib": 24, "kernel": "k",
               "python": "3.11", "kafka": "k", "java": "j"}
    sizes = {"batched_users": 1, "batched_txns": 1, "batch": 1, "single_users": 1,
             "single_txns": 1, "faust_events": 1}
    return {"machine": machine, "sizes": sizes, "date": "d", "mode": "full",
            "engine": {"start": "c"}, "runs": {"warmup_batched": {"txn_per_s": 1.0}, **runs}}


def test_the_machine_section_names_each_runs_fresh_memory_cost() -> None:
    md = render(_machine_results({"latency": {"fresh_memory_us": 43.94},
                                  "latency_0.1": {"fresh_memory_us": 0.65},
                                  "latency_0.25": {}}))
    assert "right after each measurement" in md and "latency 43.9, latency_0.1 0.7" in md
    # an older bench's results: no probe, no line
    assert "Fresh memory" not in render(_machine_results({"latency": {}}))


def test_the_machine_section_names_each_runs_cpu_probe() -> None:
    md = render(_machine_results({"batched_1w": {"cpu_probe_ms": 151.6},
                                  "latency": {"cpu_probe_ms": 290.2}, "faust": {}}))
    assert "right before each measurement" in md and ": batched_1w 152, latency 290\n" in md
    # an older bench's results: no probe, no line
    assert "CPU probe" not in render(_machine_results({"latency": {}}))


def test_the_machine_section_names_the_memory_each_measurement_started_with() -> None:
    md = render(_machine_results({
        "batched_1w": {"memory_before": {"free_gb": 20.94, "cached_gb": 1.2}},
        "latency": {"memory_before": {"free_gb": 4.5, "cached_gb": 16.04}}, "faust": {}}))
    assert "every topic is deleted" in md
    assert "before each measurement, GB: batched_1w 20.9 / 1.2, latency 4.5 / 16.0\n" in md
    # an older bench's results: no line
    assert "every topic is deleted" not in render(_machine_results({"latency": {}}))


def test_a_one_worker_figure_is_the_median_of_its_drains_and_shows_them_all() -> None:
    from bench.stream_report import median_drain

    drains = [{"txn_per_s": 95_000.0, "n": 0}, {"txn_per_s": 131_000.0, "n": 1},
              {"txn_per_s": 102_000.0, "n": 2}]
    med = median_drain(drains)
    assert med["n"] == 2 and med["drains"] == [95_000.0, 131_000.0, 102_000.0]
    failed = median_drain([{"txn_per_s": 99_000.0}, {"error": "stalled"}])
    assert failed.get("error") == "stalled"  # a failed drain is the slowest, not skipped
    runs = {"batched_1w": med, "faust": {"events_per_s": 2_000.0},
            "single_1w": median_drain([{"txn_per_s": 50_000.0}])}
    text = "\n".join(render_targets(runs))
    assert "one worker (median of 3 drains: 95,000, 131,000, 102,000/s): **met** " \
           "(1.02x the target)" in text, text
    assert "one worker against" in text  # one drain: no median mentioned


def _latency_results(**lat: Any) -> dict[str, Any]:
    """A full run's results holding only a latency run (1,000 records at 990/s unless
    ``lat`` says otherwise) and a failed one-record drain."""
    run = {"label": "latency", "measured": 1_000, "achieved_rate": 990.0,
           "target_rate": 1000.0, "matched": 1_000, "unmatched": 0, "sent": 1_000,
           "send_seconds": 1.0, "seconds": 1.0, "warmup": 0.0, "enrollments": 10,
           "p50": 12.0, "p90": 20.0, "p99": 87.5, "p99.9": 90.0, "max": 140.0,
           "all_p50": 12.0, "all_p99": 87.5, "all_max": 140.0, "worst_per_second_ms": [140],
           "outcome_kinds": {"granted": 1_000},
           "cpu": {"own_cores": 1.5, "foreign_cores": 0.0, "live_children_cores": 0.7},
           **lat}
    return {"machine": {"nproc": 2, "cpu": "x", "hypervisor": "kvm", "ram_gib": 24,
                        "kernel": "k", "python": "3.11", "kafka": "k", "java": "j"},
            "sizes": {"batched_users": 1, "batched_txns": 1, "batch": 1,
                      "single_users": 1, "single_txns": 1, "faust_events": 1},
            "date": "d", "mode": "full", "engine": {"start": "c"},
            "runs": {"single_1w": {"error": "stalled"}, "latency": run}}


def test_the_latency_run_names_the_cores_the_load_generator_took() -> None:
    results = _latency_results()
    lat = results["runs"]["latency"]
    # runs before the generator's CPU was recorded say nothing of the broker's share
    assert "of which the worker 0.70." in render(results)
    lat["generator_cores"] = 0.41
    assert ("of which the worker 0.70, the load generator (sending, and reading the "
            "outcomes) 0.41, the broker the rest.") in render(results)
    lat["reader_cores"] = 0.12
    assert ("the load generator (sending, and reading the outcomes) 0.41 (the reader "
            "0.12), the broker the rest.") in render(results)
    # runs before the outcomes' stamps were read say nothing of the worker's part
    assert "outcome message's timestamp" not in render(results)
    lat.update(stamped_p50=10.5, stamped_p99=61.25)
    assert ("the worker's part, without the ack and the measuring consumer's reading): "
            "p50 10.5 ms, p99 61.2 ms.") in render(results)


def test_the_workers_own_latency_is_read_from_its_histogram_up_to_99_percent() -> None:
    from bench.stream_report import worker_latency

    def buckets(counts: dict[str, float]) -> dict[str, float]:
        out = {f'mynapoint_outcome_latency_seconds_bucket{{le="{le}"}}': n
               for le, n in counts.items()}
        out["mynapoint_outcome_latency_seconds_count"] = counts["+Inf"]
        return out

    m = buckets({"0.025": 10.0, "0.05": 40.0, "0.1": 90.0, "0.25": 99.5, "0.5": 100.0,
                 "+Inf": 100.0})
    assert worker_latency(m) == ("40.0 % within 50 ms, 90.0 % within 100 ms, "
                                 "99.5 % within 250 ms")
    assert worker_latency({}) == ""  # a run that did not scrape the histogram


def _scraped(m: Any) -> dict[str, float]:
    """What the stream bench keeps of ``m``'s metrics, read over HTTP as from a worker."""
    from prometheus_client import start_http_server

    from bench.bench_stream import scrape_metrics
    from engine.devtools.broker import free_port

    port = free_port()
    server, thread = start_http_server(port, registry=m.registry)
    try:
        return scrape_metrics(port)
    finally:
        server.shutdown()
        thread.join()


def test_the_workers_histogram_is_scraped_from_its_metrics_endpoint() -> None:
    from bench.stream_report import worker_latency
    from engine.metrics import EngineMetrics

    m = EngineMetrics()
    m.observe_outcome_latencies([0.05, 0.2, 0.3])
    got = _scraped(m)
    assert worker_latency(got) == ("33.3 % within 50 ms, 33.3 % within 100 ms, "
                                   "66.7 % within 250 ms, 100.0 % within 500 ms")


def test_a_polls_time_by_phase_is_scraped_and_shown_in_batch_order() -> None:
    from bench.stream_report import phase_breakdown
    from engine.metrics import EngineMetrics

    m = EngineMetrics()
    m.observe_batch(5, 0.030, {"state": 0.004, "decide": 0.02, "prepare": 0.001})
    m.observe_batch(5, 0.010, {"state": 0.002, "decide": 0.006})
    got = _scraped(m)
    # means over both polls (a phase one poll skipped counts as 0 for it), batch order
    assert phase_breakdown(got) == ("prepare 0.5 · decode 0.0 · decide 13.0 · outputs 0.0 · "
                                    "state 3.0 · commit 0.0 · local 0.0")
    assert phase_breakdown({}) == ""  # a run that did not scrape the phases


def test_the_latency_run_says_how_long_its_load_lasted_when_its_rows_ran_out() -> None:
    results = _latency_results(sent=600_000, send_seconds=13.6, seconds=20.0, warmup=3.0)
    assert ("for 3 s of warm-up + 10.6 s measured (20 s were asked for; the live "
            "dataset's 600,000 transactions ran out at this rate)") in render(results)
    results["runs"]["latency"]["send_seconds"] = 23.0
    assert "for 3 s of warm-up + 20 s measured, Kafka" in render(results)
