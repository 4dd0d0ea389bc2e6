"""`elite eval`'s run, in the steps its caller shows: find the subjects (before any model loads,
so a typo or a bad picture fails in a second rather than after minutes of loading), load the
models, then encode the pictures and generate and score. Never prints: warnings come back as
text, progress goes to a callback.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from elite_cli.evaluation.runner import EvalReport, EvalSettings, Progress, Subject

if TYPE_CHECKING:
    from elite_cli.evaluation.metrics import MetricModels
    from elite_cli.model.loading import Models
    from elite_cli.model.spec import ModelSpec


@dataclass
class EvaluationPlan:
    """What `plan_evaluation` found: the names as given, the library's subjects among them, and
    advice about the prompts (each a sentence without the `Warning:` prefix)."""

    names: list[str]  # library concept names and picture files, in the order given
    library_subjects: dict[str, Subject]  # by the name as given
    warnings: list[str]

    @property
    def pictures(self) -> list[str]:
        """The names that are picture files, encoded once the models are loaded."""
        return [name for name in self.names if name not in self.library_subjects]


def plan_evaluation(names: list[str], settings: EvalSettings, class_words: Mapping[str, str], base_model: str,
                    home: Path) -> EvaluationPlan:
    """Look up the library concepts, check the names and class words, decode the picture files,
    and measure the prompts against the text encoder: all before any model loads."""
    from elite_cli.evaluation.runner import generation_prompt
    from elite_cli.evaluation.subjects import (
        check_class_words,
        check_unique,
        is_picture_path,
        library_subject,
        picture_name,
    )
    from elite_cli.model.images import prepare_image

    library_names = [name for name in names if not is_picture_path(name)]
    store = open_library(home) if library_names else None
    subjects = {name: library_subject(store, name, class_words, home) for name in library_names}
    final_names = [subjects[name].name if name in subjects else picture_name(Path(name)) for name in names]
    check_unique(final_names)
    check_class_words(class_words, [*names, *final_names])
    for name in names:  # a picture file that does not decode fails before the models load, as in `elite add`
        if name not in subjects:
            prepare_image(Path(name).expanduser())
    advice: list[str] = []
    if settings.prompts is not None:  # a template too long for the text encoder is reported before any image
        from elite_cli.model.text import prompt_fit_warnings

        prompts = [generation_prompt(template, name) for name in final_names for template in settings.prompts]
        advice = list(prompt_fit_warnings(base_model, prompts, [settings.negative_prompt]) or [])
    return EvaluationPlan(list(names), subjects, advice)


def open_library(home: Path):
    from elite_cli.library import ConceptStore

    return ConceptStore(home)


def load_evaluation_models(spec: "ModelSpec", clip_model: str, dino_model: str) -> tuple["Models", "MetricModels"]:
    """The generation models of `spec`, and the metric models on the same device."""
    from elite_cli.evaluation.metrics import load_metric_models
    from elite_cli.model.loading import load_models

    models = load_models(spec)
    return models, load_metric_models(clip_model, dino_model, models.device)


def evaluation_subjects(plan: EvaluationPlan, models: "Models", class_words: Mapping[str, str],
                        allow_stale: bool) -> list[Subject]:
    """Every subject in the order given: the library's (refused if stale, unless `allow_stale`)
    and the picture files, encoded with the loaded models."""
    from elite_cli.evaluation.runner import check_fresh
    from elite_cli.evaluation.subjects import picture_subject

    if not allow_stale:
        check_fresh(list(plan.library_subjects.values()), models)
    subjects = dict(plan.library_subjects)
    if plan.pictures:
        from elite_cli.model.encoder import Encoder

        encoder = Encoder(models)
        for name in plan.pictures:
            subjects[name] = picture_subject(Path(name).expanduser(), encoder, class_words)
    return [subjects[name] for name in plan.names]


def evaluate_subjects(subjects: list[Subject], settings: EvalSettings, models: "Models", metric_models: "MetricModels",
                      directory: Path, progress: Progress | None = None) -> EvalReport:
    """Generate, score and write every subject's images (`EvalRunner.run`)."""
    from elite_cli.evaluation.runner import EvalRunner
    from elite_cli.model.text import PromptTruncatedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)  # plan_evaluation reported them, once per prompt
        return EvalRunner(models, metric_models).run(subjects, settings, directory, progress=progress)
