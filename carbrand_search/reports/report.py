"""Best-trial reports: test-split evaluation, Grad-CAM, study views; JSON, Markdown, HTML."""

import base64
import csv
import html
import json
import math
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.core import plots
from carbrand_search.core.errors import UserError
from carbrand_search.core.folders import refuse_non_empty
from carbrand_search.core.terminal import clean, one_line
from carbrand_search.reports.evaluate import (
    ClassScores,
    ConfusedPair,
    Evaluation,
    Verdict,
    evaluate_split,
)
from carbrand_search.reports.gradcam import overlays
from carbrand_search.search import record, space
from carbrand_search.search.failures import KILLED
from carbrand_search.search.record import TeacherRef
from carbrand_search.search.storage import ArtifactStore
from carbrand_search.search.study import (
    ImageSource,
    best_trials,
    budget,
    direction,
    metric_name,
    stored_spec,
    trials,
)
from carbrand_search.search.trained import TrialModel, load_trial_model
from carbrand_search.search.views import CollapseTally, collapse_tally
from carbrand_search.training.parts import augment_for

CAM_SAMPLES = 8  # correct and wrong test images each in the Grad-CAM grid
# What a report puts at the top of its folder: the only entries `--force` may replace.
REPORT_FILES = ("report.json", "report.md", "report.html", "*.png", "trial-*")


@dataclass(frozen=True)
class CamCounts:
    """Test images behind the Grad-CAM grid."""

    correct: int
    wrong: int


@dataclass(frozen=True)
class TestSection:
    """A trial's model on the test split."""

    images: int
    tta: bool  # probabilities averaged over each image and its mirror image
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]
    most_confused: list[ConfusedPair]
    verdict: Verdict
    gradcam: CamCounts


@dataclass(frozen=True)
class TrialSection:
    """One reported trial."""

    number: int
    value: float | None
    model: str
    teacher: TeacherRef | None
    params: dict[str, Any]
    val: dict[str, float]
    best_epoch: int | None
    test: TestSection
    images: dict[str, str]  # caption → path relative to the report


@dataclass(frozen=True)
class Report:
    """report.json, and what report.md and report.html show."""

    study: str
    storage: str
    metric: str  # what the trial values measure
    direction: str
    budget: int
    states: dict[str, int]
    collapse: CollapseTally
    failures: dict[str, int]  # failed trials by kind (search/failures.py)
    retries: int  # trials that ran a failed trial's parameters again
    resumed: int  # of those, how many continued from the failed trial's last resume point
    images: dict[str, str]
    trials: list[TrialSection]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_default)


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, best first; none is a clear error."""
    ranked = best_trials(trials(study), direction(study))
    if not ranked:
        raise UserError(f"study '{study.study_name}' has no complete trial to report on")
    return ranked


def _study_views(study: optuna.Study, found: list[FrozenTrial], out: Path) -> dict[str, str]:
    images: dict[str, str] = {}
    done = [t for t in found if t.state == TrialState.COMPLETE and t.value is not None]
    plots.history_png(
        [t.number for t in done],
        [float(t.value or 0) for t in done],
        direction(study) == "maximize",
        metric_name(study),
        out / "history.png",
    )
    images["optimization history"] = "history.png"
    states = Counter(t.state.name.lower() for t in found)
    plots.bars_png(dict(states), "trial states", out / "states.png")
    images["trial states"] = "states.png"
    if len(done) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in done}) >= 2:
        importances = optuna.importance.get_param_importances(study)
        plots.bars_png(importances, "parameter importances (fANOVA)", out / "importances.png")
        images["parameter importances"] = "importances.png"
    return images


def _spread(indices: np.ndarray) -> np.ndarray:
    """Up to CAM_SAMPLES indices spread evenly (test images are ordered by brand)."""
    if len(indices) <= CAM_SAMPLES:
        return indices
    return indices[np.linspace(0, len(indices) - 1, CAM_SAMPLES).astype(int)]


def _cam_grid(tm: TrialModel, ev: Evaluation, folder: Path) -> CamCounts:
    correct = np.flatnonzero(ev.preds == ev.labels)
    wrong = np.flatnonzero(ev.preds != ev.labels)
    chosen = np.concatenate([_spread(correct), _spread(wrong)]).astype(int)
    pictures = overlays(
        tm.model, tm.config.model.name, augment_for(tm.config), ev.images[chosen],
        [int(ev.preds[i]) for i in chosen],
    )  # fmt: skip
    titles = [
        f"{'✓' if ev.preds[i] == ev.labels[i] else '✗'} {ev.classes[ev.labels[i]]} → "
        f"{ev.classes[ev.preds[i]]} ({ev.probs[i].max():.2f})"
        for i in chosen
    ]
    plots.grid_png(pictures, titles, folder / "gradcam.png")
    return CamCounts(correct=len(correct), wrong=len(wrong))


def _trial_section(
    study: optuna.Study,
    trial: FrozenTrial,
    artifacts: ArtifactStore,
    images: ImageSource,
    out: Path,
    tta: bool,
) -> TrialSection:
    tm = load_trial_model(study, trial, artifacts)
    ev = evaluate_split(tm, images.root, images.cache, skip_bad=images.skip_bad, tta=tta)
    folder = out / f"trial-{trial.number}"
    folder.mkdir()
    cm = ev.confusion
    plots.confusion_png(cm, ev.classes, folder / "confusion.png")
    with (folder / "confusion.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *ev.classes])
        writer.writerows([c, *row] for c, row in zip(ev.classes, cm.tolist(), strict=True))
    stored = record.read(trial)
    if stored.epochs:
        plots.curves_png(list(stored.epochs), folder / "curves.png")
    cams = _cam_grid(tm, ev, folder)
    spec = stored_spec(study)
    params = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in space.decode(spec, trial.params).items()
    }
    return TrialSection(
        number=trial.number,
        value=trial.value,
        model=tm.config.model.name,
        teacher=stored.teacher,
        params=params,
        val=stored.val.to_dict() if stored.val else {},
        best_epoch=stored.best_epoch,
        test=TestSection(
            images=len(ev.labels),
            tta=tta,
            accuracy=ev.accuracy,
            macro_f1=ev.macro_f1,
            per_class=ev.per_class(),
            confusion_matrix=cm.tolist(),
            most_confused=ev.confused_pairs(),
            verdict=ev.verdict(),
            gradcam=cams,
        ),
        images={
            name: f"trial-{trial.number}/{file}"
            for name, file in (
                ("confusion matrix", "confusion.png"),
                ("training curves", "curves.png"),
                ("Grad-CAM", "gradcam.png"),
            )
            if (folder / file).exists()
        },
    )


def build_report(
    study: optuna.Study,
    *,
    artifacts: ArtifactStore,
    images: ImageSource,
    out: Path,
    top: int = 1,
    force: bool = False,
    storage_label: str,
    tta: bool = False,
) -> Report:
    """Write report.json/.md/.html (+ images) to `out`; nothing is overwritten without `force`.
    `tta`: each test prediction averages the image and its mirror image."""
    refuse_non_empty(out, "output folder", force, writes=REPORT_FILES)
    ranked = ranked_trials(study)
    found = study.get_trials()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        work = Path(tmp)
        report = Report(
            study=study.study_name,
            storage=storage_label,
            metric=metric_name(study),
            direction=direction(study),
            budget=budget(study, default=len(found)),
            states=dict(Counter(t.state.name.lower() for t in found)),
            collapse=collapse_tally(found),
            failures=dict(
                Counter(
                    record.read(t).failure_kind or KILLED
                    for t in found
                    if t.state == TrialState.FAIL
                )
            ),
            retries=sum(record.read(t).retry_of is not None for t in found),
            resumed=sum(record.read(t).resumed_from is not None for t in found),
            images=_study_views(study, found, work),
            trials=[_trial_section(study, t, artifacts, images, work, tta) for t in ranked[:top]],
        )
        (work / "report.json").write_text(report.to_json())
        (work / "report.md").write_text(to_markdown(report))
        (work / "report.html").write_text(to_html(report, work))
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(work, out)
        out.chmod(0o755)  # the temporary folder was private
    _upload(study, artifacts, out, report.trials[0])
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _upload(
    study: optuna.Study, artifacts: ArtifactStore, out: Path, section: TrialSection
) -> None:
    """Attach the report and the best trial's test pictures to the study (dashboard study view).

    Finished trials cannot take uploads in Optuna; each trial uploaded its own validation
    pictures while it ran.
    """
    with tempfile.TemporaryDirectory() as tmp:
        for path in [out / "report.html", *(out / rel for rel in section.images.values())]:
            named = Path(tmp) / f"trial-{section.number}-test-{path.name}"
            if path.name == "report.html":
                named = Path(tmp) / "report.html"
            shutil.copy(path, named)
            upload_artifact(artifact_store=artifacts, file_path=str(named), study_or_trial=study)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _summary_lines(report: Report) -> list[str]:
    c = report.collapse
    rules = ", ".join(f"{k}: {v}" for k, v in c.by_rule.items()) or "none"
    return [
        f"Trials: {', '.join(f'{k} {v}' for k, v in report.states.items())} "
        f"(budget {report.budget}).",
        f"Pruned: {c.pruned} (rules: {rules}; at epochs {c.epochs or '—'}; "
        f"mean val loss / ln(classes) at pruning {_fmt(c.loss_ratio_mean)}).",
        f"Failed: {sum(report.failures.values())} "
        f"({', '.join(f'{k} {v}' for k, v in report.failures.items()) or 'none'}); "
        f"retried with the same parameters: {report.retries}, "
        f"{report.resumed} of them from a saved epoch.",
    ]


def _trial_lines(t: TrialSection, metric: str) -> list[str]:
    test = t.test
    pairs = "; ".join(f"{p.true} → {p.predicted} ({p.count})" for p in test.most_confused)
    mirrored = ", each with its mirror image (TTA)" if test.tta else ""
    return [
        f"Model {t.model}, {metric} {_fmt(t.value)} (best epoch {t.best_epoch}).",
        f"Teacher: {t.teacher or 'none'}.",
        f"Parameters: {', '.join(f'{k}={_fmt(v)}' for k, v in t.params.items())}.",
        f"Test split ({test.images} images{mirrored}): accuracy {test.accuracy:.4f}, "
        f"macro-F1 {test.macro_f1:.4f}.",
        f"Verdict: {test.verdict.text}.",
        f"Most confused: {pairs or 'none'}.",
        f"Grad-CAM on the test split: {test.gradcam.correct} correct, {test.gradcam.wrong} wrong.",
    ]


def _per_class_rows(t: TrialSection) -> list[list[str]]:
    return [
        [c, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", str(m.support)]
        for c, m in t.test.per_class.items()
    ]


PER_CLASS_HEAD = ["brand", "precision", "recall", "F1", "support"]


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def md_escape(text: str) -> str:
    """`text` shown literally in Markdown: brand names like `Mini [cooper](x)` or `<b>` are data,
    never links or tags; control characters are dropped, newlines shown as \\n (rows are lines)."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line(text), quote=False))


def to_markdown(report: Report) -> str:
    """report.md, with the images beside it."""
    esc = md_escape
    out = [f"# Study {esc(report.study)}", "", *map(esc, _summary_lines(report)), ""]
    out += [f"![{esc(name)}]({path})" for name, path in report.images.items()]
    for t in report.trials:
        out += ["", f"## Trial {t.number}", "", *map(esc, _trial_lines(t, report.metric)), ""]
        out += ["| " + " | ".join(PER_CLASS_HEAD) + " |", "|" + "---|" * len(PER_CLASS_HEAD)]
        out += ["| " + " | ".join(map(esc, row)) + " |" for row in _per_class_rows(t)]
        out += ["", *(f"![{esc(name)}]({path})" for name, path in t.images.items())]
    return "\n".join(out) + "\n"


def _img(folder: Path, rel: str, alt: str) -> str:
    data = base64.b64encode((folder / rel).read_bytes()).decode()
    alt = html.escape(clean(alt))
    image = f'<img alt="{alt}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{alt}</figcaption></figure>"


def to_html(report: Report, folder: Path) -> str:
    """A self-contained report.html: every image embedded, opens offline."""

    def esc(text: str) -> str:
        return html.escape(clean(text))

    body = [f"<h1>Study {esc(report.study)}</h1>"]
    body += [f"<p>{esc(line)}</p>" for line in _summary_lines(report)]
    body += [_img(folder, path, name) for name, path in report.images.items()]
    for t in report.trials:
        body += [
            f"<h2>Trial {t.number}</h2>",
            *(f"<p>{esc(line)}</p>" for line in _trial_lines(t, report.metric)),
        ]
        head = "".join(f"<th>{h}</th>" for h in PER_CLASS_HEAD)
        rows = "".join(
            "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>"
            for row in _per_class_rows(t)
        )
        body.append(f"<table><tr>{head}</tr>{rows}</table>")
        body += [_img(folder, path, name) for name, path in t.images.items()]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}td:first-child{text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(report.study)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
