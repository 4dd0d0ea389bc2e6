"""`elite eval --compare A.json B.json`: two runs side by side, B minus A.

The usual question is "what did the new mapper checkpoint (or lambda 0.6) do?", so the
comparison lists every setting and model that differs next to the metric deltas, and warns when
the two runs are not measuring the same thing (other metric models, other prompts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from elite_cli.errors import InputError
from elite_cli.evaluation.runner import METRICS, REPORT_FORMAT

# Settings that change speed, not images: not worth listing as a difference.
SPEED_ONLY = {"batch_size"}


@dataclass
class MetricDelta:
    first: float | None
    second: float | None

    @property
    def delta(self) -> float | None:
        if self.first is None or self.second is None:
            return None
        return self.second - self.first


@dataclass
class Comparison:
    first: str  # file paths, as given
    second: str
    rows: dict[str, dict[str, MetricDelta]]  # concept -> metric -> values
    overall: dict[str, MetricDelta]  # metric -> values over every image
    differences: list[tuple[str, object, object]] = field(default_factory=list)  # (setting, A, B)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "first": self.first,
            "second": self.second,
            "rows": {
                name: {metric: {"first": value.first, "second": value.second, "delta": value.delta}
                       for metric, value in metrics.items()}
                for name, metrics in self.rows.items()
            },
            "overall": {metric: {"first": value.first, "second": value.second, "delta": value.delta}
                        for metric, value in self.overall.items()},
            "differences": [{"setting": key, "first": a, "second": b} for key, a, b in self.differences],
            "warnings": self.warnings,
        }


def read_report(path: Path) -> dict:
    if Path(path).is_dir():
        hint = f"pass '{Path(path) / 'results.json'}'" if (Path(path) / "results.json").is_file() else "pass the results.json an `elite eval` run wrote"
        raise InputError(f"results file '{path}' is a folder; {hint}.")
    if not Path(path).is_file():
        raise InputError(f"results file '{path}' does not exist; pass the results.json an `elite eval` run wrote.")
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"'{path}' is not JSON; pass the results.json an `elite eval` run wrote.") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise InputError(f"'{path}' is not an elite eval results file (format {REPORT_FORMAT}); pass the results.json an `elite eval` run wrote.")
    broken = [key for key in ("concepts", "overall") if not isinstance(report.get(key), dict)]
    broken += [key for key in ("settings", "models") if not isinstance(report.get(key, {}), dict)]
    broken += [f"concepts.{name}" for name, section in (report.get("concepts") or {}).items() if not isinstance(section, dict)]
    if broken:
        raise InputError(f"'{path}' is a damaged elite eval results file (no valid {', '.join(broken)}); "
                         "pass the results.json an `elite eval` run wrote.")
    if "settings" in report:
        from elite_cli.common.outputs import user_keys

        report["settings"] = user_keys(report["settings"])  # files written before say `llambda`
    return report


def _means(section: dict) -> dict[str, float | None]:
    """Each metric's mean, None where a run has none (or a hand-edited file holds something else)."""
    means = {}
    for metric in METRICS:
        value = section.get(metric)
        mean = value.get("mean") if isinstance(value, dict) else None
        means[metric] = float(mean) if isinstance(mean, (int, float)) and not isinstance(mean, bool) else None
    return means


def compare_reports(first: dict, second: dict, first_label: str = "A", second_label: str = "B") -> Comparison:
    names = list(first["concepts"]) + [name for name in second["concepts"] if name not in first["concepts"]]
    rows: dict[str, dict[str, MetricDelta]] = {}
    for name in names:
        a = _means(first["concepts"].get(name, {}))
        b = _means(second["concepts"].get(name, {}))
        rows[name] = {metric: MetricDelta(a[metric], b[metric]) for metric in METRICS}
    a, b = _means(first["overall"]), _means(second["overall"])
    overall = {metric: MetricDelta(a[metric], b[metric]) for metric in METRICS}

    differences = []
    for section in ("models", "settings"):
        keys = list(first.get(section, {})) + [key for key in second.get(section, {}) if key not in first.get(section, {})]
        for key in (key for key in keys if key not in SPEED_ONLY):
            value_a, value_b = first.get(section, {}).get(key), second.get(section, {}).get(key)
            if value_a != value_b:
                differences.append((key, value_a, value_b))

    warnings = []
    for label, report in ((first_label, first), (second_label, second)):
        if not report.get("complete", True):
            warnings.append(f"{label} is an interrupted run; it holds only the concepts finished before it stopped.")
    different = {key for key, _, _ in differences}
    if different & {"clip_model", "dino_model"}:
        warnings.append("the runs used different metric models, so their scores are not comparable.")
    if "prompts" in different:
        warnings.append("the runs used different prompts; differences mix the change you made with the prompts.")
    for name in names:
        if name in first["concepts"] and name in second["concepts"]:
            word_a, word_b = first["concepts"][name].get("class_word"), second["concepts"][name].get("class_word")
            if word_a != word_b:
                differences.append((f"<{name}> class_word", word_a, word_b))
                warnings.append(f"<{name}> has {describe_class_word(word_a)} in A and {describe_class_word(word_b)} in B, "
                                "so its CLIP-T texts differ.")
    only = [name for name in names if (name in first["concepts"]) != (name in second["concepts"])]
    if only:
        warnings.append(f"only one run has {', '.join(f'<{name}>' for name in only)}; the overall rows pool different concepts.")
    return Comparison(first_label, second_label, rows, overall, differences, warnings)


def describe_class_word(word: str | None) -> str:
    """A class word in user words: a run without one stores null, which must not print as `None`."""
    return f"class word '{word}'" if word else "no class word"
