"""The global options every command shares."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu", "list"], "Error: --device 'tpu' is not one of auto, cpu, cuda, mps or cuda:N."),
    (["--dtype", "float64", "list"], "Error: --dtype 'float64' is not one of auto, float32, float16, bfloat16."),
])
def test_a_bad_device_or_dtype_is_refused_by_every_command(run_cli, elite_home, args, message):
    result = run_cli(*args)
    assert result.exit_code == 1 and result.stderr.strip() == message and result.stdout == ""


def test_a_numbered_gpu_is_a_valid_device_for_commands_that_need_none(run_cli, elite_home):
    assert run_cli("--device", "cuda:1", "list").exit_code == 0


def test_doctor_reports_a_bad_setting_as_a_failed_check_and_checks_the_rest(run_cli, elite_home, monkeypatch):
    import json

    monkeypatch.setenv("ELITE_DEVICE", "tpu")
    result = run_cli("doctor", "--json")
    assert result.exit_code == 1
    findings = {finding["check"]: finding for finding in json.loads(result.stdout)}
    assert findings["settings"]["status"] == "fail" and "device 'tpu' (from env ELITE_DEVICE)" in findings["settings"]["detail"]
    assert findings["python"]["status"] == "ok" and "library" in findings


@pytest.mark.parametrize("args, message", [
    (["history", "--limit", "-1"], "Invalid value for '--limit' / '-l': -1 is not a number of runs; pass a positive number, or 0 for every run."),
    (["gen", "<mycat>", "--gpus", "foo"], "Invalid value for '--gpus': 'foo' is not 'all' or a positive number of GPUs"),
    (["gen", "<mycat>", "--gpus", "0"], "Invalid value for '--gpus': '0' is not 'all' or a positive number of GPUs"),
])
def test_bad_limit_and_gpus_are_usage_errors_that_say_what_is_accepted(run_cli, elite_home, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "elite-out").exists()
