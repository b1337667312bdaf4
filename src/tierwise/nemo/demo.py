"""The Nemo half of `tierwise demo`: the five designs on synthetic twitter-merged, at the geometry of the comparison
in docs/results-nemo.md (2M requests, 8 MiB of flash), with Nemo's fill-rate ablation.

Scaled far below the paper's 400 GB ZN540 runs (nemo.md §11): the gap between the log-structured designs (Log,
Nemo) and the set-based ones, and the ablation's trend, are what to look at. The replays take seconds; the first
run on a machine also compiles each design (a few minutes, cached afterwards).
"""

from __future__ import annotations

from pathlib import Path

from tierwise.common.report import print_table, write_json
from tierwise.common.units import format_size
from tierwise.nemo.bench import (COMPARISON_NEMO, BenchSettings, ablation_rows, bench, markdown_report,
                                 rows_for_terminal)

DEMO = BenchSettings(
    trace="synth:twitter-merged:2M",
    engines="nemo,log,set,kangaroo,fairywren",
    flash_size="8M",
    zone_size="64K",
    nemo_zone_size="256K",
    sample_every=200_000,
    cache_sizes=(),  # no miss-ratio curve: it would double the run time
    options={"nemo": {**COMPARISON_NEMO, "flush_threshold": 32}},  # p_th = S/2 for S = 62 sets per SG
)


def command(st: BenchSettings) -> str:
    return (f"tierwise nemo bench --trace {st.trace} --engines {st.engines} --flash-size {format_size(st.flash_size)} "
            f"--zone-size {format_size(st.zone_size)} --nemo-zone-size {format_size(st.nemo_zone_size)} "
            f"--sizes '{','.join(f'{x:g}' for x in st.cache_sizes)}' --plot PLOTS"
            + "".join(f" --opt {e}.{k}={v}" for e, o in st.options.items() for k, v in o.items()))


def run(out_dir: str | Path, settings: BenchSettings = DEMO) -> str:
    """Run the demo bench, print its tables, write JSON + plots into `out_dir`; returns a Markdown section."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = bench(settings, plot_dir=out)
    print_table(rows_for_terminal(report.table), title="Nemo vs baselines (demo scale)")
    if report.ablation:
        print_table(ablation_rows(report.ablation), title="Nemo fill-rate ablation (paper Fig. 17)")
    write_json(report, out / "bench.json")
    title = "Nemo: flash-cache designs side by side (demo scale)"
    note = ("\nPaper (ZN540, 400 GB, Fig. 12a): WA Nemo 1.56, Log 1.08, FairyWREN 15.20, Set 16.31, Kangaroo 55.59; "
            "DRAM 8.3 bits/obj (Nemo) vs 9.9 (FairyWREN). This run is an 8 MiB cache on a 2M-request trace: "
            "expect Log and Nemo far below the set-based designs; docs/results-nemo.md discusses each difference "
            "from the paper.\n")
    (out / "bench.md").write_text(markdown_report(report, title, command(settings), link=lambda p: Path(p).name) + note)
    # the section is embedded in the report folder's summary.md, one level up
    return markdown_report(report, title, command(settings), link=lambda p: f"{out.name}/{Path(p).name}") + note
