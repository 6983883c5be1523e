"""Typed config: defaults, validation at the edge, one clear error per bad key."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import yaml

from stacks.config import FIELDS, ConfigError, parse
from conftest import REPO


def test_defaults_reproduce_the_lab():
    cfg = parse({})
    assert cfg.topology == "dev"
    assert cfg.model_name == "Qwen/Qwen2.5-1.5B-Instruct"
    assert (cfg.frontend.replicas, cfg.workers.replicas, cfg.workers.gpus) == (1, 2, 1)
    assert cfg.frontend.service.type == "NodePort" and cfg.frontend.service.node_port == 30200
    assert cfg.frontend.router_mode == "kv" and cfg.frontend.migration_limit == 3
    assert cfg.discovery == "kubernetes" and not cfg.nats.enabled and not cfg.etcd.enabled
    assert cfg.dynamo.version == "1.6.1" and cfg.dynamo.api_version == "nvidia.com/v1beta1"
    assert cfg.dynamo.image == "nvcr.io/nvidia/ai-dynamo/vllm-runtime:1.6.1"
    assert cfg.workers.total_gpus == 2


@pytest.mark.parametrize("version, api", [("0.8.0", "nvidia.com/v1alpha1"), ("1.1.0", "nvidia.com/v1alpha1"),
                                          ("1.2.0", "nvidia.com/v1beta1"), ("1.6.1", "nvidia.com/v1beta1")])
def test_version_selects_the_graph_api(version, api):
    assert parse({"dynamo": {"version": version}}).dynamo.api_version == api


def test_values_from_cli_strings_are_typed():
    cfg = parse({"workers": {"replicas": "4", "gpus": 2, "nodeCount": "2"}, "modelCache": {"accessMode": "ReadWriteMany"},
                 "nats": {"enabled": "true"}})
    assert cfg.workers.replicas == 4 and cfg.workers.tensor_parallel_size == 4 and cfg.workers.total_gpus == 16
    assert cfg.nats.enabled is True


@dataclass
class Bad:
    raw: dict
    key: str
    allowed: str


BAD = [
    Bad({"frontend": {"routerMode": "fastest"}}, "frontend.routerMode", "kv, round-robin, random"),
    Bad({"discovery": "consul"}, "discovery", "kubernetes, etcd"),
    Bad({"frontend": {"service": {"type": "Ingress"}}}, "frontend.service.type", "NodePort, LoadBalancer, ClusterIP"),
    Bad({"frontend": {"service": {"nodePort": 80}}}, "frontend.service.nodePort", "30000 to 32767"),
    Bad({"workers": {"replicas": 0}}, "workers.replicas", "from 1"),
    Bad({"workers": {"gpus": "two"}}, "workers.gpus", "integer"),
    Bad({"dynamo": {"version": "0.7.2"}}, "dynamo.version", "0.8.0"),
    Bad({"dynamo": {"version": "latest"}}, "dynamo.version", "1.6.1"),
    Bad({"namespace": "Dynamo_NS"}, "namespace", "DNS-1123"),
    Bad({"nats": {"enabled": "yes please"}}, "nats.enabled", "true, false"),
    Bad({"discovery": "etcd"}, "discovery", "etcd.enabled=true"),
    Bad({"frontend": {"replica": 2}}, "frontend.replica", "frontend.replicas"),
    Bad({"wrokers": {"replicas": 2}}, "wrokers.replicas", "known sections"),
    Bad({"workers": {"nodeCount": 2}}, "modelCache.accessMode", "ReadWriteMany"),
    Bad({"topology": "multinode"}, "modelCache.accessMode", "ReadWriteMany"),
    Bad({"networkPolicy": {"apiServerCidrs": "kubernetes.default"}}, "networkPolicy.apiServerCidrs", "CIDRs"),
    Bad({"modelCache": {"hostPath": "cache"}}, "modelCache.hostPath", "absolute"),
]


@pytest.mark.parametrize("case", BAD, ids=[b.key + "=" + str(b.raw) for b in BAD])
def test_bad_config_names_the_key_and_what_is_allowed(case):
    with pytest.raises(ConfigError) as error:
        parse(case.raw)
    message = str(error.value)
    assert message.startswith(case.key + ":"), message
    assert case.allowed in message, message


def test_pulumi_yaml_documents_every_key_with_type_and_default():
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["name"] == "dynamo-distributed"
    assert project["runtime"]["name"] == "python" and project["runtime"]["options"]["virtualenv"] == ".venv"
    text = "\n".join(str(v.get("description", "")) for v in project["config"].values())
    for field in FIELDS:
        kind = {str: "string", int: "integer", bool: "boolean"}[field.kind]
        default = ("true" if field.default else "false") if field.kind is bool else (
            f'"{field.default}"' if field.kind is str else str(field.default))
        assert re.search(re.escape(f"{field.key} ({kind}, default {default})"), text), field.key


def test_stack_files_only_use_known_keys():
    for stack in ("dev", "multinode"):
        raw = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]
        values = {k.split(":", 1)[1]: v for k, v in raw.items()}
        assert parse(values).topology == stack
