"""`tierwise demo`: both halves on the embedded defaults, one report folder.

Each half lives with its wing (`tierwise.remoe.demo`, `tierwise.nemo.demo`) and returns the Markdown
section it contributes; this module only stitches them into `summary.md`.
"""

from __future__ import annotations

import time
from pathlib import Path

from tierwise.common.report import stdout


def run_demo(out: Path, *, remoe: bool = True, nemo: bool = True) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = ["# tierwise demo report\n"]
    t0 = time.perf_counter()
    if remoe:
        from tierwise.remoe.demo import run as run_remoe

        sections.append(run_remoe(out / "remoe"))
    if nemo:
        from tierwise.nemo.demo import run as run_nemo

        sections.append(run_nemo(out / "nemo"))
    sections.append(f"\n_Total demo time: {time.perf_counter() - t0:.0f} s._\n")
    summary = out / "summary.md"
    summary.write_text("\n".join(sections))
    stdout.print(f"[bold green]Report written to {summary}[/]")
    return summary
