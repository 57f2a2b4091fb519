"""Render the README reliability section from what the test run recorded.

    python3 -m pytest tests/integration          # passing tests write build/reliability.json
    python tests/benchmarks/reliability_report.py --write README.md

The section between ``<!-- reliability:begin -->`` and ``<!-- reliability:end -->`` is
replaced; without ``--write`` it is printed. Every figure comes from the record
(``tests/helpers/reliability.py``): faults injected and the images lost and duplicated
after each, the bad-input kinds tried with expected and observed reasons, peak memory under
load, and the security checks that passed. Nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers.reliability import DEFAULT_RECORD, iter_entries, load_records  # noqa: E402

BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


def _short(test: str) -> str:
    path, _, name = test.partition("::")
    return f"`{Path(path).name}::{name}`"


def _faults(data: dict[str, Any]) -> list[str]:
    rows = [(test, e) for test, _, e in iter_entries(data) if e["type"] == "fault"]
    lost = sum(e["lost"] for _, e in rows)
    duplicated = sum(e["duplicated"] + e["extra_rows"] for _, e in rows)
    images = sum(e["images"] for _, e in rows)
    lines = ["### Faults injected and survived", "",
             f"{len(rows)} faults, {images:,} images in all: **{lost} lost, {duplicated} "
             "duplicated** (lost: no final state; duplicated: a second prediction or a second "
             "row for one file).", "",
             "| fault | images | done | failed (with reason) | lost | duplicated | test |",
             "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {e['fault']} | {e['images']:,} | {e['done']:,} | {e['failed']} | {e['lost']} "
              f"| {e['duplicated'] + e['extra_rows']} | {_short(t)} |" for t, e in rows]
    return lines


def _inputs(data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for test, _, e in iter_entries(data):
        if e["type"] != "inputs":
            continue
        kinds = e["kinds"]
        right = sum(k["expected"] == k["observed"] for k in kinds)
        lines += ["### Bad inputs tried", "",
                  f"{len(kinds)} kinds, each written over a queued file and met by a real "
                  f"worker in chunks shared with {e['good']} good images ({_short(test)}): "
                  f"{right}/{len(kinds)} failed with the expected reason, "
                  f"{e['good_done']}/{e['good']} good images done, {e['workers_died']} worker "
                  "processes died. The kinds and their expected reasons are the legend in "
                  "`tests/helpers/bad_inputs.py`.", "",
                  "| reason code | kinds that ended with it |", "|---|---|"]
        by_code: dict[str, list[str]] = {}
        for k in kinds:
            shown = k["kind"] if k["observed"] == k["expected"] else \
                f"{k['kind']} (**expected `{k['expected']}`**)"
            by_code.setdefault(k["observed"], []).append(f"`{shown}`")
        lines += [f"| `{code}` | {', '.join(names)} |" for code, names in sorted(by_code.items())]
    return lines


def _load(data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for test, stamp, e in iter_entries(data):
        if e["type"] != "load":
            continue
        mb = ", ".join(f"{v:,.0f}" for v in e["worker_child_peak_rss_mb"])
        early = ", ".join(f"{v:,.0f}" for v in e["worker_rss_at_2000_mb"])
        late = ", ".join(f"{v:,.0f}" for v in e["worker_rss_at_10000_mb"])
        busy = f", load average {stamp['load_average']}" if "load_average" in stamp else ""
        lines += ["### Memory under load", "",
                  f"{e['images']:,} images of {e['image_size'][0]} x {e['image_size'][1]} "
                  f"pixels, chunks of {e['chunk_size']}, {e['workers']} `mammo worker` "
                  f"processes, Redis and PostgreSQL, tiny test model ({_short(test)}, "
                  f"{stamp['machine']}{busy}):", "",
                  f"- producer (`mammo submit`) peak RSS: {e['producer_peak_rss_mb']:,.0f} MB",
                  f"- worker pool process peak RSS: {mb} MB (parents: "
                  + ", ".join(f"{v:,.0f}" for v in e["worker_parent_peak_rss_mb"]) + " MB"
                  + (f"; decoder processes: {e['decoder_peak_rss_mb']:,.0f} MB at most"
                     if "decoder_peak_rss_mb" in e else "") + ")",
                  f"- worker RSS after 2,000 images: {early} MB; after all: {late} MB; "
                  f"largest growth {e['max_growth_mb']:,.1f} MB (bound "
                  f"{e['growth_bound_mb']:,.0f} MB): flat, not growing with the batch",
                  f"- submit to last image done: {e['submit_to_done_s']:,.0f} s; whole test "
                  f"{e['test_wall_s']:,.0f} s"]
    return lines


def _checks(data: dict[str, Any]) -> list[str]:
    rows = [(t, e) for t, _, e in iter_entries(data) if e["type"] == "check"]
    if not rows:
        return []
    return ["### Security checks passed", "", *[f"- {e['check']} ({_short(t)})" for t, e in rows]]


def render(data: dict[str, Any]) -> str:
    records = data["tests"].values()
    commits = ", ".join(sorted({r["commit"] for r in records}))
    days = sorted({r["at"][:10] for r in records})
    machines = "; ".join(sorted({r["machine"] for r in records}))
    when = f"{len(data['tests'])} tests, {' to '.join(dict.fromkeys([days[0], days[-1]]))}, " \
           f"commits {commits}, {machines}"
    parts = [_faults(data), _inputs(data), _load(data), _checks(data)]
    body = "\n\n".join("\n".join(p) for p in parts if p)
    return (f"{BEGIN}\n<!-- generated by tests/benchmarks/reliability_report.py from "
            f"build/reliability.json; do not edit by hand -->\n"
            f"Recorded by the passing tests of the run ({when}).\n\n{body}\n{END}")


def replace_section(text: str, section: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"markers {BEGIN} ... {END} not found")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + section + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, default=DEFAULT_RECORD)
    parser.add_argument("--write", type=Path, help="a Markdown file with the markers")
    args = parser.parse_args()
    data = load_records(args.record)
    if not data["tests"]:
        raise SystemExit(f"nothing recorded in {args.record}: run the integration tests first")
    section = render(data)
    if args.write:
        args.write.write_text(replace_section(args.write.read_text(), section))
    else:
        print(section)


if __name__ == "__main__":
    main()
