"""`microblob index ls|add|rm` and `microblob query --explain`, run as a user runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_cli import Cli, InProcessCli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return InProcessCli([sys.executable, "-m", "microblob"], tmp_path)


def test_index_add_ls_explain_rm(cli: Cli) -> None:
    for exposure in (5, 12, 40):
        cli.put(b"frame", "--type", "image", "--meta", f"exposure_ms={exposure}")
    assert cli.ok("index", "add", "custom_metadata.exposure_ms") == "custom_metadata.exposure_ms_1\n"
    assert cli.ok("index", "add", "type,-custom_metadata.exposure_ms", "--name", "by_type") == "by_type\n"
    listed = [json.loads(line) for line in cli.ok("index", "ls").splitlines()]
    assert {"name": "by_type", "key": [["type", 1], ["custom_metadata.exposure_ms", -1]], "unique": False} in listed
    assert cli.ok("index").splitlines() == cli.ok("index", "ls").splitlines()  # ls is the default action
    plan = json.loads(cli.ok("query", '{"custom_metadata.exposure_ms": {"$gt": 10}}', "--explain"))
    assert plan["plan"] == "IXSCAN" and plan["index"] == "custom_metadata.exposure_ms_1", plan
    found = [json.loads(line) for line in cli.ok("query", '{"custom_metadata.exposure_ms": {"$gt": 10}}').splitlines()]
    assert sorted(d["custom_metadata"]["exposure_ms"] for d in found) == [12, 40]
    cli.ok("index", "rm", "custom_metadata.exposure_ms_1")
    assert "custom_metadata.exposure_ms_1" not in cli.ok("index", "ls")
    newest = json.loads(cli.ok("query", "{}", "--sort=-updated_at", "--limit", "1", "--explain"))
    assert newest["index"] == "updated_at_1" and newest["direction"] == "backward"


def test_index_bad_input_names_the_problem(cli: Cli) -> None:
    cli.put(b"x")
    before = cli.ok("index", "ls")
    assert "not a field path" in cli.fails(1, "index", "add", "a.$b")
    assert "no index named 'nope'" in cli.fails(1, "index", "rm", "nope")
    assert "has these keys already" in cli.fails(1, "index", "add", "type", "--name", "again")
    assert "collection must be one of" in cli.fails(1, "index", "ls", "--collection", "nope")
    # argv's undecodable byte arrives as a lone surrogate: one line, not msgpack's UnicodeEncodeError
    assert "UTF-8" in cli.fails(1, "index", "add", "type", "--name", "\udcff")
    assert cli.ok("index", "ls") == before
