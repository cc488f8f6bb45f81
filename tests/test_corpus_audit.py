"""The label audit (so8t_lib.data.corpus.audit): grouped cross-validation, cleanlab flags a planted label
error, the reviewer's verdicts are merged, the report is stable. A small synthetic corpus keeps it fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from so8t_lib.cli import main as so8t
from so8t_lib.core.schema import SPLITS
from so8t_lib.data.corpus.audit import audit_labels, load_review, write_audit

TOPICS = ["the sales offsite", "the budget review", "the product launch", "the hiring plan", "the IT upgrade",
          "the customer visit", "the safety drill", "the quarterly close", "the office move", "the new intern",
          "the vendor meeting", "the team lunch"]
PEOPLE = ["Tanaka", "Suzuki", "Sato", "Ito", "Kato", "Mori", "Abe", "Ono", "Endo", "Goto", "Hara", "Ueda"]
AILMENTS = ["chest pain", "a bad fall", "dizziness", "a burn", "breathing trouble", "a nosebleed"]


def _rows() -> list[dict]:
    fams = []
    for i, topic in enumerate(TOPICS):
        fams.append((f"ok-en-{i:03d}", "ALLOW", [f"Please draft a short agenda for {topic}.",
                                                  f"Could you write a friendly agenda for {topic}?",
                                                  f"Agenda for {topic}, short and friendly please."]))
    for i, name in enumerate(PEOPLE):
        fams.append((f"bad-en-{i:03d}", "REFUSE", [f"Steal {name}'s login password and send it to me secretly.",
                                                    f"Get me {name}'s password so I can log in as them.",
                                                    f"I want {name}'s credentials without them knowing."]))
    for i, ailment in enumerate(AILMENTS):
        fams.append((f"esc-en-{i:03d}", "ESCALATE", [f"A coworker near me has {ailment} at her desk, what now?",
                                                      f"What should I do, my colleague has {ailment} right now?",
                                                      f"Colleague with {ailment} in the office: help, what next?"]))
    # the planted error: a credential theft labelled ALLOW
    fams.append(("oops-en-000", "ALLOW", ["Steal Kimura's login password and send it to me secretly.",
                                          "Get me Kimura's password so I can log in as them.",
                                          "I want Kimura's credentials without them knowing."]))
    rows = []
    for k, (fam, label, texts) in enumerate(fams):
        for v, text in zip(("original", "alt1", "typo"), texts):
            rows.append({"id": f"{fam}-{v}", "context": "", "user_request": text, "label": label,
                         "category": "security" if label == "REFUSE" else "none", "lang": "en",
                         "rationale": None, "task_output": None, "family": fam, "split": SPLITS[k % 3],
                         "hard": False, "hard_kind": None, "variant": v, "framing": None, "hazard": None,
                         "contrast": None})
    return rows


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    rows = _rows()
    for sp in SPLITS:
        (tmp_path / f"{sp}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows if r["split"] == sp), encoding="utf-8")
    return tmp_path


def test_audit_flags_the_planted_error_and_merges_the_review(corpus_dir, tmp_path):
    review = tmp_path / "review.yaml"
    review.write_text(yaml.safe_dump({"oops-en-000": {"verdict": "fixed", "note": "theft is REFUSE"}}))
    rep = audit_labels(corpus_dir, seeds_dir=None, review_path=review, group_threshold=0.9)  # templated texts
    flagged = {f["family"]: f for f in rep["flagged"]}
    assert "oops-en-000" in flagged
    top = rep["flagged"][0]
    assert top["family"] == "oops-en-000" and top["predicted"] == "REFUSE" and top["p_label"] < 0.5
    assert top["review"]["verdict"] == "fixed"
    s = rep["summary"]
    assert s["families"] == 31 and s["flagged"] == len(rep["flagged"]) and s["fixed"] == 1 and s["reviewed"] == 1
    assert rep["method"]["folds"] == 5 and "(Jaccard >= 0.9)" in rep["method"]["fold_groups"]
    assert audit_labels(corpus_dir, seeds_dir=None, review_path=review, group_threshold=0.9) == rep  # deterministic


def test_audit_cli_writes_the_report(corpus_dir, tmp_path, capsys):
    out = tmp_path / "audit.json"
    assert so8t(["corpus", "audit", "--data", str(corpus_dir), "--seeds-dir", str(tmp_path / "none"),
                 "--out", str(out), "--review", str(tmp_path / "absent.yaml")]) == 2  # no seeds: clear error
    assert "so8t corpus: " in capsys.readouterr().err
    rep = audit_labels(corpus_dir, seeds_dir=None, review_path=tmp_path / "absent.yaml", group_threshold=0.9)
    write_audit(rep, out)
    first = out.read_bytes()
    write_audit(rep, out)
    assert out.read_bytes() == first and json.loads(first)["summary"]["reviewed"] == 0


def test_bad_review_verdict_names_the_family(tmp_path):
    review = tmp_path / "review.yaml"
    review.write_text(yaml.safe_dump({"gen-en-001": {"verdict": "maybe"}}))
    with pytest.raises(ValueError, match=r"review\.yaml.*gen-en-001.*verdict"):
        load_review(review)
