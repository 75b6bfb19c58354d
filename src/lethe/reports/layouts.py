"""Report layouts: how each scenario's results read in report.md and report.html.

A scenario declaration names its layout (``Scenario.report``) and the runner records it in results.json as
``report_layout``, so a report needs no scenario code. Results files written before that field existed name
only their scenario; the built-in scenarios' layouts are listed here for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..util.registry import Registry


@dataclass(frozen=True)
class Layout:
    markdown: Callable[[dict], str]                     # report.md's text
    html: Callable[[dict], tuple[list[str], str]]       # report.html: the layout's figures and final table


def _layouts() -> Registry[Layout]:
    from .continual import continual_summary, render_continual_report
    from .copyright import copyright_summary, render_copyright_report
    from .html import extraction_summary, qa_summary
    from .markdown import render_memorized_report, render_report

    reg: Registry[Layout] = Registry("report layout")
    reg.add("qa", Layout(render_report, qa_summary))
    reg.add("extraction", Layout(render_memorized_report, extraction_summary))
    reg.add("continual", Layout(render_continual_report, continual_summary))
    reg.add("copyright", Layout(render_copyright_report, copyright_summary))
    return reg


LAYOUTS = _layouts()

# results.json files without "report_layout": their scenario's layout
BUILT_IN_SCENARIO_LAYOUTS = {"fictitious-authors": "qa", "real-world": "qa", "memorized-sequences": "extraction",
                             "continual-authors": "continual", "copyrighted-text": "copyright", "own-data": "qa"}


def layout_for(results: dict) -> Layout:
    """The layout a results file records (or its built-in scenario's); an unknown one is an error naming the known."""
    from ..util.errors import LetheError

    name = results.get("report_layout")
    if name is None:
        scenario = results.get("scenario")
        if not isinstance(scenario, str):
            raise LetheError("results: field 'scenario' missing or not a string")
        if scenario not in BUILT_IN_SCENARIO_LAYOUTS:
            raise LetheError(f"results: scenario {scenario!r} records no 'report_layout' and is not built in "
                             f"({', '.join(BUILT_IN_SCENARIO_LAYOUTS)})")
        name = BUILT_IN_SCENARIO_LAYOUTS[scenario]
    if not isinstance(name, str):
        raise LetheError("results: field 'report_layout' is not a string")
    return LAYOUTS.get(name)


def render(loaded: Sequence[tuple[str, dict]]) -> tuple[str, str]:
    """(report.md, report.html) for (source, results) pairs, rendered before anything is written."""
    from .html import render_page, section

    layouts = [layout_for(res) for _, res in loaded]
    md = "\n\n".join(lay.markdown(res) for lay, (_, res) in zip(layouts, loaded))
    page = render_page([section(res, src, lay.html) for lay, (src, res) in zip(layouts, loaded)])
    return md, page


def write_reports(results: dict, out: str | Path) -> tuple[Path, Path]:
    """report.md and report.html for one scenario's results, in ``out``."""
    from ..util.io import write_text

    md, page = render([(str(out), results)])
    return write_text(Path(out) / "report.md", md), write_text(Path(out) / "report.html", page)
