"""Report layouts: how each scenario's results read in report.md and report.html.

A scenario declaration names its layout (``Scenario.report``); a results file names its scenario, so
any results.json finds its layout through the scenario registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .registry import Registry


@dataclass(frozen=True)
class Layout:
    markdown: Callable[[dict], str]                     # report.md's text
    html: Callable[[dict], tuple[list[str], str]]       # report.html: the layout's figures and final table


def _layouts() -> Registry[Layout]:
    from .report import render_memorized_report, render_report
    from .report_continual import continual_summary, render_continual_report
    from .report_copyright import copyright_summary, render_copyright_report
    from .report_html import extraction_summary, qa_summary

    reg: Registry[Layout] = Registry("report layout")
    reg.add("qa", Layout(render_report, qa_summary))
    reg.add("extraction", Layout(render_memorized_report, extraction_summary))
    reg.add("continual", Layout(render_continual_report, continual_summary))
    reg.add("copyright", Layout(render_copyright_report, copyright_summary))
    return reg


LAYOUTS = _layouts()


def layout_for(results: dict) -> Layout:
    """The layout of the scenario a results file names (an unknown scenario is an error naming the known ones)."""
    from .errors import LetheError
    from .scenarios.catalog import SCENARIOS

    name = results.get("scenario")
    if not isinstance(name, str):
        raise LetheError("results: field 'scenario' missing or not a string")
    return LAYOUTS.get(SCENARIOS.get(name).report)


def render(loaded: Sequence[tuple[str, dict]]) -> tuple[str, str]:
    """(report.md, report.html) for (source, results) pairs, rendered before anything is written."""
    from .report_html import render_page, section

    layouts = [layout_for(res) for _, res in loaded]
    md = "\n\n".join(lay.markdown(res) for lay, (_, res) in zip(layouts, loaded))
    page = render_page([section(res, src, lay.html) for lay, (src, res) in zip(layouts, loaded)])
    return md, page


def write_reports(results: dict, out: str | Path) -> tuple[Path, Path]:
    """report.md and report.html for one scenario's results, in ``out``."""
    from .io import write_text

    md, page = render([(str(out), results)])
    return write_text(Path(out) / "report.md", md), write_text(Path(out) / "report.html", page)
