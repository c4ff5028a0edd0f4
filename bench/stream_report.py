"""The ``## Streaming`` section of bench/RESULTS.md, rendered from the results of
bench/bench_stream.py (``results.json``): report rendering apart from measurement, so
that ``bench_stream.py --render-only`` can redo the text without measuring again."""

from __future__ import annotations

from typing import Any


def _f(x: float | None, nd: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{nd}f}"


def _target(value: float | None, goal: float, higher: bool = True) -> str:
    if value is None:
        return "not measured"
    if (value >= goal) if higher else (value <= goal):
        return f"**met** ({value / goal:.2f}x the target)" if higher else \
            f"**met** ({value:.0f} ms)"
    if higher:
        short = 100 * (1 - value / goal)
        return f"**missed**: {value / goal:.2f}x the target ({short:.0f} % short)"
    return f"**missed**: {value:.0f} ms, {value / goal:.1f}x the limit"


def median_drain(drains: list[dict[str, Any]]) -> dict[str, Any]:
    """The drain whose rate is the median of ``drains`` (the lower middle one for an
    even number; a failed drain counts as the slowest), with every drain's rate in
    ``drains``: one drain of the same code and data spreads by up to half, so a
    verdict on a single drain is a draw (bench/RESULTS.md, "Spread of one drain")."""
    ranked = sorted(drains, key=lambda d: d.get("txn_per_s") or 0.0)
    med = dict(ranked[(len(ranked) - 1) // 2])
    med["drains"] = [d.get("txn_per_s") for d in drains]
    return med


def _drains(x: dict[str, Any]) -> str:
    """How a median was taken: " (median of 3 drains: a, b, c/s)", or ""."""
    d = x.get("drains") or []
    if len(d) < 2:
        return ""
    return f" (median of {len(d)} drains: {', '.join(_f(v) for v in d)}/s)"


def render_targets(r: dict[str, Any]) -> list[str]:
    """The Targets lines of a stream run's ``runs``: issue 9's targets, judged on one
    worker (two workers are shown, not judged)."""
    b1, b2 = r.get("batched_1w", {}), r.get("batched_2w", {})
    s1, s2 = r.get("single_1w", {}), r.get("single_2w", {})
    lat = r.get("latency", {})
    base = r.get("faust", {}).get("events_per_s")
    out: list[str] = ["### Targets", ""]
    w = out.append
    one_b = b1.get("txn_per_s")
    w(f"- batched ≥ 100,000 transactions/s, one worker{_drains(b1)}: "
      f"{_target(one_b, 100_000)}; stretch 300,000: {_target(one_b, 300_000)}"
      + (f" (two workers: {b2['txn_per_s']:,.0f}/s)" if b2.get("txn_per_s") else ""))
    one_s = s1.get("txn_per_s")
    if one_s and base:
        w(f"- one-record ≥ 30× the canonical Faust agent ({base:,.0f} events/s → "
          f"≥ {30 * base:,.0f}/s): one worker{_drains(s1)} against one Faust worker "
          f"{_target(one_s, 30 * base)}, i.e. {one_s / base:.1f}× Faust; stretch 50×: "
          f"{_target(one_s, 50 * base)}"
          + (f"; two workers {s2['txn_per_s'] / base:.1f}× Faust" if s2.get("txn_per_s")
             else ""))
    else:
        w("- one-record ≥ 30× Faust: not measured")
    w(f"- p99 ≤ 100 ms at half load: {_target(lat.get('p99'), 100, higher=False)}; "
      f"stretch 20 ms: {_target(lat.get('p99'), 20, higher=False)}")
    ok = [v["achieved_rate"] for k, v in r.items()
          if k.startswith("latency") and v.get("p99") is not None and v["p99"] <= 100]
    tried = [v["achieved_rate"] for k, v in r.items()
             if k.startswith("latency") and v.get("p99") is not None]
    if tried:
        w(f"  (p99 ≤ 100 ms was reached at {max(ok):,.0f}/s and below)" if ok else
          f"  (not reached at any measured rate, down to {min(tried):,.0f}/s)")
    w("")
    return out


def worker_latency(metrics: dict[str, float]) -> str:
    """The share of a run's records within each bound of the worker's outcome-latency
    histogram up to the first bound that holds 99 % of them ("" if not scraped)."""
    total = metrics.get("mynapoint_outcome_latency_seconds_count", 0.0)
    bounds = sorted((float(k.split('le="')[1].rstrip('"}')), v) for k, v in metrics.items()
                    if k.startswith("mynapoint_outcome_latency_seconds_bucket{")
                    and "+Inf" not in k)
    parts = []
    for le, n in bounds:
        if le < 0.05 or not total:
            continue
        parts.append(f"{100 * n / total:.1f} % within {le * 1000:,.0f} ms")
        if n >= 0.99 * total:
            break
    return ", ".join(parts)


PHASE_KEY = 'mynapoint_batch_phase_seconds_sum{phase="'


def _measured_seconds(lat: dict[str, Any]) -> str:
    """How long the measured part of a latency load lasted: the live dataset's rows can
    run out before the duration asked for (the sender stops at the last one)."""
    asked = lat["seconds"]
    sent = lat.get("send_seconds", lat["warmup"] + asked) - lat["warmup"]
    if sent >= asked - 0.5:
        return f"{asked:.0f} s measured"
    return (f"{sent:.1f} s measured ({asked:.0f} s were asked for; the live dataset's "
            f"{lat['sent']:,} transactions ran out at this rate)")


def phase_breakdown(metrics: dict[str, float]) -> str:
    """A poll's mean time by phase in ms, in the order a batch goes through them
    (the worker's ``mynapoint_batch_phase_seconds``; "" if not scraped)."""
    from engine.metrics import BATCH_PHASES

    polls = metrics.get("mynapoint_batch_records_count", 0.0)
    got = {k[len(PHASE_KEY):-2]: v for k, v in metrics.items() if k.startswith(PHASE_KEY)}
    if not polls or not got:
        return ""
    return " · ".join(f"{p} {1000 * got[p] / polls:.1f}" for p in BATCH_PHASES if p in got)


def per_measurement(runs: dict[str, Any], key: str, digits: int = 1) -> str:
    """Each measurement's ``key`` (a probe of bench.host), in the order they ran; ""
    when no run has one (results of an older bench)."""
    got = [(k, x[key]) for k, x in runs.items()
           if isinstance(x, dict) and x.get(key) is not None]
    return ", ".join(f"{k} {v:.{digits}f}" for k, v in got)


def memory_before(runs: dict[str, Any]) -> str:
    """Free memory / page cache (GB) before each measurement, in the order they ran;
    "" for results of a bench that did not note it."""
    got = [(k, x["memory_before"]) for k, x in runs.items()
           if isinstance(x, dict) and x.get("memory_before")]
    return ", ".join(f"{k} {m['free_gb']:.1f} / {m['cached_gb']:.1f}" for k, m in got)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    r = results["runs"]
    mode = results["mode"]
    b1, b2 = r.get("batched_1w", {}), r.get("batched_2w", {})
    s1, s2 = r.get("single_1w", {}), r.get("single_2w", {})
    lat, fa = r.get("latency", {}), r.get("faust", {})
    sz = results["sizes"]
    base = fa.get("events_per_s")
    out: list[str] = []
    w = out.append
    w("## Streaming")
    w("")
    w(f"End-to-end on one machine: broker, worker(s), publisher and measuring consumer all "
      f"share it. Run of {results['date']} (`{mode}` sizes), "
      f"`bench/bench_stream.py`; raw numbers in `bench/_work/stream/results.json`.")
    w("")
    w("### Machine")
    w("")
    w(f"- {m['nproc']} vCPU, {m['cpu']} ({m['hypervisor']} guest), {m['ram_gib']} GiB RAM, "
      f"Linux {m['kernel']}")
    w(f"- Python {m['python']}; {m['kafka']}; {m['java']}")
    eng = results.get("engine") or {}
    if eng:
        w(f"- Engine code: commit {eng['start']}"
          + (f" at the start, {eng['end']} at the end of the run" if eng.get("end") and
             eng["end"] != eng["start"] else ""))
    w("- Kafka topics: 8 partitions, replication 1; worker producer idempotent, acks=all")
    probe = per_measurement(r, "cpu_probe_ms", 0)
    if probe:
        w(f"- CPU probe, a new process running a fixed Python loop right before each "
          f"measurement (ms a pass, median of three; the same code takes longer when the "
          f"host gives this VM less of a core): {probe}")
    fresh = per_measurement(r, "fresh_memory_us")
    if fresh:
        w(f"- Fresh memory, a new process touching 64 MB right after each measurement "
          f"(µs per 4 KB page: under 1 on a machine whose host does not take freed memory "
          f"back, or where the run had just freed memory the probe reused; tens where the "
          f"host takes it back, as a run's growth then pays too): {fresh}")
    before = memory_before(r)
    if before:
        w(f"- Between measurements every topic is deleted (the broker removes the files 1 s "
          f"later), so that each one runs on a broker holding its own topics, not a page "
          f"cache filled by the runs before it; free memory / page cache before each "
          f"measurement, GB: {before}")
    wb, ws = r.get("warmup_batched", {}), r.get("warmup_single", {})
    if wb.get("txn_per_s") and ws.get("txn_per_s"):
        w(f"- Warm-up before the measurements, discarded (numba compiles code changed since the "
          f"last run into its cache on the first one, and the broker's JVM starts cold): "
          f"one worker, batched {wb['txn_per_s']:,.0f} and one-record "
          f"{ws['txn_per_s']:,.0f} transactions/s")
    w("")
    w("### Commands")
    w("")
    w("```")
    w(".venv/bin/pip install py-spy    # profiler, for the benchmark only (not in pyproject)")
    w(f".venv/bin/python bench/bench_stream.py{' --quick' if mode == 'quick' else ''}")
    w("```")
    w("")
    w("It starts its own broker on a free port (data in `bench/_work/stream/kafka`), and "
      "per measurement a fresh topic prefix. The workers are "
      "`python -m engine.cli worker --broker … --topic-prefix … --partitions 8 "
      "--state-dir bench/_work/stream/state --metrics-port …` (`WorkerProcess`); "
      "the Faust baseline is `bench/faust_baseline.py worker -l warn --without-web`.")
    w("")
    w("### Results")
    w("")
    w("| measurement | input | workers | seconds | transactions/s | records/s | outcomes "
      "| CPU cores used: ours / others |")
    w("|---|---|---:|---:|---:|---:|---:|---:|")

    def cpu(x: dict[str, Any]) -> str:
        c = x.get("cpu")
        return f"{c['own_cores']:.2f} / {c['foreign_cores']:.2f}" if c else "n/a"


    def row(name: str, x: dict[str, Any], inp: str) -> None:
        if not x:
            return
        if not x.get("txn_per_s"):
            w(f"| {name} | {inp} | {x.get('workers', '?')} | FAILED: {x.get('error')} "
              f"| | | | |")
            return
        w(f"| {name}{_drains(x)} | {inp} | {x['workers']} | {x['seconds']:.2f} | "
          f"**{x['txn_per_s']:,.0f}** | {x['records_per_s']:,.0f} | "
          f"{x['count']:,} / {x['expected_outcomes']:,} | {cpu(x)} |")

    bi = (f"{sz['batched_users']:,} enr + {sz['batched_txns']:,} txn, "
          f"arrow-ipc × {sz['batch']:,}")
    si = f"{sz['single_users']:,} enr + {sz['single_txns']:,} txn, 1 JSON record/msg"
    row("(a) batched", b1, bi)
    row("(a) batched", b2, bi)
    row("(b) one-record", s1, si)
    row("(b) one-record", s2, si)
    if fa:
        if base:
            w(f"| (d) Faust baseline (canonical agent) | {fa['events']:,} txn, 1 JSON "
              f"record/msg | 1 | {fa['span_seconds']:.2f} | **{base:,.0f}** | {base:,.0f} | "
              f"{fa['count']:,} / {fa['events']:,} | {cpu(fa)} |")
        else:
            w(f"| (d) Faust baseline | | 1 | FAILED: {fa.get('error')} | | | | |")
    w("")
    w("Seconds run from the worker's first `assigned partitions` log line to the timestamp "
      "of the last outcome message; everything was published before the worker started "
      "(so this is the engine's drain rate, not the publisher's). Records/s counts "
      "enrollments too. Outcomes = output messages / offline `settle` grants + rejections "
      "(an excess would be duplicates: none seen). For Faust: first to last outcome. "
      "CPU cores used: average over the measurement of this benchmark's processes "
      "(broker, workers, publisher/consumer) and of everything else on the machine "
      f"(other people's jobs; {m['nproc']} cores in all).")
    w("")
    extra = []
    for name, x in (("(a) 1 worker", b1), ("(a) 2 workers", b2), ("(b) 1 worker", s1),
                    ("(b) 2 workers", s2)):
        if x.get("txn_per_s"):
            mt = x.get("metrics") or []
            nb = sum(q.get("mynapoint_batch_records_count", 0) for q in mt)
            nr = sum(q.get("mynapoint_batch_records_sum", 0) for q in mt)
            bs = sum(q.get("mynapoint_batch_seconds_sum", 0) for q in mt)
            busy = bs / (x["seconds"] * max(x["workers"], 1)) if x["seconds"] else 0
            extra.append(
                f"- {name}: worker start-up {x['startup_seconds']:.1f} s (not counted), "
                f"first outcome {_f(x.get('first_outcome_after'), 2)} s after ready, "
                f"~{_f(x.get('rate_10_90'))} outcomes/s between 10 % and 90 % done, "
                f"{int(nb):,} polls of {nr / nb if nb else 0:,.0f} records on average, "
                f"{100 * busy:.0f} % of the wall time inside `Worker.process`, "
                f"{x.get('changelog_messages', 0) / max(x['count'], 1):.2f} state-changelog "
                f"messages per outcome, worker peak RSS "
                f"{', '.join(f'{v:,.0f}' for v in x.get('worker_peak_rss_mib') or [] if v)} "
                f"MiB; publisher "
                f"needed {x['published_seconds']:.1f} s for the {x['messages']:,} messages"
                + (f"; {x['assignments']} assignment log lines (rebalance settled "
                   f"{x['settled_after_seconds']:.1f} s after the first)"
                   if x["workers"] > 1 else ""))
    for name, x in (("(a) 1 worker", b1), ("(a) 2 workers", b2), ("(b) 1 worker", s1),
                    ("(b) 2 workers", s2), ("latency", lat), ("Faust", fa)):
        o = x.get("other_attempt")
        if o:
            val = (f"{o['txn_per_s']:,.0f} transactions/s" if o.get("txn_per_s") else
                   f"{o['events_per_s']:,.0f} events/s" if o.get("events_per_s") else
                   f"p50 {_f(o.get('p50'), 1)} ms, p99 {_f(o.get('p99'), 1)} ms"
                   if o.get("p99") else f"error {o.get('error')}")
            extra.append(f"- {name} was measured twice because other processes took CPU; "
                         f"shown is the attempt they disturbed less; the other gave {val} "
                         f"with {(o.get('cpu') or {}).get('foreign_cores', 0):.2f} cores "
                         f"used by others")
    if extra:
        w("Details:")
        w("")
        out.extend(extra)
        w("")
    if lat:
        w("### Latency at half the sustained one-record rate")
        w("")
        if lat.get("measured"):
            w(f"One worker, input topic pre-filled with {lat['enrollments']:,} enrollments "
              f"(read before the load starts); transactions sent as one-record messages at "
              f"{lat['target_rate']:,.0f}/s (= 0.5 × the one-record rate of (b), "
              f"{r['single_1w'].get('txn_per_s', 0):,.0f}/s) for {lat['warmup']:.0f} s of "
              f"warm-up + {_measured_seconds(lat)}, Kafka timestamp = received_at = "
              f"now, campaign `accept_end` moved to 2099 "
              f"(`bench/_work/stream/campaign-live.toml`). Latency = outcome received by a "
              f"consumer of the output topics (in a process of its own, not the sender's) "
              f"− input handed to the producer (both "
              f"`time.time()` on this machine), matched by `source`.")
            w("")
            w("| sent | achieved rate | outcomes matched | p50 | p90 | p99 | p99.9 | max |")
            w("|---:|---:|---:|---:|---:|---:|---:|---:|")
            w(f"| {lat['measured']:,} (+ warm-up) | {lat['achieved_rate']:,.0f}/s | "
              f"{lat['matched']:,} ({lat['unmatched']} unmatched) | {lat['p50']:.1f} ms | "
              f"{lat['p90']:.1f} ms | **{lat['p99']:.1f} ms** | {lat['p99.9']:.1f} ms | "
              f"{lat['max']:.1f} ms |")
            w("")
            if "stamped_p99" in lat:
                w(f"To the outcome message's timestamp instead (the worker's producer stamps "
                  f"it as it builds the batch: the worker's part, without the ack and the "
                  f"measuring consumer's reading): p50 {lat['stamped_p50']:.1f} ms, p99 "
                  f"{lat['stamped_p99']:.1f} ms.")
            w(f"Including the warm-up: p50 {lat['all_p50']:.1f} ms, p99 {lat['all_p99']:.1f} "
              f"ms, max {lat['all_max']:.1f} ms. Worst latency per second of sending (ms): "
              f"{', '.join(str(x) for x in lat['worst_per_second_ms'])}. "
              f"Outcomes: {lat['outcome_kinds']}. CPU cores used during the load: "
              f"{cpu(lat)} (ours / others), of which the worker "
              f"{(lat.get('cpu') or {}).get('live_children_cores', 0):.2f}"
              + (f", the load generator (sending, and reading the outcomes) "
                 f"{lat['generator_cores']:.2f}"
                 + (f" (the reader {lat['reader_cores']:.2f})" if "reader_cores" in lat
                    else "")
                 + ", the broker the rest" if "generator_cores" in lat else "") + ".")
            mt = (lat.get("metrics") or [{}])[0]
            own = worker_latency(mt)
            if own:
                w(f"The worker's own measure of the same load (record timestamp to the end "
                  f"of its batch's checkpoint, `mynapoint_outcome_latency_seconds`): {own}.")
            nb = mt.get("mynapoint_batch_records_count", 0)
            if nb:
                span = lat["send_seconds"]
                w(f"The worker processed {int(nb):,} polls of "
                  f"{mt.get('mynapoint_batch_records_sum', 0) / nb:,.0f} records on average, "
                  f"and spent {mt.get('mynapoint_batch_seconds_sum', 0):.1f} s inside "
                  f"`Worker.process` during the {span:.0f} s of sending"
                  + (f"; a poll's mean time by phase (`mynapoint_batch_phase_seconds`, "
                     f"ms): {phases}." if (phases := phase_breakdown(mt)) else "."))
            w("")
        else:
            w(f"FAILED: {lat.get('error') or lat}")
            w("")
        sweep = [(k, v) for k, v in r.items() if k.startswith("latency_") and v.get("measured")]
        if sweep:
            w("The same at lower rates (shorter runs), to show where the tail comes from:")
            w("")
            w("| rate | fraction of (b) | measured | p50 | p90 | p99 | max | polls × records "
              "| time in `Worker.process` | mean poll by phase (ms) |")
            w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            rows = sorted([*sweep, ("latency", lat)], key=lambda kv: kv[1]["target_rate"])
            for _k, v in rows:
                mt = (v.get("metrics") or [{}])[0]
                nb = mt.get("mynapoint_batch_records_count", 0) or 0
                frac = v["target_rate"] / (r["single_1w"].get("txn_per_s") or 1)
                w(f"| {v['achieved_rate']:,.0f}/s | {frac:.2f} | {v['measured']:,} | "
                  f"{v['p50']:.1f} ms | {v['p90']:.1f} ms | **{v['p99']:.1f} ms** | "
                  f"{v['max']:.1f} ms | {int(nb):,} × "
                  f"{mt.get('mynapoint_batch_records_sum', 0) / nb if nb else 0:,.0f} | "
                  f"{mt.get('mynapoint_batch_seconds_sum', 0):.1f} s of "
                  f"{v['send_seconds']:.0f} s | {phase_breakdown(mt) or '—'} |")
            w("")
    out.extend(render_targets(r))
    profs = [(k, r[k]) for k in ("profile_batched", "profile_single", "profile_live")
             if k in r]
    if profs:
        w("### Where the time goes (py-spy, worker process)")
        w("")
        rate = results.get("profile_rate", "?")
        w(f"Separate runs with `py-spy record --nonblocking -r {rate} -f raw -p "
          f"<worker pid>` attached from the worker's `assigned partitions` to its last "
          f"outcome (idle time, i.e. waiting in epoll, is not sampled, so the shares are of "
          f"CPU-busy samples). Time in C extensions (orjson, pyarrow, numba's compiled "
          f"kernel, msgspec) is charged to the Python function that called them.")
        w("")
        for key, x in profs:
            p = x.get("profile")
            if key == "profile_live":
                kind = (f"live one-record load at {x.get('target_rate', 0):,.0f} "
                        f"transactions/s (as in the latency run)")
                what = (f"{x.get('sent', 0):,} transactions sent; p50 "
                        f"{_f(x.get('p50'), 1)} ms, p99 {_f(x.get('p99'), 1)} ms while "
                        f"profiled")
            else:
                kind = "batched drain" if key == "profile_batched" else "one-record drain"
                what = (f"{x['transactions']:,} transactions, {_f(x.get('txn_per_s'))} "
                        f"transactions/s while profiled")
                if x.get("partial"):
                    what = (f"the first {x['seconds']:.0f} s of draining the data of (a): "
                            f"{x['count']:,} outcomes, {_f(x.get('txn_per_s'))}/s while "
                            f"profiled")
            if not p:
                w(f"{kind}: no profile ({x.get('profile_error') or x.get('error')})")
                w("")
                continue
            w(f"**{kind}** ({what}; {p['samples']:,} samples, worker busy "
              f"{100 * (p['busy_fraction'] or 0):.0f} % of the profiled time; raw stacks in "
              f"`{x.get('profile_file')}`)")
            w("")
            w("| area | share of samples |")
            w("|---|---:|")
            for a, _c, pc in p["areas"]:
                w(f"| {a} | {pc:.1f} % |")
            w("")
            w("| top functions by own (self) time | self |")
            w("|---|---:|")
            for f, _c, pc in p["self"][:10]:
                w(f"| `{f}` | {pc:.1f} % |")
            w("")
            w("| top functions by inclusive time | incl. |")
            w("|---|---:|")
            shown = 0
            for f, _c, pc in p["inclusive"]:
                if any(s in f for s in ("<module>", "_run_module", "_run_code", "run_forever",
                                        "run_until_complete", "_run_once", "Runner.run",
                                        "run (asyncio", "main (engine/", "Handle._run",
                                        "run_worker")):
                    continue
                w(f"| `{f}` | {pc:.1f} % |")
                shown += 1
                if shown >= 12:
                    break
            w("")
    notes = results.get("notes") or []
    if notes:
        w("### Observations")
        w("")
        for n in notes:
            w(f"- {n}")
        w("")
    return "\n".join(out).rstrip() + "\n"


def render_runtimes(results: dict[str, Any]) -> str:
    """The ``## Runtimes`` section: ``bench_stream.py --runtimes``."""
    m, r, sz = results["machine"], results["runs"], results["sizes"]
    quiet = results.get("quiet") or {}
    out: list[str] = []
    w = out.append
    w("## Runtimes")
    w("")
    w(f"The worker under each runtime (`mynapoint worker --runtime aiokafka|faust`) and the "
      f"canonical Faust agent (`bench/faust_baseline.py`), in one run of {results['date']} "
      f"(`bench/bench_stream.py --runtimes{' --quick' if results['mode'] == 'quick' else ''}`"
      f"), one worker, 8 partitions, everything published before the worker starts; "
      f"{m['nproc']} vCPU {m['cpu']}, broker, worker and load generator on the same machine. "
      f"Engine code: commit {results['engine']['start']}.")
    w("")
    load = quiet.get("foreign_cores")
    w("**Machine load**: "
      + (f"other processes used {load:.2f} of {m['nproc']} cores when the run started; "
         if load is not None else "the run did not wait for a quiet machine; ")
      + "each row shows the cores this run's processes (broker, worker, load generator) "
      "and everything else used meanwhile. Figures taken while others used a core or more "
      "are lower bounds.")
    w("")
    w("| measurement | input | seconds | transactions/s | outcomes | CPU µs per message "
      "(this run's processes) | cores: ours / others |")
    w("|---|---|---:|---:|---:|---:|---:|")

    def row(name: str, x: dict[str, Any], inp: str, n_msgs: int | None) -> None:
        c = x.get("cpu") or {}
        if x.get("error") or not (x.get("txn_per_s") or x.get("events_per_s")):
            w(f"| {name} | {inp} | failed: {x.get('error', 'not run')} | | | | |")
            return
        secs = x.get("seconds") or x.get("span_seconds")
        rate = x.get("txn_per_s") or x.get("events_per_s")
        us = (1e6 * c["own_cores"] * c["wall"] / n_msgs) if c and n_msgs else None
        outcomes = (f"{x.get('count', 0):,} / {x.get('expected_outcomes', x.get('events', 0)):,}")
        w(f"| {name} | {inp} | {_f(secs, 2)} | **{_f(rate)}** | {outcomes} | {_f(us)} | "
          f"{_f(c.get('own_cores'), 2)} / {_f(c.get('foreign_cores'), 2)} |")

    batched = (f"{sz['batched_users']:,} enr + {sz['batched_txns']:,} txn, arrow-ipc × "
               f"{sz['batch']:,}")
    single = f"{sz['single_users']:,} enr + {sz['single_txns']:,} txn, 1 JSON record/msg"
    for key, name, inp in (("batched_aiokafka", "batched, aiokafka runtime", batched),
                           ("batched_faust", "batched, Faust runtime", batched),
                           ("single_aiokafka", "one-record, aiokafka runtime", single),
                           ("single_faust", "one-record, Faust runtime", single)):
        x = r.get(key, {})
        row(name, x, inp, x.get("messages"))
    fa = r.get("faust", {})
    row("canonical Faust agent", fa, f"{sz['faust_events']:,} txn, 1 JSON record/msg",
        fa.get("events"))
    w("")
    w("p99 append → outcome at half of each runtime's own one-record rate (live one-record "
      "transactions at a steady rate, their people's enrollments read first; the issue's "
      "target for the default runtime is 100 ms):")
    w("")
    w("| runtime | rate sent / target (tx/s) | outcomes matched | p50 ms | p99 ms | max ms "
      "| cores: ours / others |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for rt in ("aiokafka", "faust"):
        x = r.get(f"latency_{rt}", {})
        c = x.get("cpu") or {}
        if not x.get("measured"):
            w(f"| {rt} | failed: {x.get('error', 'not run')} | | | | | |")
            continue
        w(f"| {rt} | {_f(x.get('achieved_rate'))} / {_f(x.get('target_rate'))} | "
          f"{x.get('matched', 0):,} of {x.get('sent', 0):,} | {_f(x.get('p50'), 1)} | "
          f"**{_f(x.get('p99'), 1)}** | {_f(x.get('max'), 1)} | "
          f"{_f(c.get('own_cores'), 2)} / {_f(c.get('foreign_cores'), 2)} |")
    w("")
    sa, sf = r.get("single_aiokafka", {}), r.get("single_faust", {})
    ba, bf = r.get("batched_aiokafka", {}), r.get("batched_faust", {})
    base = fa.get("events_per_s")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}×" if a and b else "n/a"

    w(f"- Faust runtime / aiokafka runtime: batched "
      f"{ratio(bf.get('txn_per_s'), ba.get('txn_per_s'))}, one-record "
      f"{ratio(sf.get('txn_per_s'), sa.get('txn_per_s'))}.")
    w(f"- One-record input against the canonical Faust agent: aiokafka runtime "
      f"{ratio(sa.get('txn_per_s'), base)}, Faust runtime {ratio(sf.get('txn_per_s'), base)}.")

    def per_msg(x: dict[str, Any]) -> float | None:
        c = x.get("cpu") or {}
        return 1e6 * c["own_cores"] * c["wall"] / x["messages"] if c and x.get("messages") \
            else None

    a_us, f_us = per_msg(sa), per_msg(sf)
    if a_us and f_us:
        w(f"- What the Faust runtime costs per one-record message: {f_us - a_us:,.0f} µs of "
          f"CPU more than the aiokafka runtime ({f_us:,.0f} against {a_us:,.0f} µs, all of "
          f"this run's processes, start-up included): Faust's consumer thread, conductor, "
          f"stream and `take_events` buffering per event, and the conversion of each event "
          f"back to an aiokafka record; the settlement itself is the same code.")
    w("- Start-up (launch to partitions assigned): "
      + ", ".join(f"{k.replace('_', ' ')} {_f(r.get(k, {}).get('startup_seconds'), 1)} s"
                  for k in ("single_aiokafka", "single_faust")) + ".")
    la, lb = results.get("loadavg_start"), results.get("loadavg_end")
    if la:
        w(f"- Load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in la)}"
          + (f"; at the end: {', '.join(f'{x:.2f}' for x in lb)}" if lb else "") + ".")
    _runtime_profiles(w, r, results.get("profile_rate", "?"))
    return "\n".join(out) + "\n"


def _runtime_profiles(w: Any, r: dict[str, Any], rate: Any) -> None:
    """Per one-record message, CPU µs by area under each runtime (py-spy samples of the
    worker process, all its threads, divided by the messages drained)."""
    runs = {k: r.get(f"profile_single_{k}", {}) for k in ("aiokafka", "faust")}
    if not any(x.get("profile") for x in runs.values()):
        return
    w("")
    w("### Per message: where the Faust runtime's CPU goes (py-spy)")
    w("")
    w(f"Separate runs of the one-record input (not the measured ones), `py-spy record "
      f"--nonblocking -r {rate} -f raw -p <worker pid>` from `assigned partitions` to the "
      f"last outcome. py-spy samples only busy threads (the Faust runtime's consumer thread "
      f"too), so samples / rate / messages is the worker's CPU per message, by the "
      f"innermost frame of ours or of a library on the stack.")
    w("")

    def per_msg(x: dict[str, Any], area: str) -> float | None:
        p = x.get("profile")
        if not p or not x.get("messages"):
            return None
        c = next((c for a, c, _ in p["areas"] if a == area), 0)
        return 1e6 * c / rate / x["messages"] if isinstance(rate, int) else None

    areas: list[str] = []
    for x in runs.values():
        for a, _c, _pc in (x.get("profile") or {}).get("areas", []):
            if a not in areas:
                areas.append(a)
    w("| area | aiokafka runtime, µs/message | Faust runtime, µs/message |")
    w("|---|---:|---:|")
    totals = {k: 0.0 for k in runs}
    for a in areas:
        vals = {k: per_msg(x, a) for k, x in runs.items()}
        for k, v in vals.items():
            totals[k] += v or 0.0
        w(f"| {a} | {_f(vals['aiokafka'], 1)} | {_f(vals['faust'], 1)} |")
    w(f"| **all** | **{_f(totals['aiokafka'], 1)}** | **{_f(totals['faust'], 1)}** |")
    w("")
    for k, x in runs.items():
        p = x.get("profile")
        if not p:
            w(f"- {k} runtime: no profile ({x.get('profile_error') or x.get('error')})")
            continue
        w(f"- {k} runtime: {x.get('messages', 0):,} messages, {_f(x.get('txn_per_s'))} "
          f"transactions/s while profiled, {p['samples']:,} samples; raw stacks in "
          f"`{x.get('profile_file')}`.")
    fp = runs["faust"].get("profile")
    if fp:
        w("")
        w("| Faust runtime: top functions by own (self) time | self |")
        w("|---|---:|")
        for f, _c, pc in fp["self"][:12]:
            w(f"| `{f}` | {pc:.1f} % |")
