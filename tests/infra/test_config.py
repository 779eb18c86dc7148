"""Stack config parsing: defaults, errors naming the key, and the README documenting every key."""

from __future__ import annotations

import pytest

from neuraxis.infra.config import KEYS, ConfigError, parse_stack_config
from neuraxis.infra.images import image_problem

from .mocks import STACKS, stack_config


def test_defaults_and_overrides() -> None:
    cfg = parse_stack_config({"cloud": "local"})
    assert cfg.gpu_nodes == 1 and cfg.edge_sites == ("plant-a", "plant-b")
    assert cfg.gpu_machine == "kwok"
    cfg = parse_stack_config({"cloud": "aws", "region": "eu-west-1", "edgeSites": '["x"]',
                              "gpuNodes": "3"})  # fmt: skip
    assert (cfg.gpu_machine, cfg.edge_sites, cfg.gpu_nodes) == ("g5.xlarge", ("x",), 3)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"cloud": "azure"}, "neuraxis:cloud: must be one of"),
        ({"cloud": "aws"}, "neuraxis:region: required"),
        ({"cloud": "gcp", "region": "r"}, "neuraxis:gcpProject: required"),
        ({"cloud": "local", "gpuNodes": "two"}, "neuraxis:gpuNodes: must be an integer"),
        ({"cloud": "local", "systemNodes": "0"}, "neuraxis:systemNodes: must be >= 1"),
        ({"cloud": "local", "edgeSites": "plant-a"}, "neuraxis:edgeSites: must be a JSON list"),
        ({"cloud": "local", "edgeSites": '["Plant A"]'}, "is not a DNS label"),
        ({"cloud": "local", "edgeSites": '["a", "a"]'}, "must be unique"),
        ({"cloud": "local", "lakeBucket": "Bad_Bucket"}, "neuraxis:lakeBucket"),
        ({"cloud": "local", "image": "neuraxis:latest"}, "neuraxis:image: image 'neuraxis:latest'"),
        ({"cloud": "local", "gpuNode": "1"}, "neuraxis:gpuNode: unknown key"),
        ({"cloud": "local", "apiAccessCidrs": "10.0.0.0/8"}, "neuraxis:apiAccessCidrs: must be"),
        ({"cloud": "local", "apiAccessCidrs": '["10.0.0.1/8"]'}, "is not a CIDR"),
        ({"cloud": "local", "apiAccessCidrs": '["0.0.0.0/0"]'}, "the whole internet"),
        ({"cloud": "local", "apiAccessCidrs": '["::/0"]'}, "the whole internet"),
    ],
)
def test_bad_config_names_the_key(raw: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        parse_stack_config(raw)


@pytest.mark.parametrize("stack", ["local", "aws", "gcp"])
def test_committed_stack_files_parse(stack: str) -> None:
    raw = {
        k.split(":", 1)[1]: v for k, v in stack_config(stack).items() if k.startswith("neuraxis:")
    }
    raw.pop("lakeSecretKey", None)
    assert parse_stack_config(raw).cloud == stack


def test_readme_documents_every_key() -> None:
    readme = (STACKS / "README.md").read_text()
    assert [k for k in KEYS if f"`neuraxis:{k}`" not in readme] == []


def test_image_pinning_rule() -> None:
    assert image_problem("quay.io/a/b:v1") is None
    assert image_problem("quay.io/a/b@sha256:" + "0" * 64) is None
    assert "uses :latest" in (image_problem("quay.io/a/b:latest") or "")
    assert "no tag" in (image_problem("localhost:5000/b") or "")
