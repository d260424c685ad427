"""Results: the console table, ``latest.md``, ``latest.json`` and the throughput chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SYSTEM_ORDER = ["arcflow", "asyncio batcher", "raw COPY", "per-record INSERT"]
VARIANT_ORDER = [
    "arcflow (run_file)",
    "arcflow, concurrency 100",
    "arcflow, await submit()",
    "arcflow, 1 writer connection",
    "raw COPY, 2 connections",
]


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    out = [
        "# arcflow benchmark results",
        "",
        f"{meta['date']} · commit `{meta['commit']}` · {meta['machine']} · Python {meta['python']} · "
        f"PostgreSQL {meta['postgres']} ({meta['database']}) · "
        f"{'quick (smoke) run' if meta['quick'] else 'full run'} · {meta['elapsed_s']:.0f} s",
        "",
        "Medians of alternating rounds (the order of the systems rotates each round); "
        "ratios are computed from the medians of this run.",
        "",
    ]
    b = results["benchmarks"]
    if "ingest" in b:
        r = b["ingest"]
        out += [
            f"## 1. Ingest: {r['scenarios']:,} no-op scenarios, concurrency {r['concurrency']}, {r['rounds']} round(s)",
            "",
            "Records/s, first scenario handed over to last row committed (min-max over rounds). "
            f"Per-record INSERT runs {r['per_record_scenarios']:,} scenarios (its rate does not depend on the batch size).",
            "",
        ]
        header = ["system", *[f"batch {bs:,}" for bs in r["batch_sizes"]]]
        rows = []
        for name in SYSTEM_ORDER:
            cells = []
            present = False
            for bs in r["batch_sizes"]:
                v = r["records_per_s"][str(bs)].get(name)
                if v is None:
                    cells.append("")
                else:
                    present = True
                    cells.append(f"**{_fmt(v['median'])}** ({_fmt(v['min'])}-{_fmt(v['max'])})")
            if present:
                rows.append([name, *cells])
        for key, label in [
            ("arcflow/raw_copy", "arcflow / raw COPY"),
            ("arcflow/asyncio_batcher", "arcflow / asyncio batcher"),
            ("arcflow/per_record_insert", "arcflow / per-record INSERT"),
        ]:
            rows.append([label, *[_fmt(r["ratios"][str(bs)][key], 2) for bs in r["batch_sizes"]]])
        out += [_table(header, rows), ""]
        variants = [
            [
                name,
                f"**{_fmt(v['median'])}** ({_fmt(v['min'])}-{_fmt(v['max'])})",
                _fmt(r["ratios"]["1000"].get(f"{name}/raw_copy"), 2),
            ]
            for name in VARIANT_ORDER
            if (v := r["records_per_s"]["1000"].get(name))
        ]
        if variants:
            out += [
                f"Variants at batch 1,000 (the table above feeds `Runtime.submit_nowait()` at concurrency {r['concurrency']}): "
                "the CLI's path (`run_file` on a JSONL file: parsing included), 100 producers, one `await submit()` per scenario, "
                "arcflow's writer on one connection instead of its default two, and the raw COPY ceiling over two connections "
                "(each takes the next batch as soon as its last one committed).",
                "",
                _table(["variant", "records/s", "/ raw COPY"], variants),
                "",
            ]
    if "roundtrips" in b:
        r = b["roundtrips"]
        out += [
            f"## 2. Round trips per 1,000 records (batch size {r['batch_size']:,})",
            "",
            f"Marginal counts from PostgreSQL: transactions from {r['counters']['transactions']}, "
            f"statements from {r['counters']['statements']}.",
            "",
        ]
        rows = []
        for name in SYSTEM_ORDER:
            v = r["systems"].get(name)
            if v:
                rows.append(
                    [
                        name,
                        _fmt(v["commits_per_1000"], 2),
                        _fmt(v["statements_per_1000"], 1),
                        _fmt(v["commits_per_batch"], 2),
                    ]
                )
        out += [
            _table(
                ["system", "transactions / 1,000", "statements / 1,000", "transactions / batch"],
                rows,
            ),
            "",
        ]
    if "latency" in b:
        r = b["latency"]
        out += [
            f"## 3. Latency-bound: {r['scenarios']:,} scenarios sleeping {r['sleep_s'][0]:g}-{r['sleep_s'][1]:g} s, "
            f"concurrency {r['concurrency']}",
            "",
            f"Bound = concurrency / mean latency = {r['concurrency']} / {r['mean_latency_s']:.3f} s = "
            f"**{r['bound_records_per_s']:.1f} records/s**. A zero-overhead runtime running these exact sleeps in "
            f"order would take {r['ideal_makespan_s']:.2f} s ({r['ideal_records_per_s']:.1f} records/s: the tail of "
            "the last wave keeps any finite run under the bound). Steady state = completions between the "
            "concurrency-th completion and the last start, per second.",
            "",
        ]
        rows = []
        for name in SYSTEM_ORDER:
            v = r["systems"].get(name)
            if v:
                rows.append([
                    name, _fmt(v["records_per_s"], 1), _fmt(v["overall_vs_bound"], 3), _fmt(v["steady_records_per_s"], 1),
                    _fmt(v["steady_vs_bound"], 3), _fmt(v["ideal_makespan_vs_makespan"], 3), _fmt(v["vs_seed_4_per_s"], 1),
                ])  # fmt: skip
        out += [
            _table(
                [
                    "system",
                    "records/s",
                    "/ bound",
                    "steady records/s",
                    "steady / bound",
                    "ideal makespan / makespan",
                    "/ seed's 4/s",
                ],
                rows,
            ),
            "",
        ]
    if "memory" in b:
        r = b["memory"]
        small, large = (str(s) for s in r["scenarios"])
        out += [
            f"## 4. Memory: peak RSS of the whole process, {int(small):,} vs {int(large):,} no-op scenarios",
            "",
            f"Each run is its own process (`python -m arcflow run ... --batch-size 1000 --concurrency 100`); "
            f"importing arcflow and its libraries alone takes {r['import_floor_mb']:.1f} MB.",
            "",
        ]
        rows = []
        for name in SYSTEM_ORDER:
            v = r["systems"].get(name)
            if v:
                rows.append(
                    [
                        name,
                        _fmt(v[small]["peak_rss_mb"], 1),
                        _fmt(v[large]["peak_rss_mb"], 1),
                        _fmt(r["large_over_small"][name], 3),
                    ]
                )
        out += [
            _table(["system", f"{int(small):,} (MB)", f"{int(large):,} (MB)", "ratio"], rows),
            "",
        ]
    if "trickle" in b:
        r = b["trickle"]
        out += [
            f"## 5. Trickle: one outcome every {r['interval_s'] * 1000:.0f} ms, flush interval {r['flush_interval_s']:g} s "
            f"({r['outcomes']} outcomes)",
            "",
            "Time from an outcome's completion (`finished_at`) to its row's write transaction (`recorded_at`).",
            "",
        ]
        rows = [
            [name, _fmt(v["p50_ms"], 0), _fmt(v["p99_ms"], 0), _fmt(v["max_ms"], 0)]
            for name in SYSTEM_ORDER
            if (v := r["systems"].get(name))
        ]
        out += [_table(["system", "p50 (ms)", "p99 (ms)", "max (ms)"], rows), ""]
    if "outage" in b:
        r = b["outage"]
        if "skipped" in r:
            out += ["## 6. Outage", "", f"Skipped: {r['skipped']}.", ""]
        else:
            s = r["phases_s"]
            out += [
                f"## 6. Outage: {s['outage']:g} s database stop after {s['before']:g} s, then {s['after']:g} s",
                "",
                f"Scenarios sleep {r['scenario_sleep_s'] * 1000:.0f} ms at concurrency {r['concurrency']}; "
                "completed = scenarios finished per second, written = rows committed per second.",
                "",
            ]
            rows = []
            for name in SYSTEM_ORDER:
                v = r["systems"].get(name)
                if v:
                    ph = v["phases"]
                    rows.append([
                        name,
                        *[f"{_fmt(ph[p]['completed_per_s'])} / {_fmt(ph[p]['written_per_s'])}" for p in ("before", "during", "after")],
                        _fmt(v["lost"]), _fmt(v["duplicated"]),
                    ])  # fmt: skip
            out += [
                _table(
                    [
                        "system",
                        "before: completed / written per s",
                        "during",
                        "after",
                        "lost",
                        "duplicated",
                    ],
                    rows,
                ),
                "",
            ]
    if "modal" in b:
        from .modal_sandboxes import markdown as modal_markdown

        out += ["## 7. Modal sandboxes (local control plane)", "", modal_markdown(b["modal"]), ""]
    if "modal_fn" in b:
        from .modal_functions import markdown as modal_fn_markdown

        out += [
            "## 7b. Modal Functions (local control plane)",
            "",
            modal_fn_markdown(b["modal_fn"]),
            "",
        ]
    if "modal_paths" in b:
        from .modal_paths import markdown as modal_paths_markdown

        out += [
            "## 7c. Modal paths: sandbox per scenario, warm pool, function (local control plane)",
            "",
            modal_paths_markdown(b["modal_paths"]),
            "",
        ]
    if "cli" in b:
        r = b["cli"]
        rows = [
            [
                f"{int(n):,}",
                _fmt(v["arcflow"]["records_per_s"]),
                _fmt(v["equal"]["records_per_s"]),
                _fmt(v["minimal"]["records_per_s"]),
                _fmt(v["arcflow_over_equal"], 2),
                _fmt(v["arcflow_over_minimal"], 2),
            ]
            for n, v in r["sizes"].items()
        ]
        out += [
            "## 8. The CLI whole job: `python -m arcflow run FILE`, start to exit",
            "",
            _table(
                [
                    "scenarios",
                    "arcflow /s",
                    "equal-work script /s",
                    "minimal script /s",
                    "arcflow / equal",
                    "arcflow / minimal",
                ],
                rows,
            ),
            "",
        ]
    if "concurrency" in b:
        r = b["concurrency"]
        rows = [
            [
                f"{row['concurrency']:,}",
                _fmt(row["bound_per_s"]),
                _fmt(row["arcflow_steady_per_s"]),
                _fmt(row["asyncio_steady_per_s"]),
                _fmt(row["arcflow_vs_bound"], 3),
                _fmt(row["asyncio_vs_bound"], 3),
            ]
            for row in r["latency"]
        ]
        out += [
            "## 9. Concurrency: latency-bound runs, sync functions, process:",
            "",
            _table(
                [
                    "concurrency",
                    "bound /s",
                    "arcflow steady /s",
                    "asyncio steady /s",
                    "arcflow / bound",
                    "asyncio / bound",
                ],
                rows,
            ),
            "",
            f"Sync `python:` at concurrency {r['sync']['concurrency']}: arcflow "
            f"{_fmt(r['sync']['arcflow_per_s'])}/s, ThreadPoolExecutor loop "
            f"{_fmt(r['sync']['threads_per_s'])}/s ({_fmt(r['sync']['arcflow_vs_threads'], 2)}). "
            f"`process:` at concurrency {r['process']['concurrency']}: arcflow "
            f"{_fmt(r['process']['arcflow_per_s'])}/s, threads + subprocess.run "
            f"{_fmt(r['process']['threads_per_s'])}/s ({_fmt(r['process']['arcflow_vs_threads'], 2)}).",
            "",
        ]
    if "fleet" in b:
        r = b["fleet"]
        rows = [
            [
                str(row["workers"]),
                _fmt(row["bound_per_s"]),
                _fmt(row["shared_per_s"]),
                _fmt(row["alone_same_concurrency_per_s"]),
                _fmt(row["shared_vs_alone"], 2),
                _fmt(row["shared_vs_bound"], 2),
            ]
            for row in r["workers"]
        ]
        t = r["takeover"]
        out += [
            f"## 10. Shared runs: {r['scenarios']:,} scenarios of 0.1-0.3 s, "
            f"{r['concurrency_per_worker']} concurrent per worker",
            "",
            _table(
                [
                    "workers",
                    "bound /s",
                    "shared run /s",
                    "one process, same concurrency /s",
                    "shared / one process",
                    "shared / bound",
                ],
                rows,
            ),
            "",
            f"Takeover (lease {t['lease_s']:g} s): a SIGKILLed worker's {t['claims_of_the_killed_worker']} "
            f"claims ran elsewhere {t['first_running_elsewhere_s']:g}-{t['last_running_elsewhere_s']:g} s "
            "after the kill.",
            "",
        ]
    out += ["## Targets", ""]
    rows = []
    for name, r in b.items():
        for t in r.get("targets", []):
            aim = (
                f" (aim {t['aim']:g}: {'met' if t['aim_met'] else 'not met'})" if "aim" in t else ""
            )
            rows.append(
                [
                    name,
                    t["target"],
                    _fmt(t["value"], 3) if isinstance(t["value"], float) else _fmt(t["value"]),
                    f"{t['goal']:g}",
                    ("met" if t["met"] else "**not met**") + aim,
                ]
            )
    out += [_table(["benchmark", "target", "value", "goal", ""], rows), ""]
    if results.get("chart"):
        out += [f"![records/s against batch size]({results['chart']})", ""]
    return "\n".join(out)


def chart(results: dict[str, Any], path: Path) -> bool:
    """Throughput against batch size for arcflow and each baseline (PNG). False without matplotlib."""
    r = results["benchmarks"].get("ingest")
    if r is None:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = r["batch_sizes"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    markers = {"arcflow": "o", "asyncio batcher": "s", "raw COPY": "^"}
    for name in SYSTEM_ORDER:
        pts = [
            (bs, r["records_per_s"][str(bs)][name])
            for bs in sizes
            if name in r["records_per_s"][str(bs)]
        ]
        if not pts:
            continue
        if name == "per-record INSERT":
            v = pts[0][1]["median"]
            ax.axhline(v, color="grey", linestyle="--", linewidth=1)
            ax.text(sizes[0], v * 1.15, f"per-record INSERT ({v:,.0f}/s)", color="grey", fontsize=8)
            continue
        xs = [p[0] for p in pts]
        med = [p[1]["median"] for p in pts]
        lo = [p[1]["median"] - p[1]["min"] for p in pts]
        hi = [p[1]["max"] - p[1]["median"] for p in pts]
        ax.errorbar(xs, med, yerr=[lo, hi], marker=markers.get(name, "o"), capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{s:,}" for s in sizes])
    ax.set_xlabel("batch size (records per transaction)")
    ax.set_ylabel("records/s (median, min-max)")
    ax.set_title(f"Ingest of {r['scenarios']:,} no-op scenarios")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "latest.png"
    if chart(results, png):
        results["chart"] = png.name
    paths = {"json": out_dir / "latest.json", "md": out_dir / "latest.md"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(paths["json"])
    paths["md"].write_text(markdown(results))
    if results.get("chart"):
        paths["png"] = png
    return paths
