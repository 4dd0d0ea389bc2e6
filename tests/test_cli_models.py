"""`elite models`, `elite models import`, `elite models tiny` and `elite doctor` against the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_models_tiny_use_points_the_config_at_them(run_cli, tiny_models, elite_home: Path, tmp_path: Path):
    # build_tiny_models reuses a finished set, so pointing at the session's set is quick.
    directory = Path(tiny_models.base_model).parent
    result = run_cli("models", "tiny", directory, "--use")
    assert result.exit_code == 0, result.output
    shown = json.loads(run_cli("config", "--json").stdout)["settings"]
    assert shown["base_model"]["value"] == str(Path(tiny_models.base_model).resolve())
    assert shown["global_mapper"]["source"] == f"config {elite_home / 'config.toml'}"
    status = json.loads(run_cli("models", "--json").stdout)
    assert [finding["status"] for finding in status] == ["ok"] * 5  # the segmenter too
    # The metric models of `elite eval` too: its offline route.
    assert shown["eval_clip_model"]["value"] == str((directory / "metrics" / "clip").resolve())
    assert shown["eval_dino_model"]["source"] == f"config {elite_home / 'config.toml'}"
    picture = tmp_path / "cat.png"
    from conftest import draw_object_picture

    draw_object_picture(picture)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a {} on the beach\n")
    evaluated = run_cli("eval", picture, "--prompts", prompts, "-n", "1", "--steps", "2", "--width", "64", "--height", "64",
                        "-o", tmp_path / "eval", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["models"]["clip_model"] == shown["eval_clip_model"]["value"]


def test_models_tiny_prints_exports_without_use(run_cli, tiny_models):
    result = run_cli("models", "tiny", Path(tiny_models.base_model).parent)
    assert result.exit_code == 0
    assert f"export ELITE_LOCAL_MAPPER={Path(tiny_models.local_mapper).resolve()}" in result.stdout.splitlines()
    assert f"export ELITE_SEGMENTER={Path(tiny_models.segmenter).resolve()}" in result.stdout.splitlines()


def test_models_shows_the_hub_defaults_and_what_offline_lacks(run_cli, elite_home: Path):
    # The tests run with HF_HUB_OFFLINE=1 and an empty cache: nothing can be downloaded.
    result = run_cli("models", "--json")
    findings = {finding["check"]: finding for finding in json.loads(result.stdout)}
    for key in ("base_model", "image_encoder", "global_mapper", "local_mapper"):
        assert findings[key]["status"] == "fail", findings[key]
        assert "HF_HUB_OFFLINE is set" in findings[key]["detail"] and "`elite models download`" in findings[key]["fix"]
    assert "`elite models tiny ./tiny --use`" in findings["global_mapper"]["fix"]  # the offline route
    doctor = {finding["check"]: finding for finding in json.loads(run_cli("doctor", "--json").stdout)}
    assert "`elite models tiny ./tiny --use`" in doctor["local_mapper"]["fix"]
    assert findings["global_mapper"]["detail"].startswith("hf://ELITE-library/ELITE/checkpoints/global_mapper.pt: ")


def test_an_imported_pair_wins_over_the_hub_mappers(run_cli, tiny_models, elite_home: Path):
    from elite_cli.common.config import resolve

    assert resolve(elite_home)["global_mapper"].value == "hf://ELITE-library/ELITE/checkpoints/global_mapper.pt"
    assert run_cli("models", "import", tiny_models.global_mapper, tiny_models.local_mapper).exit_code == 0
    settings = resolve(elite_home)
    assert settings["global_mapper"].value == str(elite_home / "models" / "global_mapper.safetensors")
    assert settings["local_mapper"].value == str(elite_home / "models" / "local_mapper.safetensors")
    (elite_home / "models" / "local_mapper.safetensors").unlink()  # half a pair is no pair
    assert resolve(elite_home)["local_mapper"].value == "hf://ELITE-library/ELITE/checkpoints/local_mapper.pt"
    assert resolve(elite_home)["global_mapper"].value == "hf://ELITE-library/ELITE/checkpoints/global_mapper.pt"


def test_a_missing_mapper_file_points_to_the_offline_route_too(tmp_path):
    from elite_cli.errors import ModelError
    from elite_cli.model.mappers import load_mapper_state

    with pytest.raises(ModelError, match=r"run `elite models import` .* or try elite offline with `elite models tiny ./tiny --use`"):
        load_mapper_state(tmp_path / "global_mapper.safetensors")


def test_train_takes_its_models_from_the_settings_like_every_command(run_cli, tiny_models, elite_home, tmp_path,
                                                                     monkeypatch):
    from elite_cli.training import components

    loaded = []

    def record(base_model, image_encoder):
        loaded.append((base_model, image_encoder))
        raise KeyboardInterrupt  # enough: the run stops here, before any training

    monkeypatch.setattr(components, "load_frozen_models", record)
    assert run_cli("config", "set", "base_model", tiny_models.base_model).exit_code == 0
    monkeypatch.setenv("ELITE_IMAGE_ENCODER", str(tiny_models.image_encoder))
    data = tmp_path / "data"
    data.mkdir()
    from conftest import draw_object_picture

    draw_object_picture(data / "object.png")
    result = run_cli("train", "global", "-d", data, "-o", tmp_path / "run", "--cpu", "--resolution", "64")
    assert result.exit_code == 130, result.output
    assert loaded == [(str(tiny_models.base_model), str(tiny_models.image_encoder))]


def test_models_import_converts_and_refuses_to_overwrite(run_cli, tiny_models, elite_home: Path):
    from elite_cli.model.mappers import convert_reference_checkpoint

    result = run_cli("models", "import", tiny_models.global_mapper, tiny_models.local_mapper)
    assert result.exit_code == 0, result.output
    models_dir = elite_home / "models"
    assert sorted(path.name for path in models_dir.iterdir()) == ["global_mapper.safetensors", "local_mapper.safetensors"]
    # The fingerprint printed is the one the core computes for the same checkpoint.
    expected = convert_reference_checkpoint(tiny_models.global_mapper, models_dir.parent / "check.safetensors")
    assert f"{models_dir / 'global_mapper.safetensors'}  {expected}" in result.stdout.splitlines()

    again = run_cli("models", "import", tiny_models.global_mapper, tiny_models.local_mapper)
    assert again.exit_code == 1
    assert again.stderr.startswith(f"Error: '{models_dir / 'global_mapper.safetensors'}' already exists; pass --replace")
    assert run_cli("models", "import", tiny_models.global_mapper, tiny_models.local_mapper, "--replace").exit_code == 0
    # With the default mapper paths, the imported files are what `elite models` finds.
    findings = {finding["check"]: finding["status"] for finding in json.loads(run_cli("models", "--json").stdout)}
    assert findings["global_mapper"] == findings["local_mapper"] == "ok"


def test_models_import_of_a_non_checkpoint_leaves_nothing(run_cli, tiny_models, elite_home: Path, tmp_path: Path):
    bogus = tmp_path / "global_mapper.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    result = run_cli("models", "import", bogus, tiny_models.local_mapper)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    models_dir = elite_home / "models"
    assert not models_dir.exists() or list(models_dir.iterdir()) == []


def test_a_swapped_pair_of_our_mapper_files_is_refused(run_cli, tiny_models, elite_home: Path, tmp_path: Path):
    """Both mappers have the same layout; only the role our safetensors files record tells them apart."""
    from elite_cli.errors import ModelError
    from elite_cli.model.mappers import convert_reference_checkpoint, load_mapper_state

    global_file, local_file = tmp_path / "g.safetensors", tmp_path / "l.safetensors"
    convert_reference_checkpoint(tiny_models.global_mapper, global_file, "global")
    convert_reference_checkpoint(tiny_models.local_mapper, local_file, "local")
    assert run_cli("models", "import", global_file, local_file).exit_code == 0  # the right way round

    swapped = run_cli("models", "import", local_file, global_file, "--replace")
    assert swapped.exit_code == 1
    assert swapped.stderr.startswith("Error: ") and "is a local mapper (its metadata says so), not a global one" in swapped.stderr
    # Nothing replaced: the earlier, correct import is still in place.
    imported = elite_home / "models" / "global_mapper.safetensors"
    assert load_mapper_state(imported, role="global").keys() == load_mapper_state(global_file).keys()
    with pytest.raises(ModelError, match="is a global mapper"):
        load_mapper_state(global_file, "local mapper", role="local")


def test_doctor_reports_and_passes_with_tiny_models(run_cli, use_tiny_models):
    result = run_cli("doctor", "--json")
    assert result.exit_code == 0, result.output
    findings = {finding["check"]: finding for finding in json.loads(result.stdout)}
    assert findings["python"]["status"] == "ok"
    assert findings["torch"]["detail"].startswith("2.")
    assert findings["device"]["detail"] == "cpu (setting: cpu)"
    assert findings["base_model"]["status"] == "ok"


def test_doctor_fails_with_a_fix_when_cuda_is_asked_for_but_absent(run_cli, use_tiny_models):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("--device", "cuda", "doctor", "--json")
    assert result.exit_code == 1
    findings = {finding["check"]: finding for finding in json.loads(result.stdout)}
    assert findings["device"]["status"] == "fail"
    assert "--device cpu" in findings["device"]["fix"]


def test_doctor_reports_library_problems_with_the_fix(run_cli, use_tiny_models, cat_picture, elite_home: Path):
    assert run_cli("add", cat_picture).exit_code == 0
    healthy = {finding["check"]: finding for finding in json.loads(run_cli("doctor", "--json").stdout)}
    assert healthy["library"] == {"check": "library", "status": "ok", "detail": str(elite_home), "fix": ""}
    (thumbnail,) = (elite_home / "concepts").glob("*.thumb.png")
    thumbnail.unlink()
    result = run_cli("doctor", "--json")
    assert result.exit_code == 1
    broken = {finding["check"]: finding for finding in json.loads(result.stdout)}["library"]
    assert broken["status"] == "fail" and ": 1 problem, e.g." in broken["detail"]
    assert broken["fix"] == "run `elite check --repair`"
    assert run_cli("check", "--repair").exit_code == 0
    assert run_cli("doctor").exit_code == 0


def test_doctor_fails_for_model_settings_that_point_at_the_wrong_kind_of_file(run_cli, use_tiny_models, tiny_models,
                                                                             cat_picture, tmp_path, monkeypatch):
    from elite_cli.model.mappers import convert_reference_checkpoint

    local_file = tmp_path / "l.safetensors"
    convert_reference_checkpoint(tiny_models.local_mapper, local_file, "local")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(Path(tiny_models.global_mapper).read_bytes()[:4096])
    cases = [
        ("ELITE_IMAGE_ENCODER", "image_encoder", cat_picture, f"{cat_picture} is a file, not a model folder"),
        ("ELITE_BASE_MODEL", "base_model", cat_picture, f"{cat_picture} is a file, not a model folder"),
        ("ELITE_GLOBAL_MAPPER", "global_mapper", cat_picture,
         f"{cat_picture} is neither a PyTorch checkpoint nor a safetensors file"),
        ("ELITE_GLOBAL_MAPPER", "global_mapper", tmp_path, f"{tmp_path} is a folder, not a mapper file"),
        ("ELITE_GLOBAL_MAPPER", "global_mapper", cut, f"{cut} is a damaged or truncated PyTorch checkpoint (4096 bytes)"),
        ("ELITE_GLOBAL_MAPPER", "global_mapper", local_file, f"{local_file} is a local mapper (its metadata says so), not a global one"),
    ]
    for variable, check, value, detail in cases:
        with monkeypatch.context() as patch:
            patch.setenv(variable, str(value))
            result = run_cli("doctor", "--json")
        assert result.exit_code == 1, (variable, value, result.output)
        finding = {finding["check"]: finding for finding in json.loads(result.stdout)}[check]
        assert finding["status"] == "fail" and finding["detail"] == f"{detail} [env {variable}]", finding
        assert finding["fix"]
    assert run_cli("doctor").exit_code == 0


def test_models_import_says_when_a_setting_points_elsewhere(run_cli, tiny_models, elite_home: Path):
    # After `elite models tiny --use` the config names other mapper files: the import alone changes nothing.
    assert run_cli("config", "set", "global_mapper", tiny_models.global_mapper).exit_code == 0
    result = run_cli("models", "import", tiny_models.global_mapper, tiny_models.local_mapper)
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"Note: global_mapper is set to '{tiny_models.global_mapper}' (config {elite_home / 'config.toml'}), so that "
        "file is used, not the one imported; run `elite config unset global_mapper` to use the imported one.\n"
    )
    assert run_cli("config", "unset", "global_mapper").exit_code == 0
    assert run_cli("models", "import", tiny_models.global_mapper, tiny_models.local_mapper, "--replace").stderr == ""


def test_models_import_into_a_relative_library_adds_no_note(run_cli, tiny_models, elite_home: Path, monkeypatch):
    # Relative settings are relative to the cwd: the default mapper path of ELITE_HOME=lib is the
    # imported file, not lib/lib/models/... (which gave "set to ... (default), so that file is used").
    monkeypatch.chdir(elite_home.parent)
    monkeypatch.setenv("ELITE_HOME", elite_home.name)
    result = run_cli("models", "import", tiny_models.global_mapper, tiny_models.local_mapper)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    flag = run_cli("--global-mapper", f"{elite_home.name}/models/global_mapper.safetensors", "models", "import",
                   tiny_models.global_mapper, tiny_models.local_mapper, "--replace")
    assert flag.exit_code == 0 and flag.stderr == ""


def test_models_table_heads_its_rows_as_settings(run_cli):
    header = run_cli("models").stdout.splitlines()[0].split()
    assert header[0] == "setting" and "check" not in header
    assert run_cli("doctor").stdout.splitlines()[0].split()[0] == "check"


def test_models_tiny_into_a_file_names_the_file(run_cli, tmp_path: Path):
    picture = tmp_path / "mycat.jpg"
    picture.write_bytes(b"not a folder")
    result = run_cli("models", "tiny", picture)
    assert result.exit_code == 1
    # It used to name a path inside the file: "'mycat.jpg/vocab' is not a folder".
    assert result.stderr == f"Error: '{picture}' is a file; pass a folder for the tiny models (it is created if missing).\n"


def test_doctor_with_a_broken_config_file_says_to_edit_it(run_cli, elite_home: Path):
    elite_home.mkdir(parents=True, exist_ok=True)
    for text in ('base_model = "unclosed\n', 'colour = "red"\n'):
        (elite_home / "config.toml").write_text(text)
        result = run_cli("doctor", "--json")
        assert result.exit_code == 1
        finding = {finding["check"]: finding for finding in json.loads(result.stdout)}["settings"]
        assert finding["status"] == "fail" and finding["detail"].startswith(f"config file '{elite_home / 'config.toml'}'")
        assert finding["fix"] == "edit that config file, or delete it to start from the defaults"


def test_a_missing_mapper_is_refused_before_the_other_models_load(run_cli, use_tiny_models, cat_picture, tmp_path,
                                                                   monkeypatch):
    import elite_cli.model.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the models were imported and loaded before the missing mapper was refused")

    monkeypatch.setattr(elite_cli.model.loading, "load_models", no_loading)
    monkeypatch.setenv("ELITE_LOCAL_MAPPER", str(tmp_path / "local_mapper.safetensors"))
    result = run_cli("add", cat_picture)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: local mapper '{tmp_path / 'local_mapper.safetensors'}' does not exist; ")
