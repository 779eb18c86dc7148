"""The Monitoring component's alert rules through the real promtool: `check rules` (syntax,
expressions, templates) and `test rules` (unit tests with input series in
tests/infra/prometheus/rules_test.yaml: when each alert fires and with which labels)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from neuraxis.dev.prometheus import rule_file
from neuraxis.dev.toolchain import tool_path
from neuraxis.infra.monitoring import alert_rules

HERE = Path(__file__).parent / "prometheus"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_path("promtool")), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(rule_file(alert_rules("monitoring")["spec"]["groups"]))
    shutil.copy(HERE / "rules_test.yaml", tmp_path / "rules_test.yaml")
    return tmp_path


def test_promtool_checks_the_generated_rules(rules_dir: Path) -> None:
    done = promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout + done.stderr


def test_promtool_unit_tests_of_the_alerts(rules_dir: Path) -> None:
    done = promtool("test", "rules", "rules_test.yaml", cwd=rules_dir)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_catches_a_broken_rule(rules_dir: Path) -> None:
    # The checks can fail: a rule with a bad expression is refused.
    groups = alert_rules("monitoring")["spec"]["groups"]
    groups[0]["rules"][0]["expr"] = "sum by (kind) (rate(neuraxis_reconcile_errors_total[10m]"
    (rules_dir / "rules.yaml").write_text(rule_file(groups))
    done = promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert done.returncode != 0
    assert "NeuraxisReconcileErrors" in done.stdout + done.stderr or "parse" in done.stderr
