"""Where the flag file is written: a local path replaced atomically, ``file://``, a plugin's URI;
idempotent writes; errors that name the file and the fix; the sandbox's recording writer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from flag_plans import PLAN, plan

from mlrollout.clock import VirtualClock
from mlrollout.contracts import ProviderContext
from mlrollout.errors import ProviderError, ProviderUnavailable
from mlrollout.flags import ObjectFlagWriter, flag_definition, flag_json, flag_writer
from mlrollout.objects import LocalFiles
from mlrollout.sandbox.endpoint import FLAGS_NAMESPACE, LocalEndpoint, RecordingFlagWriter
from mlrollout.state.sqlite import open_sqlite_store

T0 = 1_700_000_000.0


def definition(weight: float) -> dict:
    return flag_definition(plan(), {"v7": weight}, baseline="v6", candidate="v7")


def flags_at(location: str) -> dict:
    return {**PLAN["flags"], "file": location}


def context(p, tmp_path: Path, clock: VirtualClock | None = None) -> ProviderContext:
    store = open_sqlite_store(str(tmp_path / "state"))
    return ProviderContext(p, clock or VirtualClock(T0), store)


def test_a_local_file_is_written_whole_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "flags" / "churn.json"
    writer = ObjectFlagWriter(LocalFiles(path, str(path)))
    assert writer.read() is None  # no file yet
    doc = definition(5)
    sha = writer.write(doc)
    assert path.read_bytes() == flag_json(doc)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert writer.read() == doc
    assert writer.write(doc) == sha and path.read_bytes() == flag_json(doc)  # a replay: harmless
    assert [p.name for p in path.parent.iterdir()] == ["churn.json"]  # no temporary file left
    writer.write(definition(25))
    assert writer.read() == definition(25)


def test_flag_writer_opens_a_path_or_a_file_uri(tmp_path: Path) -> None:
    for location in (str(tmp_path / "a.json"), (tmp_path / "b.json").as_uri()):
        p = plan(flags=flags_at(location), target={"provider": "local", "endpoint": "churn"})
        writer = flag_writer(p, context(p, tmp_path))
        writer.write(definition(5))
        assert writer.location == location
    assert json.loads((tmp_path / "a.json").read_text()) == definition(5)
    assert json.loads((tmp_path / "b.json").read_text()) == definition(5)


def test_a_scheme_without_a_plugin_says_so(tmp_path: Path) -> None:
    p = plan(flags=flags_at("gs://bucket/flags/churn.json"))
    with pytest.raises(ProviderUnavailable, match="object storage 'gs'"):
        flag_writer(p, context(p, tmp_path))


def test_errors_name_the_flag_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    path = tmp_path / "blocker" / "churn.json"
    writer = ObjectFlagWriter(LocalFiles(path, str(path)))
    with pytest.raises(ProviderError, match=f"cannot write the flag file {path}") as err:
        writer.write(definition(5))
    assert err.value.hint
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ProviderError, match=f"the flag file {broken} is not JSON") as err:
        ObjectFlagWriter(LocalFiles(broken, str(broken))).read()
    assert "flags.file" in (err.value.hint or "")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ProviderError, match="holds a JSON list"):
        ObjectFlagWriter(LocalFiles(listed, str(listed))).read()


def test_the_sandbox_records_each_version_once_and_any_process_can_replay_it(
    tmp_path: Path,
) -> None:
    p = plan(flags=flags_at(str(tmp_path / "churn.json")))
    clock = VirtualClock(T0)
    ctx = context(p, tmp_path, clock)
    writer = flag_writer(p, ctx)
    assert isinstance(writer, RecordingFlagWriter)
    first = writer.write(definition(5))
    writer.write(definition(5))  # the engine's replay after a crash: nothing new
    clock.advance(600)
    second = writer.write(definition(50))
    record = ctx.store.get_value("sandbox", "churn")
    assert record is not None
    assert record["flag_history"] == [[T0, first], [T0 + 600, second]]
    assert record["flag_key"] == "churn-model"
    assert json.loads((tmp_path / "churn.json").read_text()) == definition(50)
    # another process, on the same store: the definitions are there by digest
    again = LocalEndpoint("churn", p.sandbox, open_sqlite_store(str(tmp_path / "state")), clock)
    assert again.flag_version(first) == ("churn-model", definition(5))
    assert ctx.store.get_value(FLAGS_NAMESPACE, second)["definition"] == definition(50)
    with pytest.raises(ProviderError, match="not in the store"):
        again.flag_version("0" * 64)
