"""so8t retrain preprocess at its edges: rows whose ids load_table accepts but normalises (none, padded, 7.0)
keep their request_id instead of a KeyError."""

from __future__ import annotations

import json

from so8t_lib.workbench import retrain

ROW = {"context": "", "user_request": "Where is the form for next week's remote work application?", "label": "ALLOW",
       "category": "hr", "rationale": "", "task_output": "", "source": "operations", "request_id": "req_x"}


def test_rows_whose_ids_load_table_normalises_keep_their_request_ids(tmp_path):
    rows = tmp_path / "rows.jsonl"
    requests = ["Where is the form for next week's remote work application?",
                "How do I book the large meeting room on the third floor for Friday?",
                "Which cost centre code goes on a taxi receipt from a client visit?"]
    ids = [{}, {"id": " ops-1 "}, {"id": 7.0}]  # no id, padded, a whole float: load_table accepts all three
    rows.write_text("".join(json.dumps({**ROW, **i, "user_request": q, "request_id": f"req_{n}"}) + "\n"
                            for n, (i, q) in enumerate(zip(ids, requests))), encoding="utf-8")
    report = retrain.preprocess(rows, tmp_path / "out", benchmarks_dir=None)
    assert report["rows"] == 3 and report["kept"] == 3
    new = [json.loads(line) for line in (tmp_path / "out" / "new_rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {str(r["id"]): r["request_id"] for r in new} == {"rows:1": "req_0", "ops-1": "req_1", "7": "req_2"}
