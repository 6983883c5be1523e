"""The GitHub workflows parse, call commands and files that exist, and skip cleanly without secrets."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
STACKS = ("dev", "multinode")


def workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def expand(script: str, stack: str) -> str:
    """A run script with the matrix/loop stack filled in, as the runner would see it."""
    return (script.replace("${{ matrix.stack }}", stack).replace('"$stack"', stack)
            .replace("$stack", stack))


def dynctl_parser(command: str) -> argparse.ArgumentParser:
    """The real dynctl parser (every command), without running anything."""
    from dynctl.__main__ import COMMANDS, build_parser

    assert command in COMMANDS, command
    return build_parser()


def command_lines(wf: dict) -> list[str]:
    lines = []
    for step in steps(wf):
        for line in step.get("run", "").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_workflow_files_parse_and_run_on_pull_requests():
    names = sorted(p.name for p in WORKFLOWS.glob("*.yml"))
    assert names == ["ci.yml", "preview.yml"]
    for name in names:
        wf = workflow(name)
        assert "pull_request" in wf["on"], name
        for job_name, job in wf["jobs"].items():
            assert job["runs-on"] and job["steps"], job_name
            assert job.get("timeout-minutes"), f"{name}:{job_name} has no timeout"
            for step in job["steps"]:
                assert ("run" in step) != ("uses" in step), step
                if "uses" in step:
                    # Actions pinned to a major version or a commit, never a branch.
                    assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", step["uses"]), step["uses"]


def test_every_dynctl_call_parses_with_the_real_cli():
    # preview.yml calls no dynctl today; any call it gains is checked here too.
    calls = {name: [line for line in command_lines(workflow(name)) if "-m dynctl" in line]
             for name in ("ci.yml", "preview.yml")}
    assert {shlex.split(c)[3] for c in calls["ci.yml"]} == {"render", "policy"}
    for call in calls["ci.yml"] + calls["preview.yml"]:
        for stack in STACKS:
            words = shlex.split(expand(call, stack))
            args = words[words.index("dynctl") + 1:]
            parsed = dynctl_parser(args[0]).parse_args(args)
            assert callable(parsed.func)


def test_ci_runs_the_tests_renders_both_stacks_and_checks_policy_both_ways():
    lines = command_lines(workflow("ci.yml"))
    assert "bash .ci/run" in lines
    text = "\n".join(lines)
    for stack in STACKS:
        assert f"dynctl render --stack {stack} --out rendered/{stack}" in text
    assert 'dynctl policy --stack "$stack"' in text
    assert '--manifests "rendered/$stack" --policy-config "policies/config/$stack.json"' in text
    assert "for stack in dev multinode" in text


@pytest.mark.parametrize("name", ["ci.yml", "preview.yml"])
def test_files_the_workflows_use_exist(name):
    text = (WORKFLOWS / name).read_text()
    for stack in STACKS:
        for token in re.findall(r"(?:\.ci/\w+|[\w./-]*requirements\.txt|policies/config/[^\s\"']+)",
                                expand(text, stack)):
            assert (REPO / token).exists(), token


def test_the_preview_step_uses_the_pack_and_its_per_stack_configs():
    pulumi_step = [s for s in steps(workflow("preview.yml")) if s.get("uses", "").startswith("pulumi/actions")]
    assert len(pulumi_step) == 1
    with_ = pulumi_step[0]["with"]
    assert with_["command"] == "preview" and with_["comment-on-pr"] is True
    assert (REPO / with_["policyPacks"] / "PulumiPolicy.yaml").exists()
    for stack in workflow("preview.yml")["jobs"]["preview"]["strategy"]["matrix"]["stack"]:
        assert (REPO / expand(with_["policyPackConfigs"], stack)).exists()
        assert (REPO / f"Pulumi.{stack}.yaml").exists()


def test_preview_secrets_are_documented_and_every_later_step_is_gated():
    wf = workflow("preview.yml")
    text = (WORKFLOWS / "preview.yml").read_text()
    readme = (WORKFLOWS / "README.md").read_text()
    for secret in set(re.findall(r"secrets\.(\w+)", text)) - {"GITHUB_TOKEN"}:
        assert f"`{secret}`" in readme, secret
    check, *rest = wf["jobs"]["preview"]["steps"]
    assert check["id"] == "creds"
    assert rest and all(s.get("if") == "steps.creds.outputs.enabled == 'true'" for s in rest)


def run_credentials_check(tmp_path: Path, env: dict[str, str]) -> tuple[str, str]:
    script = workflow("preview.yml")["jobs"]["preview"]["steps"][0]["run"]
    output = tmp_path / "github_output"
    output.write_text("")
    base = {"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output)}
    names = ("KUBECONFIG_DATA", "PULUMI_BACKEND_URL", "PULUMI_ACCESS_TOKEN")
    full_env = {**base, **{n: "" for n in names}, **env}  # GitHub sets missing secrets to ""
    done = subprocess.run(["bash", "-e", "-c", script], env=full_env, capture_output=True, text=True,
                          timeout=30, check=True)
    return output.read_text().strip(), done.stdout


def test_preview_skips_cleanly_without_secrets_and_runs_with_them(tmp_path):
    result, log = run_credentials_check(tmp_path, {})
    assert result == "enabled=false"
    assert "::notice" in log and "KUBECONFIG_DATA" in log
    result, _ = run_credentials_check(tmp_path, {"KUBECONFIG_DATA": "YQ==", "PULUMI_ACCESS_TOKEN": "x"})
    assert result == "enabled=true"
    result, _ = run_credentials_check(tmp_path, {"KUBECONFIG_DATA": "YQ==", "PULUMI_BACKEND_URL": "s3://b"})
    assert result == "enabled=true"
    result, log = run_credentials_check(tmp_path, {"PULUMI_BACKEND_URL": "s3://b"})
    assert result == "enabled=false" and "KUBECONFIG_DATA" in log
