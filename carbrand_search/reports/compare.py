"""A table across studies with the seed's columns."""

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts._protocol import ArtifactStore
from optuna.trial import TrialState

from carbrand_search.reports.evaluate import evaluate_split, load_trial_model
from carbrand_search.reports.report import md_escape, ranked_trials


def compare_rows(
    studies: list[optuna.Study], artifacts: ArtifactStore, data: Path, cache: Path
) -> list[dict[str, Any]]:
    """Per study: its best trial's model, val/test accuracy, macro-F1, matrix pattern, trials."""
    rows = []
    for study in studies:
        best = ranked_trials(study)[0]
        tm = load_trial_model(study, best, artifacts)
        ev = evaluate_split(tm, data, cache)
        trials = study.get_trials(deepcopy=False)
        verdict = ev.verdict()
        rows.append(
            {
                "study": study.study_name,
                "model": tm.config.model.name,
                "val acc": round(
                    float(best.user_attrs.get("val", {}).get("val_accuracy", 0.0)), 4
                ),
                "test acc": round(ev.accuracy, 4),
                "macro-F1": round(ev.macro_f1, 4),
                "confusion matrix": "collapsed" if verdict["collapsed"] else "no collapse",
                "trials run": len(trials),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            }
        )
    return rows


def write_compare(rows: list[dict[str, Any]], out: Path) -> None:
    """compare.json and compare.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md_escape(str(r[h])) for h in head) + " |" for r in rows]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
