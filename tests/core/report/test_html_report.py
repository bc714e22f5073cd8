"""The HTML report (``mlrollout report ID -o html``) and the Markdown one by its full name.

Sandbox rollouts are run for real (the ``local`` provider, a virtual clock: well under a second),
then their journals are rendered. The SVG fragments are parsed as XML, the page as HTML; a
hostile journal must come out escaped, and the page must reference nothing outside itself.
Headless Chromium (Debian ``chromium``) then renders the page of a rolled-back rollout, and the
screenshot is decoded with the standard library (zlib + struct) to check it is not blank.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, replace
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

import mlrollout
from mlrollout.api import Rollouts
from mlrollout.engine.runner import plan_of
from mlrollout.plan.model import AnalyzeWindow
from mlrollout.plan.timeline import ExecStep, expand_steps
from mlrollout.report import html as html_module
from mlrollout.report.html import STRATEGY_SECTIONS, html_report
from mlrollout.report.markdown import markdown_report, report_state, timeline_rows
from mlrollout.state.base import Event, RolloutRecord
from mlrollout.testing.peers import require_binary

REPO = Path(mlrollout.__file__).resolve().parents[1]
PLANS = REPO / "plans"


@dataclass
class Rendered:
    record: RolloutRecord
    events: list[Event]
    steps: list[ExecStep]
    strategy: str
    state: Path  # its state directory (for the CLI)

    def html(self) -> str:
        return html_report(self.record, self.events, self.steps, strategy=self.strategy)


def _run(factory: pytest.TempPathFactory, plan: str) -> Rendered:
    """A sandbox rollout of ``plan`` in a state directory of its own (the sandbox endpoint lives
    there too: a promotion changes what the next rollout starts from)."""
    state_dir = factory.mktemp("state")
    with Rollouts(str(state_dir)) as rollouts:
        outcome = rollouts.run(PLANS / plan)
        record = rollouts.store.get_rollout(outcome.rollout_id)
        loaded = plan_of(record)
        return Rendered(
            record,
            rollouts.events(record.id),
            expand_steps(loaded),
            loaded.strategy.type,
            state_dir,
        )


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    rendered = _run(tmp_path_factory, "local-canary-bad.yaml")
    assert rendered.record.phase == "rolled_back"
    return rendered


@pytest.fixture(scope="module")
def late(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Rolled back after a change in the sandbox's world (a world fact in the journal)."""
    rendered = _run(tmp_path_factory, "local-late-regression.yaml")
    assert rendered.record.phase == "rolled_back"
    assert any(e.kind == "fact" for e in rendered.events)
    return rendered


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    rendered = _run(tmp_path_factory, "local-canary-good.yaml")
    assert rendered.record.phase == "succeeded"
    return rendered


class Page(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(document: str) -> Page:
    page = Page()
    page.feed(document)
    page.close()
    return page


def svgs(document: str) -> list[ET.Element]:
    fragments = re.findall(r"<svg\b.*?</svg>", document, flags=re.S)
    return [ET.fromstring(fragment) for fragment in fragments]


def external_references(document: str) -> list[str]:
    """Attributes and CSS that would make a browser fetch something."""
    found = []
    page = parse(document)
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in ("src", "href", "xlink:href", "srcset", "action", "data", "poster"):
                found.append(f"<{tag} {name}={value!r}>")
        if tag in ("script", "link", "iframe", "img", "object", "embed", "image", "use"):
            found.append(f"<{tag}>")
    found += re.findall(r"url\s*\(|@import", document)
    return found


# -- the page of real sandbox rollouts ----------------------------------------------------------


def test_page_has_every_section(bad: Rendered) -> None:
    document = bad.html()
    assert document.startswith("<!DOCTYPE html>")
    titles = re.findall(r"<h2>(.*?)</h2>", document)
    assert titles == [
        "Timeline",
        "Weights over time",
        "Gates over the looks",
        "Decision",
        "Final gate verdicts",
        "What to do next",
    ]
    text = unescape(document)
    assert "Rolled back</strong> because errors:" in text
    assert bad.record.snapshot["reason"] in text  # the decision's sentence
    assert "<code>mlrollout plan preview" in document  # next steps, with their commands


def test_svg_fragments_are_well_formed_xml(bad: Rendered) -> None:
    charts = svgs(bad.html())
    gates = {g["gate"] for g in bad.record.snapshot["last_verdict"]["gates"]}
    assert len(charts) == 1 + 2 * len(gates)  # the weights, then two per gate
    titles = [chart.findtext("title") for chart in charts]
    assert titles[0] == "Traffic weight per variant (%)"
    for gate in gates:
        assert f"{gate}: evidence vs boundary" in titles
    for chart in charts:
        assert chart.findall("polyline"), chart.findtext("title")


def test_weights_chart_is_a_staircase_per_variant(bad: Rendered) -> None:
    weights = svgs(bad.html())[0]
    legend = [t.text for t in weights.iter("text")]
    assert "v7 (candidate)" in legend and "v6 (baseline)" in legend
    lines = weights.findall("polyline")
    assert len(lines) == 2
    for line in lines:  # a staircase: every other point keeps the y of the one before
        points = [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]
        assert len(points) >= 4
        assert all(points[i][1] == points[i - 1][1] for i in range(1, len(points), 2))


def test_gate_charts_plot_each_look(bad: Rendered) -> None:
    looks = sum(e.kind in ("look",) or e.kind.startswith("analysis.") for e in bad.events)
    charts = svgs(bad.html())
    evidence = next(c for c in charts if c.findtext("title") == "errors: evidence vs boundary")
    dots = evidence.findall("circle")
    assert len(dots) == looks
    assert dots[-1].get("fill") == "#d62728"  # the last look failed the gate
    value = next(c for c in charts if (c.findtext("title") or "").startswith("errors: error_rate"))
    legend = [t.text for t in value.iter("text")]
    assert {"candidate", "baseline", "limit", "interval"} <= set(legend)


def test_timeline_is_the_markdown_one(late: Rendered) -> None:
    """The same rows as the Markdown report, world facts included, where they happened."""
    document = late.html()
    markdown = markdown_report(late.record, late.events, late.steps)
    section = markdown.split("## Timeline", 1)[1].split("\n## ", 1)[0]
    md_rows = [
        [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
        for line in section.strip().splitlines()[2:]
    ]
    table = document.split('<table class="timeline">', 1)[1].split("</table>", 1)[0]
    html_rows = [
        [unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1])
    ]
    assert html_rows == md_rows
    assert any(text.startswith("world: ") for _, text in html_rows)
    assert "What changed in the world" in document
    charts = svgs(document)
    assert any(t.text == "world" for t in charts[1].iter("text"))  # marked on the gate charts
    state = report_state(late.record, late.events)
    assert len(timeline_rows(late.events, state)) == len(md_rows)


def test_promoted_page(good: Rendered) -> None:
    document = good.html()
    assert "Promoted</strong>: v8 serves 100% of traffic" in unescape(document)
    assert "<strong>Promote</strong>" in document
    assert not external_references(document)
    for chart in svgs(document):
        assert chart.tag == "svg"


def test_no_external_resource(bad: Rendered, late: Rendered) -> None:
    for rendered in (bad, late):
        document = rendered.html()
        assert external_references(document) == []
        assert "http://" not in document and "https://" not in document


# -- a hostile journal --------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script> & <img src="http://evil.example/x.png"> | `a` \n b'


def hostile_rollout() -> tuple[RolloutRecord, list[Event], list[ExecStep]]:
    gate = {
        "gate": "<b>errors</b>",
        "metric": "error_rate",
        "outcome": "fail",
        "reason": HOSTILE,
        "numbers": {"candidate": 0.05, "baseline": 0.01, "lower": 0.03, "upper": 1e302},
        "dry_run": False,
        "error": None,
    }
    verdict = {"outcome": "fail", "gates": [gate]}
    rid, t0 = "evil-1", 1_795_698_245.0
    events = [
        Event(rid, 1, t0, "started", {"baseline": "<v6>", "candidate": "v7&", "weights": {}}),
        Event(rid, 2, t0, "set_traffic.applied", {"weights": {"<v6>": 90.0, "v7&": 10.0}}),
        Event(rid, 3, t0 + 30, "fact", {"at": t0 + 20, "offset": 20, "text": HOSTILE}),
        Event(
            rid, 4, t0 + 60, "analysis.failed", {"reason": HOSTILE, "step": 1, "verdict": verdict}
        ),
        Event(rid, 5, t0 + 60, "rollback.started", {"reason": HOSTILE}),
        Event(rid, 6, t0 + 60, "rolled_back", {"reason": HOSTILE, "weights": {"<v6>": 100.0}}),
    ]
    snapshot = {
        "phase": "rolled_back",
        "baseline": "<v6>",
        "candidate": "v7&",
        "step": 1,
        "reason": HOSTILE,
        "last_verdict": verdict,
        "weights": {"<v6>": 100.0},
    }
    record = RolloutRecord(
        id=rid,
        name='<script>name</script>"',
        endpoint_key="local:<ep>",
        plan={"yaml": ""},
        plan_path="plans/<x>.yaml",
        created_at=t0,
        phase="rolled_back",
        snapshot=snapshot,
    )
    steps = [
        ExecStep(0, "weight", weight=10),
        ExecStep(1, "analyze", window=AnalyzeWindow(min=60, max=600, adaptive=False)),
    ]
    return record, events, steps


def test_hostile_text_is_escaped() -> None:
    document = html_report(*hostile_rollout(), strategy="<canary>")
    assert "<script" not in document.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in document
    assert "<b>" not in document and "<img" not in document
    assert external_references(document) == []
    page = parse(document)
    assert not {tag for tag, _ in page.tags} & {"script", "img", "b"}
    assert HOSTILE.replace("\n", "") in "".join(page.text).replace("\n", "")
    for chart in svgs(document):  # the names in the charts too
        ET.tostring(chart)
    names = [t.text for chart in svgs(document) for t in chart.iter("text")]
    assert "<v6> (baseline)" in names and "v7& (candidate)" in names


def test_empty_journal_still_renders() -> None:
    record, _, steps = hostile_rollout()
    document = html_report(replace(record, snapshot={"phase": "pending"}), [], steps)
    assert "No look at the metrics was recorded." in document
    assert len(svgs(document)) == 1


# -- the extension point of strategies ----------------------------------------------------------


def test_strategy_sections_hook(bad: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bad.strategy == "canary" and "canary" not in STRATEGY_SECTIONS
    baseline_titles = re.findall(r"<h2>(.*?)</h2>", bad.html())

    def fleets(context: html_module.ReportContext) -> list[tuple[str, str]]:
        return [("Fleets <&>", f"<p>{len(context.events)} events</p>")]

    monkeypatch.setitem(STRATEGY_SECTIONS, "canary", fleets)
    titles = re.findall(r"<h2>(.*?)</h2>", bad.html())
    assert titles == [*baseline_titles[:3], "Fleets &lt;&amp;&gt;", *baseline_titles[3:]]


# -- the CLI -------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from mlrollout.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), captured.out, captured.err


def test_cli_html_to_stdout_and_file(
    bad: Rendered, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rid, state_dir = bad.record.id, bad.state
    code, out, _ = cli(capsys, "--state", str(state_dir), "report", rid, "-o", "html")
    assert code == 0 and out == bad.html()
    target = tmp_path / "report.html"
    code, out, err = cli(
        capsys, "--state", str(state_dir), "report", rid, "-o", "html", "--file", str(target)
    )
    assert code == 0 and out == "" and str(target) in err
    assert target.read_text(encoding="utf-8") == bad.html()
    code, _, err = cli(
        capsys, "--state", str(state_dir), "report", rid, "--file", str(tmp_path / "no/such/x")
    )
    assert code == 2 and "cannot write the report" in err


def test_cli_help_names_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "report", "--help")
    assert code == 0
    for word in ("html", "junit", "markdown", "json", "--file"):
        assert word in out


# -- the Markdown, by its full name, fit for a pull-request comment -----------------------------


def table_breakers(markdown: str) -> list[str]:
    """Lines that would break a GitHub table: a row whose unescaped ``|`` count differs from its
    table's header, and stray carriage returns (a line ending to CommonMark)."""
    problems = [line for line in markdown.split("\n") if "\r" in line]
    columns = None
    for line in markdown.split("\n"):
        if not line.startswith("|"):
            columns = None
            continue
        pipes = len(re.findall(r"(?<!\\)\|", line))
        if columns is None:
            columns = pipes
        elif pipes != columns:
            problems.append(line)
    return problems


def test_markdown_alias_is_md(late: Rendered, capsys: pytest.CaptureFixture[str]) -> None:
    rid, state_dir = late.record.id, late.state
    _, md, _ = cli(capsys, "--state", str(state_dir), "report", rid, "-o", "md")
    code, markdown, _ = cli(capsys, "--state", str(state_dir), "report", rid, "-o", "markdown")
    assert code == 0 and markdown == md == markdown_report(late.record, late.events, late.steps)
    assert table_breakers(markdown) == []


def test_markdown_of_a_hostile_journal_keeps_its_tables() -> None:
    record, events, steps = hostile_rollout()
    assert table_breakers(markdown_report(record, events, steps)) == []


# -- headless Chromium looks at the page ---------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB or RGBA PNG (non-interlaced): zlib + struct."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        previous = line
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
    return width, height, rows


def test_chromium_renders_the_report_of_a_rolled_back_rollout(
    bad: Rendered, tmp_path: Path
) -> None:
    browser = require_binary("chromium", "chromium-browser", package="chromium")
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    page.write_text(bad.html(), encoding="utf-8")
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1200, 2000)

    def pixels(top: int, bottom: int) -> list[tuple[int, int, int]]:
        return [
            (row[i], row[i + 1], row[i + 2])
            for row in rows[top:bottom]
            for i in range(0, width * 3, 6)
        ]

    everything = pixels(0, height)
    non_white = sum(1 for p in everything if min(p) < 235) / len(everything)
    assert non_white > 0.04, f"only {non_white:.1%} of the page is not white"
    # The charts: strong colours (lines, not greys or anti-aliasing) in the lower part of the page.
    strong = {
        (r >> 4, g >> 4, b >> 4)
        for r, g, b in pixels(height // 3, height)
        if max(r, g, b) - min(r, g, b) > 80
    }
    assert len(strong) >= 4, f"the charts show {len(strong)} distinct colours"
    coloured_rows = sum(
        any(max(row[i : i + 3]) - min(row[i : i + 3]) > 80 for i in range(0, width * 3, 6))
        for row in rows[height // 3 :]
    )
    assert coloured_rows > height // 10, f"chart lines on only {coloured_rows} rows"
