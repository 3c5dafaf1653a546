"""report.html: one self-contained page per workdir, built only from the files a run left there.

Everything the page shows comes from files (config.json, run_info.json, history.json, *metrics.json,
report.txt, mistakes.json, checkpoints_evaluation.json, lr_find.json, the PNG figures (mistakes_gradcam.png
and lr_find.png among them), an ablation's variant folders), so
`--mode=report` can rebuild it at any time and the page always agrees with the files beside it. Figures are
embedded as base64 data URIs and the style is inline: the page needs no server, no network and no other
file, and can be mailed or archived alone. The only paths it names lie inside the workdir (the files of
`--mode=predict` by their base name).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnn_flax.evaluation.files import write_text

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:16px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#cfd8dc;font-size:13px}nav{padding:6px 28px;background:#eceff1;font-size:13px}
nav a{margin-right:14px;color:#37474f}main{padding:0 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;margin:18px 0;padding:4px 18px 14px}
h2{font-size:17px;color:#37474f}table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f5f5f5;padding:10px;overflow-x:auto;font-size:12px}.note{color:#777;font-size:13px}
.big{font-size:20px;font-weight:600;margin-right:24px}
"""
PREDICTIONS_SHOWN = 30  # rows of --mode=predict's results on the page
# Per-class rows of scikit-learn's classification report: name, precision, recall, f1, support.
REPORT_ROW = re.compile(r"^\s*(.+?)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+)\s*$")
ACCURACY_ROW = re.compile(r"^\s*accuracy\s+(\d+\.\d+)\s+(\d+)\s*$")


def _read_json(path: Path) -> Any | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _image(path: Path, alt: str) -> str | None:
    if not path.is_file():
        return None
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _section(anchor: str, title: str, body: str) -> tuple[str, str, str]:
    return anchor, title, f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def _missing(*names: str) -> str:
    return f'<p class="note">Not written yet: {", ".join(html.escape(n) for n in names)} (run training or ' \
           "--mode=evaluate in this workdir, then --mode=report).</p>"


def _results(workdir: Path) -> tuple[str, str, str]:
    files = sorted(workdir.glob("*metrics.json"), key=lambda p: (p.name != "metrics.json", p.name))
    rows = []
    for path in files:
        metrics = _read_json(path)
        if isinstance(metrics, dict) and "rank1" in metrics:
            variant = path.name[: -len("metrics.json")].rstrip("_") or "plain"
            rows.append((variant, metrics.get("split", "-"), metrics.get("num_examples", "-"),
                         _percent(metrics.get("rank1")), _percent(metrics.get("rank5")), _number(metrics.get("loss"))))
    if not rows:
        return _section("results", "Results", _missing("metrics.json"))
    main = rows[0]
    headline = (f'<p><span class="big">rank-1 {main[3]}</span><span class="big">rank-5 {main[4]}</span>'
                f'<span class="big">loss {main[5]}</span></p>')
    return _section("results", "Results", headline + _table(["model", "split", "examples", "rank-1", "rank-5",
                                                            "loss"], rows))


def _curves(workdir: Path) -> tuple[str, str, str]:
    figure = _image(workdir / "training.png", "training curves")
    history = _read_json(workdir / "history.json")
    if figure is None and not history:
        return _section("curves", "Training curves", _missing("training.png", "history.json"))
    body = figure or ""
    if isinstance(history, list) and history:
        keys = [k for k in ("epoch", "learning_rate", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                            "seconds") if any(k in r for r in history)]
        rows = [[r.get(k, "-") if not isinstance(r.get(k), float) else f"{r[k]:.6g}" for k in keys] for r in history]
        body += f"<details><summary>history.json ({len(history)} epochs)</summary>{_table(keys, rows)}</details>"
    return _section("curves", "Training curves", body)


def _per_class(workdir: Path) -> tuple[str, str, str]:
    path = workdir / "report.txt"
    if not path.is_file():
        return _section("per-class", "Per-class precision and recall", _missing("report.txt"))
    text = path.read_text(encoding="utf-8")
    rows, summary = [], []
    for line in text.splitlines():
        if match := ACCURACY_ROW.match(line):
            summary.append(("accuracy", "", "", match.group(1), match.group(2)))
        elif match := REPORT_ROW.match(line):
            (summary if match.group(1) in ("macro avg", "weighted avg") else rows).append(match.groups())
    if not rows:  # not scikit-learn's layout: show the text as it is
        return _section("per-class", "Per-class precision and recall", f"<pre>{html.escape(text)}</pre>")
    body = _table(["class", "precision", "recall", "f1-score", "support"], [*rows, *summary])
    return _section("per-class", "Per-class precision and recall", body)


def _confusion(workdir: Path) -> tuple[str, str, str]:
    figure = _image(workdir / "confusion_matrix.png", "confusion matrix")
    return _section("confusion-matrix", "Confusion matrix", figure or _missing("confusion_matrix.png"))


def _predictions(workdir: Path) -> tuple[str, str, str]:
    parts = []
    mistakes = _read_json(workdir / "mistakes.json")
    figure = _image(workdir / "mistakes.png", "worst mistakes")
    if isinstance(mistakes, list) and not mistakes:
        parts.append('<p class="note">No mistakes on the evaluated examples.</p>')
    elif figure:
        named = any("file" in row for row in mistakes or [])
        header = ["#", "file" if named else "example", "true", "predicted", "p(true)", "p(predicted)"]
        rows = [(i + 1, row.get("file", f"#{row['index']}"), row["true"], row["predicted"],
                 _number(row["prob_true"]), _number(row["prob_predicted"])) for i, row in enumerate(mistakes or [])]
        parts += ["<h3>Worst mistakes first</h3>", figure, _table(header, rows)]
        maps = _image(workdir / "mistakes_gradcam.png", "Grad-CAM maps of the worst mistakes")
        if maps:
            parts += ['<h3 id="gradcam">Where the network looked (Grad-CAM)</h3><p class="note">Each mistake with '
                      "the Grad-CAM map of its true class (middle) and of the class predicted (right): red where "
                      "the evidence for that class lies.</p>", maps]
    first = _image(workdir / "predictions.png", "predictions")
    if first:
        parts += ["<h3>The first examples of the split</h3>", first]
    return _section("predictions", "Predictions", "".join(parts) or _missing("mistakes.png", "predictions.png"))


def _checkpoints(workdir: Path) -> tuple[str, str, str] | None:
    rows = _read_json(workdir / "checkpoints_evaluation.json")
    if not isinstance(rows, list) or not rows:
        return None
    body = _table(["epoch", "rank-1", "rank-5", "loss"],
                  [(r["epoch"], _percent(r.get("rank1")), _percent(r.get("rank5")), _number(r.get("loss")))
                   for r in sorted(rows, key=lambda r: r["epoch"])])
    return _section("checkpoints", "Every checkpoint (--checkpoint=all)", body)


def _ablation(workdir: Path) -> tuple[str, str, str] | None:
    if not (workdir / "ablation.txt").is_file():
        return None
    rows = []
    for variant in sorted(p for p in workdir.iterdir() if p.is_dir() and (p / "metrics.json").is_file()):
        metrics = _read_json(variant / "metrics.json") or {}
        config = _read_json(variant / "config.json") or {}
        model = config.get("model", {})
        link = f'<a href="{html.escape(variant.name)}/report.html">{html.escape(variant.name)}</a>' \
            if (variant / "report.html").is_file() else html.escape(variant.name)
        cells = [_percent(metrics.get("rank1")), _percent(metrics.get("rank5")), _number(metrics.get("loss")),
                 ", ".join(f"{k}={v}" for k, v in sorted(model.items()) if k != "name")]
        rows.append(f"<tr><td>{link}</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("variant", "rank-1", "rank-5", "loss", "model settings"))
    body = f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    figure = _image(workdir / "ablation.png", "comparison of the variants")
    return _section("ablation", "Ablation: the variants compared", body + (figure or ""))


def _predict_results(workdir: Path) -> tuple[str, str, str] | None:
    results = _read_json(workdir / "predictions.json")
    if not isinstance(results, list) or not results:
        return None
    rows = [(os.path.basename(str(r.get("image", ""))), ", ".join(f"{e['name']} {100 * e['prob']:.1f}%"
                                                                  for e in r.get("top5", [])[:3]))
            for r in results[:PREDICTIONS_SHOWN]]
    more = len(results) - PREDICTIONS_SHOWN
    note = f'<p class="note">… and {more} more in predictions.json.</p>' if more > 0 else ""
    return _section("predict", "--mode=predict (top 3 of each image)", _table(["image", "classes"], rows) + note)


def _lr_find(workdir: Path) -> tuple[str, str, str] | None:
    result = _read_json(workdir / "lr_find.json")
    if not isinstance(result, dict) or not result.get("rates"):
        return None
    found = result.get("suggestions") or {}
    rows = [(label, "-" if found.get(key) is None else f"{found[key]:.3g}")
            for key, label in (("steepest", "steepest descent of the smoothed loss"),
                               ("minimum", "lowest smoothed loss"), ("minimum_over_10", "lowest / 10 (suggested)"))]
    settings = result.get("settings") or {}
    note = (f'<p class="note">{len(result["rates"])} steps of {html.escape(str(result.get("optimizer", "")))}, '
            f'batch {result.get("batch_size", "-")}, the rate growing geometrically from '
            f'{settings.get("min_lr", result["rates"][0]):g} to {settings.get("max_lr", result["rates"][-1]):g}; '
            f'{html.escape(str(result.get("stopped", "")))}. Pick a rate where the loss still falls steeply, '
            "before its minimum.</p>")
    figure = _image(workdir / "lr_find.png", "smoothed loss against the learning rate") or ""
    return _section("lr-find", "Learning-rate range test (--mode=lr_find)", note + figure + _table(["", "rate"], rows))


def _plan(plan: Sequence[str] | None) -> tuple[str, str, str]:
    body = f"<pre>{html.escape(chr(10).join(plan))}</pre>" if plan else _missing("config.json")
    return _section("learning-rate", "Learning-rate plan", body)


def _config(workdir: Path, info: dict[str, Any]) -> tuple[str, str, str]:
    config = _read_json(workdir / "config.json")
    commands = info.get("commands") or []
    parts = []
    if commands:
        rows = [(c.get("time", "-"), c.get("mode", "-"), c.get("command") or "(called from Python)") for c in commands]
        parts.append(_table(["when (UTC)", "mode", "command"], rows))
    if config is not None:
        parts.append(f"<details open><summary>config.json</summary><pre>"
                     f"{html.escape(json.dumps(config, indent=2, sort_keys=True))}</pre></details>")
    return _section("config", "Command and config", "".join(parts) or _missing("config.json"))


def _environment(info: dict[str, Any]) -> tuple[str, str, str]:
    env = info.get("environment")
    if not env:
        return _section("environment", "Environment", _missing("run_info.json"))
    rows = [(key, ", ".join(map(str, value)) if isinstance(value, list) else value) for key, value in env.items()]
    return _section("environment", "Environment", _table(["", ""], rows))


def build_report(workdir: str | os.PathLike, plan: Sequence[str] | None = None) -> str:
    """Write `workdir/report.html` from the files in `workdir`; return its path.

    plan: the learning-rate plan lines (computed by the caller from config.json, as --mode=summary does).
    """
    root = Path(workdir)
    if not root.is_dir():
        raise FileNotFoundError(f"{workdir} is not a folder")
    info = _read_json(root / "run_info.json") or {}
    config = _read_json(root / "config.json") or {}
    name = str(config.get("name") or root.name)
    is_ablation = (root / "ablation.txt").is_file()
    if is_ablation:
        candidates = [_ablation(root), _config(root, info), _environment(info)]
    else:
        candidates = [_results(root), _curves(root), _per_class(root), _confusion(root), _predictions(root),
                      _checkpoints(root), _predict_results(root), _lr_find(root), _plan(plan), _config(root, info),
                      _environment(info)]
    sections = [s for s in candidates if s is not None]
    nav = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
    written = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    kind = "ablation" if is_ablation else "run"
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)} — cnn_flax '
            f'report</title><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body><header><h1>{html.escape(name)}</h1><p>cnn_flax {kind} report of "
            f"workdir {html.escape(root.name)}, built {written} from its files</p></header><nav>{nav}</nav><main>"
            + "".join(body for _, _, body in sections) + "</main></body></html>\n")
    path = root / "report.html"
    write_text(path, page)
    return str(path)
