"""A table across studies with the seed's columns."""

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from carbrand_search.core.folders import refuse_non_empty
from carbrand_search.reports.evaluate import evaluate_split
from carbrand_search.reports.report import md_escape, ranked_trials
from carbrand_search.search import record
from carbrand_search.search.storage import ArtifactStore
from carbrand_search.search.study import image_source, trials
from carbrand_search.search.trained import load_trial_model


def compare_rows(
    studies: list[optuna.Study],
    *,
    artifacts: ArtifactStore,
    data: Path | None = None,
    cache: Path | None = None,
    tta: bool = False,
) -> list[dict[str, Any]]:
    """Per study: its best trial's model, teacher, val/test accuracy, macro-F1, the most
    predicted make's share of predictions and of the images, matrix pattern, trials. Each
    study's test images come from `data`, or from where its last run read them; `tta` adds the
    mirror image to each prediction."""
    rows = []
    for study in studies:
        best = ranked_trials(study)[0]
        tm = load_trial_model(study, best, artifacts)
        images = image_source(study, data, cache)
        ev = evaluate_split(tm, images.root, images.cache, skip_bad=images.skip_bad, tta=tta)
        found = trials(study)
        stored = record.read(best)
        verdict = ev.verdict()
        rows.append(
            {
                "study": study.study_name,
                "model": tm.config.model.name,
                "teacher": str(stored.teacher) if stored.teacher else "none",
                "val acc": round(stored.val.val_accuracy, 4) if stored.val else 0.0,
                "test acc": round(ev.accuracy, 4),
                "macro-F1": round(ev.macro_f1, 4),
                "top make share": round(verdict.top_predicted_share, 4),
                "its share of images": round(verdict.top_true_share, 4),
                "confusion matrix": "collapsed" if verdict.collapsed else "no collapse",
                "trials run": len(found),
                "pruned": sum(t.state == TrialState.PRUNED for t in found),
            }
        )
    return rows


def compare_studies(
    studies: list[optuna.Study],
    *,
    artifacts: ArtifactStore,
    data: Path | None = None,
    cache: Path | None = None,
    out: Path,
    force: bool = False,
    tta: bool = False,
) -> list[dict[str, Any]]:
    """`compare_rows`, written to compare.json and compare.md in `out` (new or empty unless
    `force`, checked before any study is evaluated)."""
    refuse_non_empty(out, "output folder", force, writes=("compare.json", "compare.md"))
    rows = compare_rows(studies, artifacts=artifacts, data=data, cache=cache, tta=tta)
    write_compare(rows, out)
    return rows


def write_compare(rows: list[dict[str, Any]], out: Path) -> None:
    """compare.json and compare.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md_escape(str(r[h])) for h in head) + " |" for r in rows]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
