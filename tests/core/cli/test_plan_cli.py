"""`mlrollout plan validate|schema|preview` as a user and a CI job meet them.

Invalid input must always end in exit 4 with one `FILE:LINE:COLUMN: key.path: message` line per
problem (problems about the file as a whole, which has no position, are `FILE: message`), and
never in a traceback.
"""

from __future__ import annotations

import json
import re
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

PLAN = """\
version: 1
name: t
target:
  provider: local
  endpoint: ep
candidate:
  name: v2
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 10m
    - weight: 100
analysis:
  interval: 60s
  min_requests: 100
  gates:
    - name: errors
      metric: error_rate
      vs_baseline: {max_increase: 25%}
sandbox:
  seed: 1
  rps: 100
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
"""
# line numbers in PLAN:  4 provider, 12 analyze, 13 weight 100, 15 interval, 23 rps, 24 variants

POSITIONED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")
SUMMARY = re.compile(r"^(\d+ of \d+ plans? invalid|\d+ problems? found)$")


def edit(old: str, new: str, text: str = PLAN) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def without_sandbox(text: str) -> str:
    return text.split("sandbox:")[0]


def problem_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not SUMMARY.match(line)]


def assert_clean_failure(result, file: str, *, positioned: bool = True) -> list[str]:
    """Exit 4, no traceback, every problem on its own line naming the file (and a position)."""
    assert result.code == 4, result.both
    assert "Traceback" not in result.both
    assert "internal error" not in result.both
    lines = problem_lines(result.err)
    assert lines, result.err
    for line in lines:
        assert line.startswith(f"{file}:"), line
        if positioned:
            match = POSITIONED.match(line)
            assert match, f"not FILE:LINE:COLUMN: ...: {line!r}"
            assert int(match["line"]) >= 1 and int(match["col"]) >= 1, line
    return lines


def write(tmp_path: Path, text: str | bytes, name: str = "plan.yaml") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------- valid plans


def test_the_base_plan_of_this_file_is_valid(cli, tmp_path):
    path = write(tmp_path, PLAN)
    result = cli("plan", "validate", path)
    assert result.code == 0, result.both
    assert f"{path}: valid" in result.out


def example_plans() -> list[Path]:
    from_conftest = Path(__file__).resolve().parents[3] / "plans"
    return sorted(from_conftest.glob("*.yaml"))


def test_there_are_example_plans():
    names = {p.name for p in example_plans()}
    assert {"local-canary-bad.yaml", "local-canary-good.yaml", "local-approval.yaml"} <= names


@pytest.mark.parametrize("plan", example_plans(), ids=lambda p: p.name)
def test_every_example_plan_validates(cli, plan):
    result = cli("plan", "validate", plan)
    assert result.code == 0, result.both
    assert "valid" in result.out
    assert "Traceback" not in result.both


@pytest.mark.parametrize("plan", example_plans(), ids=lambda p: p.name)
def test_every_example_plan_previews(cli, plan):
    result = cli("plan", "preview", "--output", "json", plan)
    assert result.code == 0, result.both
    assert json.loads(result.out)["steps"]


# -------------------------------------------------------------------------- bad input matrix

# (id, plan text, exact problem line expected in stderr (file name left out), other fragments)
CASES: list[tuple[str, str, str | None, tuple[str, ...]]] = [
    ("not-yaml", "a: b: c\n", ":1:5: not valid YAML", ()),
    ("empty", "", ":1:1: the file is empty", ()),
    ("only-a-comment", "# nothing here\n", None, ("empty",)),
    ("list-at-top", "- a\n- b\n", ":1:1: a plan is a mapping", ("not a list",)),
    ("scalar-at-top", "just words\n", ":1:1: a plan is a mapping", ()),
    (
        "wrong-type",
        edit("rps: 100", 'rps: "fast"'),
        ":23:8: sandbox.rps: ",
        ("number",),
    ),
    (
        "unknown-key",
        edit("  interval: 60s", "  intervall: 60s"),
        ":15:3: analysis.intervall: unknown key 'intervall' (did you mean 'interval'?)",
        (),
    ),
    (
        "weight-out-of-range",
        edit("- weight: 100", "- weight: 150"),
        ":13:15: strategy.steps[2].weight: ",
        ("150", "100"),
    ),
    (
        "negative-duration",
        edit("analyze: 10m", "analyze: -5m"),
        ":12:16: strategy.steps[1].analyze: ",
        ("-5m", "positive"),
    ),
    (
        "unitless-duration",
        edit("analyze: 10m", "analyze: 10"),
        ":12:16: strategy.steps[1].analyze: ",
        ("unit", "10m"),
    ),
    (
        "unknown-provider",
        edit("provider: local", "provider: lokal"),
        ":4:13: target.provider: unknown provider 'lokal'",
        ("did you mean 'local'",),
    ),
    (
        "ab-test-without-its-metric",
        edit(
            "  type: canary\n  steps:\n    - weight: 10\n    - analyze: 10m\n    - weight: 100\n",
            "  type: ab_test\n  split: 50\n  max_duration: 7d\n  then: stop\n",
        ),
        ":9:3: strategy.metric: ",
        ("missing required key 'metric'",),
    ),
    (
        "sandbox-without-variants",
        PLAN.split("  variants:")[0] + "  variants: {}\n",
        ":24:13: sandbox.variants: ",
        (),
    ),
    (
        "duplicate-key",
        edit("name: t\n", "name: t\nname: again\n"),
        ":3:1: name: the key appears twice",
        (),
    ),
    (
        "duplicate-nested-key",
        edit("  min_requests: 100\n", "  min_requests: 100\n  min_requests: 300\n"),
        ":17:3: analysis.min_requests: the key appears twice",
        (),
    ),
    (
        "python-tag",
        'version: 1\nname: !!python/object/apply:os.system ["echo owned"]\n',
        ":2:7: the tag ",
        ("not allowed",),
    ),
    (
        "python-object-on-a-mapping",
        edit("candidate:\n", "candidate: !!python/object:os.system\n"),
        ":6:12: the tag ",
        ("not allowed",),
    ),
    (
        "wrong-version",
        edit("version: 1", "version: 2"),
        ":1:10: version: ",
        (),
    ),
    (
        "section-is-null",
        edit(
            "analysis:\n  interval: 60s\n  min_requests: 100\n  gates:\n    - name: errors\n"
            "      metric: error_rate\n      vs_baseline: {max_increase: 25%}\n",
            "analysis:\n",
        ),
        None,
        ("analysis", "mapping"),
    ),
    (
        "two-documents",
        PLAN + "---\n" + PLAN,
        ":27:1: not valid YAML",
        ("single document",),
    ),
    (
        "weight-is-nan",
        edit("- weight: 100", "- weight: .nan"),
        ":13:15: strategy.steps[2].weight: ",
        ("nan",),
    ),
    (
        "unknown-metric",
        edit("metric: error_rate", "metric: error_rat"),
        ":19:15: analysis.gates[0].metric: ",
        ("did you mean 'error_rate'",),
    ),
    (
        "candidate-not-a-sandbox-variant",
        edit("  name: v2\n", "  name: v9\n"),
        ":7:9: candidate.name: ",
        ("v9",),
    ),
]


@pytest.mark.parametrize(
    ("text", "where", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_plans_exit_4_with_located_problems(cli, tmp_path, text, where, fragments):
    path = write(tmp_path, text)
    result = cli("plan", "validate", path)
    lines = assert_clean_failure(result, path)
    if where is not None:
        wanted = path + where
        assert any(line.startswith(wanted) for line in lines), (wanted, lines)
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)
    # the summary line closes the report
    assert result.err.rstrip().splitlines()[-1] == "1 of 1 plan invalid"


def test_python_tag_is_never_executed(cli, tmp_path):
    marker = tmp_path / "owned"
    path = write(
        tmp_path, f'version: 1\nname: !!python/object/apply:os.system ["touch {marker}"]\n'
    )
    result = cli("plan", "validate", path)
    assert_clean_failure(result, path)
    assert not marker.exists()


def test_missing_file(cli, tmp_path):
    path = str(tmp_path / "nope.yaml")
    result = cli("plan", "validate", path)
    lines = assert_clean_failure(result, path, positioned=False)
    assert lines == [f"{path}: no such file"]


def test_a_directory(cli, tmp_path):
    result = cli("plan", "validate", tmp_path)
    lines = assert_clean_failure(result, str(tmp_path), positioned=False)
    assert len(lines) == 1 and "directory" in lines[0]


def test_not_utf8(cli, tmp_path):
    path = write(tmp_path, b"version: 1\nname: caf\xe9\n")
    result = cli("plan", "validate", path)
    lines = assert_clean_failure(result, path, positioned=False)
    assert "UTF-8" in lines[0]


def test_a_50_mb_file_is_refused_by_its_size_quickly(cli, tmp_path):
    path = tmp_path / "huge.yaml"
    chunk = ("# " + "x" * 1022 + "\n").encode()
    with path.open("wb") as fh:
        fh.write(PLAN.encode())
        for _ in range(50 * 1024):
            fh.write(chunk)
    assert path.stat().st_size > 50 * 1024 * 1024
    started = time.perf_counter()
    result = cli("plan", "validate", path)
    elapsed = time.perf_counter() - started
    lines = assert_clean_failure(result, str(path), positioned=False)
    assert len(lines) == 1
    assert "KiB" in lines[0] and "at most" in lines[0]
    assert elapsed < 2.0, f"took {elapsed:.2f}s: the file was read or parsed, not refused by size"


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_alias_bomb_is_refused_quickly(cli, tmp_path):
    path = write(tmp_path, BILLION_LAUGHS)
    started = time.perf_counter()
    result = cli("plan", "validate", path)
    elapsed = time.perf_counter() - started
    lines = assert_clean_failure(result, path)
    assert len(lines) == 1
    assert "alias" in lines[0]
    assert elapsed < 2.0, f"took {elapsed:.2f}s"


def test_deep_nesting_is_refused_without_a_traceback(cli, tmp_path):
    path = write(tmp_path, "a: " + "[" * 2000 + "]" * 2000 + "\n")
    result = cli("plan", "validate", path)
    lines = assert_clean_failure(result, path, positioned=False)
    assert "nested" in lines[0]


def test_subprocess_bad_inputs_show_no_traceback(proc, tmp_path):
    bomb = write(tmp_path, BILLION_LAUGHS, "bomb.yaml")
    tag = write(tmp_path, 'name: !!python/object/apply:os.system ["echo owned"]\n', "tag.yaml")
    notyaml = write(tmp_path, "a: b: c\n", "notyaml.yaml")
    result = proc("plan", "validate", bomb, tag, notyaml)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "owned" not in result.stdout
    lines = problem_lines(result.stderr)
    assert len(lines) == 3, lines
    assert [POSITIONED.match(line)["file"] for line in lines] == [bomb, tag, notyaml]
    assert result.stderr.rstrip().endswith("3 of 3 plans invalid")


def test_known_provider_that_is_not_installed_says_how_to_install_it(cli, tmp_path, monkeypatch):
    # `make test` installs every provider: the plugins' discovery is shown the installed entry
    # points but those of the distribution that registers `sagemaker`, as if it were absent.
    from types import SimpleNamespace

    from mlrollout import plugins

    hidden = {
        ep.dist.name
        for ep in entry_points(group=plugins.ENDPOINTS_GROUP)
        if ep.name == "sagemaker" and ep.dist is not None
    }

    def installed(**selection):
        return [
            ep for ep in entry_points(**selection) if ep.dist is None or ep.dist.name not in hidden
        ]

    monkeypatch.setattr(plugins, "metadata", SimpleNamespace(entry_points=installed))
    plugins._refs.cache_clear()
    try:
        assert "sagemaker" not in plugins.names(plugins.ENDPOINTS_GROUP)
        assert "local" in plugins.names(plugins.ENDPOINTS_GROUP)
        text = edit("provider: local", "provider: sagemaker\n  region: us-east-1")
        path = write(tmp_path, without_sandbox(text))
        result = cli("plan", "validate", path)
        lines = assert_clean_failure(result, path)
    finally:
        plugins._refs.cache_clear()  # the next test discovers what is really installed

    assert any(
        line.startswith(f"{path}:4:13: target.provider: ")
        and plugins.install_command("aws") in line
        for line in lines
    ), lines


def test_several_errors_are_all_listed_in_file_order(cli, tmp_path):
    text = edit("rps: 100", 'rps: "fast"')
    text = edit("  interval: 60s", "  intervall: 60s", text)
    text = edit("- weight: 100", "- weight: 150", text)
    text = edit("analyze: 10m", "analyze: 10", text)
    path = write(tmp_path, text)
    result = cli("plan", "validate", path)
    lines = assert_clean_failure(result, path)
    assert len(lines) >= 3, lines
    where = [POSITIONED.match(line) for line in lines]
    keys = [m["rest"].split(":")[0] for m in where]
    assert {
        "strategy.steps[1].analyze",
        "strategy.steps[2].weight",
        "analysis.intervall",
        "sandbox.rps",
    } <= set(keys), lines
    positions = [(int(m["line"]), int(m["col"])) for m in where]
    assert positions == sorted(positions)


def test_missing_required_strategy_names_the_key(cli, tmp_path):
    text = PLAN.split("strategy:")[0] + "analysis:" + PLAN.split("analysis:")[1]
    path = write(tmp_path, text)
    result = cli("plan", "validate", path)
    lines = assert_clean_failure(result, path)
    assert any("strategy: missing required key 'strategy'" in line for line in lines), lines


@pytest.mark.parametrize("key", ["target", "candidate", "name"])
def test_missing_required_keys_are_named(cli, tmp_path, key):
    text = "".join(
        block for block in re.split(r"(?m)^(?=\S)", PLAN) if not block.startswith(f"{key}:")
    )
    path = write(tmp_path, text)
    result = cli("plan", "validate", path)
    lines = assert_clean_failure(result, path)
    assert any(f"{key}: missing required key '{key}'" in line for line in lines), lines


# --------------------------------------------------------------------------- several files


def test_validate_several_files_reports_each(cli, tmp_path, plans):
    good = str(plans / "local-canary-good.yaml")
    bad = write(tmp_path, edit("- weight: 100", "- weight: 150"), "bad.yaml")
    result = cli("plan", "validate", good, bad)
    assert result.code == 4, result.both
    assert f"{good}: valid" in result.out
    assert bad not in result.out
    lines = problem_lines(result.err)
    assert lines == [
        f"{bad}:13:15: strategy.steps[2].weight: "
        + lines[0].split("strategy.steps[2].weight: ", 1)[1]
    ]
    assert good not in result.err
    assert result.err.rstrip().endswith("1 of 2 plans invalid")


def test_validate_json_output(cli, tmp_path, plans):
    good = str(plans / "local-canary-good.yaml")
    bad = write(tmp_path, edit("  interval: 60s", "  intervall: 60s"), "bad.yaml")
    result = cli("plan", "validate", "--output", "json", good, bad)
    assert result.code == 4
    data = json.loads(result.out)
    assert data["valid"] is False
    by_file = {f["file"]: f for f in data["files"]}
    assert by_file[good]["valid"] is True
    assert by_file[bad]["valid"] is False
    assert by_file[bad]["errors"] == [
        {
            "line": 15,
            "column": 3,
            "path": "analysis.intervall",
            "message": "unknown key 'intervall' (did you mean 'interval'?)",
        }
    ]


def test_validate_json_output_all_valid(cli, plans):
    result = cli("plan", "validate", "-o", "json", *example_plans())
    assert result.code == 0, result.both
    data = json.loads(result.out)
    assert data["valid"] is True
    assert len(data["files"]) == len(example_plans())


def test_validate_without_files_is_a_usage_error(cli):
    result = cli("plan", "validate")
    assert result.code == 2
    assert "Traceback" not in result.both


# ---------------------------------------------------------------------------------- schema


def test_schema_is_json_with_the_plan_keys(cli):
    result = cli("plan", "schema")
    assert result.code == 0, result.both
    data = json.loads(result.out)
    assert "strategy" in data["properties"]
    for key in ("version", "target", "candidate", "analysis", "sandbox"):
        assert key in data["properties"], key
    assert data.get("additionalProperties") is False  # editors flag unknown keys too


# --------------------------------------------------------------------------------- preview


def test_preview_text_shows_the_steps_and_the_total(cli, plans):
    path = plans / "local-canary-good.yaml"
    result = cli("plan", "preview", path)
    assert result.code == 0, result.both
    data = json.loads(cli("plan", "preview", "-o", "json", path).out)
    for step in data["steps"]:
        assert step["step"] in result.out, step["step"]
    assert f"total: at least {data['min']}, at most {data['max']}" in result.out
    assert "errors" in result.out and "p99" in result.out  # the gates
    assert "API calls" in result.out


def test_preview_json_steps_and_worst_case(cli, plans):
    result = cli("plan", "preview", "--output", "json", plans / "local-canary-good.yaml")
    assert result.code == 0, result.both
    data = json.loads(result.out)
    steps = data["steps"]
    assert [s["kind"] for s in steps] == [
        "weight",
        "analyze",
        "weight",
        "analyze",
        "weight",
        "pause",
    ]
    assert [s["candidate_weight"] for s in steps] == [10, 10, 50, 50, 100, 100]
    for step in steps:
        assert 0 <= step["min_seconds"] <= step["max_seconds"], step
    analyze = [s for s in steps if s["kind"] == "analyze"]
    # analyze: 10m after a 1m delay bakes at least 11 minutes, and may hold up to max_hold (15m)
    assert all(s["min_seconds"] == 660 for s in analyze), analyze
    assert all(s["max_seconds"] >= 660 for s in analyze), analyze
    assert steps[-1]["min_seconds"] == steps[-1]["max_seconds"] == 300  # pause 5m
    assert data["min_seconds"] == sum(s["min_seconds"] for s in steps)
    assert data["max_seconds"] == sum(s["max_seconds"] for s in steps)


def test_preview_of_an_invalid_plan_exits_4(cli, tmp_path):
    path = write(tmp_path, edit("- weight: 100", "- weight: 150"))
    result = cli("plan", "preview", path)
    lines = assert_clean_failure(result, path)
    assert lines[0].startswith(f"{path}:13:15: strategy.steps[2].weight: ")


def test_preview_changes_nothing(cli, tmp_path, plans, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli("plan", "preview", plans / "local-canary-good.yaml").code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .mlrollout created


# ------------------------------------------------- every problem in one pass (issue 11)

LAYERED = """\
version: 1
name: layered
target:
  provider: local
  endpoint: ep
candidate:
  name: v3
strategy:
  type: ab_test
  max_duration: 7d
analysis:
  intervall: 60s
  gates:
    - name: errors
      metric: error_rate
      vs_baseline: {max_increase: 25%}
    - name: p99
      metric: latency_p99
rollback:
  automatic: maybe
sandbox:
  variants:
    v1: {error_rate: 0.01}
    v2: {error_rate: 0.01}
"""


def test_problems_of_every_layer_are_listed_in_one_pass(cli, tmp_path, monkeypatch):
    # an unknown key and a bad value (the model), a strategy the provider cannot run, the
    # provider's own check and a cross-field check: all at once, not one layer per fix
    from mlrollout.sandbox.provider import LocalProviderSpec

    monkeypatch.setattr(LocalProviderSpec, "strategies", frozenset({"canary"}), raising=False)
    path = write(tmp_path, LAYERED)
    lines = assert_clean_failure(cli("plan", "validate", path), path)
    expected = {
        (12, 3, "analysis.intervall", "unknown key 'intervall' (did you mean 'interval'?)"),
        (20, 14, "rollback.automatic", "a valid boolean"),
        (9, 9, "strategy.type", "ab_test"),
        (9, 3, "strategy.metric", "missing required key 'metric'"),
        (7, 9, "candidate.name", "not a sandbox variant"),
        (17, 7, "analysis.gates[1]", "the gate has no bound"),
    }
    for line, column, key, words in expected:
        head = f"{path}:{line}:{column}: {key}: "
        assert any(x.startswith(head) and words in x for x in lines), (head, words, lines)
    assert len(lines) == len(expected), lines


def test_a_check_that_needs_an_invalid_part_is_skipped_not_guessed(cli, tmp_path, monkeypatch):
    # the candidate does not validate: the provider's check of it (is it a sandbox variant?)
    # cannot run, the checks of the other parts still do
    from mlrollout.sandbox.provider import LocalProviderSpec

    monkeypatch.setattr(LocalProviderSpec, "strategies", frozenset({"canary"}), raising=False)
    text = LAYERED.replace("  name: v3\n", "  name: v3\n  instance_count: 0\n")
    path = write(tmp_path, text)
    lines = assert_clean_failure(cli("plan", "validate", path), path)
    assert any(": candidate.instance_count: " in x for x in lines), lines
    assert not any("sandbox variant" in x for x in lines), lines
    assert any("strategy.type: " in x for x in lines), lines
    assert any("analysis.gates[1]: the gate has no bound" in x for x in lines), lines


def test_a_typo_in_a_key_hides_what_follows_from_it(cli, tmp_path):
    # `vs_basline` is reported; "the gate has no bound" only follows from it: not reported
    text = edit("vs_baseline: {max_increase: 25%}", "vs_basline: {max_increase: 25%}")
    path = write(tmp_path, text)
    lines = assert_clean_failure(cli("plan", "validate", path), path)
    assert len(lines) == 1 and "unknown key 'vs_basline'" in lines[0], lines


# --------------------------------------------------------------- install hints (issue 11)


def test_the_install_hint_of_a_missing_provider_works_from_a_checkout(cli, tmp_path, monkeypatch):
    import mlrollout
    from mlrollout import plugins

    repo = Path(mlrollout.__file__).resolve().parents[1]
    # a provider of ours whose distribution is not installed (its folder: providers/gcp)
    monkeypatch.setitem(plugins.KNOWN_PROVIDERS, "zcloud", "gcp")
    text = edit("provider: local", "provider: zcloud")
    path = write(tmp_path, without_sandbox(text))
    monkeypatch.chdir(repo)
    result = cli("plan", "validate", path)
    lines = assert_clean_failure(result, path)
    assert any("pip install ./providers/gcp" in line for line in lines), lines
    assert not any("mlrollout[gcp]" in line for line in lines), lines
    monkeypatch.chdir(tmp_path)  # elsewhere: the folder's absolute path
    lines = problem_lines(cli("plan", "validate", path).err)
    assert any(f"pip install {repo / 'providers' / 'gcp'}" in line for line in lines), lines
