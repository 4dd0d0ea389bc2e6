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
