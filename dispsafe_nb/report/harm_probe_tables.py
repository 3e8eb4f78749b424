"""Markdown for the linear harm probe's report."""

from __future__ import annotations


def harm_probe_markdown(result: dict) -> str:
    """A `benchmarks/harm_probe.py` result (its JSON) as Markdown: the chosen layer and how well it separates
    harmful from safe prompts off-distribution, the probe system against the dual system per set and form, the
    targets."""
    row = result["layers"][result["layer"]]
    lines = [
        f"Probe at layer {result['layer']} of {len(result['layers'])} (held-out AUROC on the training mix "
        f"{row['held_out_auroc']:.3f}; off-distribution AUROC harmful vs safe: XSTest {row['xstest_auroc']:.3f}, "
        f"bundled forms vs their twins {row['bundled_forms_auroc']:.3f}).",
        "",
        "| set | n | probe flags | probe system | dual | probe system / dual (95 % bootstrap) |",
        "|---|---|---|---|---|---|",
    ]
    for bench, s in result["comparison"]["sets"].items():
        ratio = "–" if s.get("ratio") is None else f"{s['ratio']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"
        flags = result["flag_rate"][bench]
        lines.append(
            f"| {bench} ({s['metric']}) | {s['n']} | {flags:.2f} | {s['student']:.2f} | {s['dual']:.2f} | {ratio} |"
        )
    forms = result["comparison"].get("per_form", {})
    if forms:
        cells = [f"{f} {v['ratio']:.2f} (n = {v['n']})" for f, v in forms.items() if v["ratio"] is not None]
        lines += ["", "Per phrasing form (bundled_forms_test, probe system / dual): " + ", ".join(cells)]
    met = [n for n, t in result["targets"].items() if t["met"]]
    lines += ["", f"Targets met: {len(met)}/{len(result['targets'])} ({', '.join(met) or 'none'})."]
    return "\n".join(lines)
