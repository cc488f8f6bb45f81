"""so8t audit verify --heads FILE: the chain heads kept outside the log folder find what the folder's own anchor
cannot (the whole folder put back to an earlier state, a chain deleted with its anchor), the file is updated only
by a passing run, and a damaged heads file is refused by name and left as it was."""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from so8t_lib.cli import main as so8t
from so8t_lib.serve import audit
from so8t_lib.serve.audit_heads import HEADS_FORMAT, HeadsError, read_heads


def _append(path, n: int, start: int = 0) -> None:
    log = audit.AuditLog(path)
    for i in range(start, start + n):
        log.append({"timestamp": "2026-12-04T00:00:00Z", "request_id": f"req_{i}", "decision": "ALLOW",
                    "rationale": "", "model_version": "so8t-test", "category": "general"})


def _verify(folder, heads, *more) -> int:
    try:
        return so8t(["audit", "verify", str(folder), "--heads", str(heads), *more])
    except SystemExit as exc:
        return 1 if exc.code else 0


def test_heads_advance_run_after_run_and_find_a_folder_put_back(tmp_path, capsys):
    logs, heads = tmp_path / "logs", tmp_path / "outside" / "heads.json"
    _append(logs / "audit.jsonl", 5)
    assert _verify(logs, heads) == 0
    assert "the first run" in capsys.readouterr().out
    first = json.loads(heads.read_text(encoding="utf-8"))
    assert first["format"] == HEADS_FORMAT
    (chain, head), = first["heads"].items()
    assert chain == str((logs / "audit.jsonl").resolve()) and head["seq"] == 4
    assert head["hash"] == audit.read_anchor(logs / "audit.jsonl")["last_hash"]
    backup = tmp_path / "backup"
    shutil.copytree(logs, backup)  # a consistent earlier state of the whole folder, anchor included

    _append(logs / "audit.jsonl", 3, start=5)
    assert _verify(logs, heads) == 0
    assert read_heads(heads)[str((logs / "audit.jsonl").resolve())][0] == 7
    advanced = heads.read_bytes()

    shutil.rmtree(logs)
    shutil.copytree(backup, logs)  # put back: the folder's own anchor agrees with it
    assert audit.verify(logs)["errors"] == []
    assert _verify(logs, heads) == 1
    out = capsys.readouterr().out
    assert "rolled back" in out
    assert heads.read_bytes() == advanced  # a failing run does not move the heads


def test_a_chain_deleted_with_its_anchor_is_found_and_other_folders_heads_are_kept(tmp_path, capsys):
    logs, other, heads = tmp_path / "logs", tmp_path / "other", tmp_path / "heads.json"
    _append(logs / "audit.jsonl", 2)
    _append(logs / "audit-r2.jsonl", 3)  # a second replica's chain in the same folder
    _append(other / "audit.jsonl", 4)
    assert _verify(logs, heads) == 0 and _verify(other, heads) == 0
    assert len(read_heads(heads)) == 3
    for leftover in logs.glob("audit-r2*"):
        leftover.unlink()
    assert audit.verify(logs)["errors"] == []  # what is left of the folder is consistent by itself
    assert _verify(logs, heads) == 1
    assert "audit-r2.jsonl was verified before (head seq 2) and is gone" in capsys.readouterr().out
    _append(other / "audit.jsonl", 1, start=4)
    assert _verify(other, heads) == 0  # verifying one folder leaves the heads of the others as they were
    kept = read_heads(heads)
    assert kept[str((other / "audit.jsonl").resolve())][0] == 4 and kept[str((logs / "audit-r2.jsonl").resolve())][0] == 2


def test_a_mistyped_folder_fails_and_records_nothing(tmp_path, capsys):
    heads = tmp_path / "heads.json"
    assert _verify(tmp_path / "no-such-folder", heads) == 1
    assert "no audit log" in capsys.readouterr().out and not heads.exists()


@pytest.mark.parametrize("content, problem", [
    ("{not json", "cannot read the chain heads"),
    (json.dumps({"format": "something-else", "heads": {}}), "not a chain-heads file"),
    (json.dumps({"format": HEADS_FORMAT, "heads": {"/x/audit.jsonl": {"seq": "4", "hash": "ab"}}}), "is not {seq"),
    (json.dumps({"format": HEADS_FORMAT, "heads": {"/x/audit.jsonl": {"seq": -1, "hash": "ab"}}}), "is not {seq"),
])
def test_a_damaged_heads_file_is_refused_by_name_and_left_alone(tmp_path, content, problem):
    logs, heads = tmp_path / "logs", tmp_path / "heads.json"
    _append(logs / "audit.jsonl", 2)
    heads.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        so8t(["audit", "verify", str(logs), "--heads", str(heads)])
    assert str(heads) in str(exited.value.code) and problem in str(exited.value.code)
    assert heads.read_text(encoding="utf-8") == content


@pytest.mark.parametrize("other, says", [(["--expect", "1:ab"], "not allowed with"), (["--name", "audit.jsonl"], "leave out --name")])
def test_heads_take_neither_expect_nor_name(tmp_path, capsys, other, says):
    logs = tmp_path / "logs"
    _append(logs / "audit.jsonl", 2)
    with pytest.raises(SystemExit) as exited:
        so8t(["audit", "verify", str(logs), "--heads", str(tmp_path / "h.json"), *other])
    assert exited.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "h.json").exists()


def test_a_log_opened_but_not_written_yet_passes_and_records_no_head(tmp_path, capsys):
    logs, heads = tmp_path / "logs", tmp_path / "heads.json"
    audit.AuditLog(logs / "audit.jsonl")  # a gate that started and has decided nothing: an anchor, no records
    assert _verify(logs, heads) == 0 and read_heads(heads) == {}
    _append(logs / "audit.jsonl", 2)
    assert _verify(logs, heads) == 0 and len(read_heads(heads)) == 1


def test_a_link_turned_to_an_older_copy_of_the_folder_is_found(tmp_path, capsys):
    real, link, heads = tmp_path / "real", tmp_path / "logs", tmp_path / "heads.json"
    _append(real / "audit.jsonl", 3)
    older = tmp_path / "older"
    shutil.copytree(real, older)
    _append(real / "audit.jsonl", 2, start=3)
    link.symlink_to(real)
    assert _verify(link, heads) == 0
    link.unlink()
    link.symlink_to(older)  # the same name now shows the folder as it was
    assert _verify(link, heads) == 1 and "rolled back" in capsys.readouterr().out


def test_heads_or_gauges_that_cannot_be_written_end_the_run_with_the_reason(tmp_path, capsys):
    logs = tmp_path / "logs"
    _append(logs / "audit.jsonl", 2)
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    for option in ("--heads", "--metrics-file"):
        with pytest.raises(SystemExit) as exited:
            so8t(["audit", "verify", str(logs), option, str(tmp_path / "a-file" / "out")])
        assert "cannot be written" in str(exited.value.code) or "could not be written" in str(exited.value.code)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                              lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3),
                              max_leaves=8).map(lambda value: json.dumps(value).encode())))
def test_any_file_is_either_heads_or_a_heads_error(tmp_path, content):
    path = tmp_path / "heads.json"
    path.write_bytes(content)
    try:
        heads = read_heads(path)
    except HeadsError as exc:
        assert str(path) in str(exc)
    else:
        assert all(isinstance(seq, int) and seq >= 0 and isinstance(digest, str) for seq, digest in heads.values())


def _gauges(path) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(path.read_text(encoding="utf-8")) for s in family.samples}


def test_every_run_leaves_its_outcome_as_gauges_pass_fail_or_unable(tmp_path):
    logs, heads, prom = tmp_path / "logs", tmp_path / "heads.json", tmp_path / "textfile" / "so8t_audit.prom"
    _append(logs / "audit.jsonl", 4)
    _append(logs / "audit-r2.jsonl", 2)
    assert _verify(logs, heads, "--metrics-file", str(prom)) == 0
    passed = _gauges(prom)
    assert passed[("so8t_audit_verify_ok", ())] == 1 and passed[("so8t_audit_verify_records", ())] == 6
    assert passed[("so8t_audit_verify_chains", (("result", "ok"),))] == 2
    assert passed[("so8t_audit_verify_chains", (("result", "failed"),))] == 0
    assert prom.stat().st_mode & 0o777 == 0o644  # node_exporter, another user, must be able to read it

    backup = tmp_path / "backup"
    shutil.copytree(logs, backup)
    _append(logs / "audit-r2.jsonl", 1, start=2)
    assert _verify(logs, heads) == 0
    shutil.rmtree(logs)
    shutil.copytree(backup, logs)  # one replica's chain put back
    assert _verify(logs, heads, "--metrics-file", str(prom)) == 1
    failed = _gauges(prom)
    assert failed[("so8t_audit_verify_ok", ())] == 0
    assert failed[("so8t_audit_verify_chains", (("result", "failed"),))] == 1
    assert failed[("so8t_audit_verify_timestamp_seconds", ())] >= passed[("so8t_audit_verify_timestamp_seconds", ())]

    heads.write_text("{damaged", encoding="utf-8")  # a run that cannot verify at all is a failed run too
    assert _verify(logs, heads, "--metrics-file", str(prom)) == 1
    assert _gauges(prom)[("so8t_audit_verify_ok", ())] == 0


@pytest.mark.skipif(shutil.which("prometheus-node-exporter") is None,
                    reason="prometheus-node-exporter is not installed (.ci/run installs it)")
def test_node_exporter_serves_the_gauges_from_its_textfile_folder(tmp_path):
    """The file as node_exporter's textfile collector reads it (the Debian package, on 127.0.0.1): every gauge
    comes through and the collector reports no error for the file."""
    import subprocess
    import time

    import httpx
    from service_support import free_port

    logs, textfiles = tmp_path / "logs", tmp_path / "textfile"
    _append(logs / "audit.jsonl", 3)
    assert _verify(logs, tmp_path / "heads.json", "--metrics-file", str(textfiles / "so8t_audit.prom")) == 0
    port = free_port()
    exporter = subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}",
                                 "--collector.disable-defaults", "--collector.textfile",
                                 f"--collector.textfile.directory={textfiles}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.monotonic() + 30, None
        while page is None and time.monotonic() < deadline:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                time.sleep(0.2)
        assert page is not None, "node_exporter did not answer in 30 s"
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
    scraped = tmp_path / "scraped.prom"
    scraped.write_text(page, encoding="utf-8")
    gauges = _gauges(scraped)
    assert gauges[("so8t_audit_verify_ok", ())] == 1 and gauges[("so8t_audit_verify_records", ())] == 3
    assert gauges[("node_textfile_scrape_error", ())] == 0


def test_the_metrics_file_is_readable_the_moment_it_appears(tmp_path, monkeypatch):
    """It was renamed into place with the temporary file's mode (0600 under the unit's umask) and made readable only
    after: a node_exporter scrape in between could not read it."""
    import os

    from so8t_lib.serve.audit_textfile import write_verify_metrics

    modes, rename = [], os.replace

    def replace(src, dst):
        modes.append(os.stat(src).st_mode & 0o777)
        rename(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old_mask = os.umask(0o077)
    try:
        write_verify_metrics(tmp_path / "so8t_audit.prom", {"audit.jsonl": {"errors": [], "records": 3}})
    finally:
        os.umask(old_mask)
    assert modes == [0o644] and [p.name for p in tmp_path.iterdir()] == ["so8t_audit.prom"]
