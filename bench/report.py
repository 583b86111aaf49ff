"""Results: a markdown table per section and of the targets, PNG plots, results.json, and
the generated part of docs/benchmarks.md."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bench.common import ROOT, Section

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results:begin (bench/report.py) -->", "<!-- results:end -->"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def targets_table(sections: Sequence[Section]) -> str:
    rows = []
    for s in sections:
        for t in s.targets:
            unit = "" if t.unit == "×" else f" {t.unit}"
            mark = "×" if t.unit == "×" else ""
            rows.append(
                [
                    s.key,
                    t.name,
                    f"{t.op} {t.limit:g}{mark}{unit}",
                    f"{t.measured.text(3 if t.unit != '×' else 2)}{mark}{unit}",
                    "**holds**" if t.holds else "**missed**",
                    t.detail,
                ]
            )
    return table(["section", "target", "limit", "measured: median (range)", "", "note"], rows)


def markdown(
    sections: Sequence[Section], meta: dict[str, object], plots: dict[str, str], heading: str = "#"
) -> str:
    out = [f"{heading} Results ({meta['mode']} mode, {meta['date']})", ""]
    out += [
        f"Command: `{meta['command']}`; {meta['repeats']} repeats, {meta['seconds']:.0f} s.",
        "",
    ]
    out += ["Machine: " + ", ".join(f"{k} {v}" for k, v in dict(meta["machine"]).items()), ""]  # type: ignore[call-overload]
    out += [f"{heading}# Targets", "", targets_table(sections), ""]
    for s in sections:
        out += [f"{heading}# {s.title}", "", s.setup, "", table(s.columns, s.rows), ""]
        out += [f"- {n}" for n in s.notes]
        if s.notes:
            out.append("")
        if s.key in plots:
            out += [f"![{s.key}]({plots[s.key]})", ""]
    return "\n".join(out)


def write(folder: Path, sections: Sequence[Section], meta: dict[str, object]) -> Path:
    """Write results.md, results.json and the plots into ``folder``; returns results.md."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = plot(folder, sections)
    (folder / "results.md").write_text(markdown(sections, meta, plots))
    data = {
        "meta": meta,
        "sections": [
            {
                "key": s.key,
                "title": s.title,
                "setup": s.setup,
                "columns": s.columns,
                "rows": s.rows,
                "notes": s.notes,
                "targets": [t.as_dict() for t in s.targets],
                "series": s.series,
            }
            for s in sections
        ],
    }
    (folder / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    return folder / "results.md"


def update_docs(folder: Path, sections: Sequence[Section], meta: dict[str, object]) -> None:
    """Replace the generated part of docs/benchmarks.md with these results."""
    rel = Path("..") / folder.resolve().relative_to(ROOT)
    plots = {k: str(rel / v) for k, v in plot_names(sections).items() if (folder / v).exists()}
    body = markdown(sections, meta, plots, heading="##")
    text = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOCS.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def plot_names(sections: Sequence[Section]) -> dict[str, str]:
    return {s.key: f"{s.key}.png" for s in sections if s.series}


def plot(folder: Path, sections: Sequence[Section]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawers = {
        "embedding": _embedding,
        "retrieval": _retrieval,
        "ask": _ask,
        "mesh": _mesh,
        "concurrency": _concurrency,
        "ingest": _ingest,
    }
    done = {}
    for s in sections:
        if s.key in drawers and s.series:
            fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
            drawers[s.key](ax, s.series)
            ax.set_title(s.title, fontsize=9)
            fig.tight_layout()
            fig.savefig(folder / f"{s.key}.png")
            plt.close(fig)
            done[s.key] = f"{s.key}.png"
    return done


def _embedding(ax, series) -> None:  # type: ignore[no-untyped-def]
    callers = series["callers"]
    ax.plot(callers, series["ragmesh"], "o-", label="ragmesh EmbeddingService (gRPC)")
    ax.plot(callers, series["infinity"], "s-", label="infinity-emb (HTTP)")
    ax.axhline(
        series["inprocess"], color="grey", ls="--", label="in process, encode(batch_size=32)"
    )
    if "inprocess_same_work" in series:
        ax.axhline(
            series["inprocess_same_work"],
            color="grey",
            ls=":",
            label="in process, 32 texts at a time",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(callers, [str(c) for c in callers])
    ax.set_xlabel("concurrent single-text callers")
    ax.set_ylabel("texts / s (median of repeats)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)


def _retrieval(ax, series) -> None:  # type: ignore[no-untyped-def]
    keys = list(series)
    x = range(len(keys))
    single = [series[k]["single_qps"] for k in keys]
    batched = [series[k]["batched_qps"] for k in keys]
    ax.bar([i - 0.2 for i in x], single, width=0.4, label="one query per call")
    ax.bar([i + 0.2 for i in x], batched, width=0.4, label="64 queries per call")
    ax.set_xticks(list(x), [k.replace("/", "\n") for k in keys], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("queries / s (log)")
    ax.legend(fontsize=8)


def _ask(ax, series) -> None:  # type: ignore[no-untyped-def]
    for key, label in (("direct", "straight from the generator"), ("relay", "relayed by query")):
        values = series[key]
        ax.plot(values, [i / len(values) for i in range(len(values))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("token delay, send → client (ms, log)")
    ax.set_ylabel("fraction of tokens")
    ax.legend(fontsize=8)


def _mesh(ax, series) -> None:  # type: ignore[no-untyped-def]
    rounds = range(1, len(series["direct_p50"]) + 1)
    ax.plot(rounds, series["direct_p50"], "o-", label="direct p50")
    ax.plot(rounds, series["mesh_p50"], "s-", label="through the sidecar pair p50")
    ax.set_xlabel("round")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)


def _concurrency(ax, series) -> None:  # type: ignore[no-untyped-def]
    levels = series["levels"]
    labels = {"ragmesh": "ragmesh", "monolith": "FastAPI monolith"}
    for system, marker in (("ragmesh", "o"), ("monolith", "s")):
        ax.plot(levels, series[f"{system}_asks"], marker + "-", label=f"{labels[system]}: Asks/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_xlabel("concurrent Ask streams")
    ax.set_ylabel("answered Asks / s (solid)")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    for system, marker in (("ragmesh", "o"), ("monolith", "s")):
        right.plot(
            levels,
            series[f"{system}_ttft_p99"],
            marker + "--",
            alpha=0.6,
            label=f"{labels[system]}: first token p99",
        )
    right.set_yscale("log")
    right.set_ylabel("time to first token p99, ms (dashed, log)")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="center left")


def _ingest(ax, series) -> None:  # type: ignore[no-untyped-def]
    keys = list(series)
    ax.bar(range(len(keys)), [series[k] for k in keys])
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("chunks / s, Ingest to searchable")


def load(folder: Path) -> tuple[list[Section], dict[str, object]]:
    """The sections and metadata a run wrote to ``folder``/results.json."""
    from bench.common import Spread, Target

    data = json.loads((folder / "results.json").read_text())
    sections = []
    for s in data["sections"]:
        targets = [
            Target(
                t["section"],
                t["name"],
                Spread(t["measured"]["values"]),
                t["op"],
                t["limit"],
                t["unit"],
                t["detail"],
            )
            for t in s["targets"]
        ]
        sections.append(
            Section(
                s["key"],
                s["title"],
                s["setup"],
                s["columns"],
                s["rows"],
                targets,
                s["series"],
                s["notes"],
            )
        )
    return sections, data["meta"]


def main() -> None:
    """``python -m bench.report bench/results/quick``: put that run into docs/benchmarks.md."""
    import sys

    folder = Path(sys.argv[1]).resolve()
    sections, meta = load(folder)
    update_docs(folder, sections, meta)


if __name__ == "__main__":
    main()
