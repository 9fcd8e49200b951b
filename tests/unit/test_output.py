"""Output formats render plain data like pvesh."""

import json

from pve_mirror.output import render, table


def test_json_and_pretty_agree() -> None:
    data = [{"key": "scsi0", "krbd": False, "size": None}]
    assert json.loads(render(data, "json", str)) == data
    assert json.loads(render(data, "json-pretty", str)) == data


def test_yaml_quotes_what_would_change_meaning() -> None:
    out = render({"a": "yes", "b": "10", "c": "x: y", "d": True, "e": [1, "rbd"]}, "yaml", str)
    assert out.splitlines() == [
        "---",
        'a: "yes"',
        'b: "10"',
        'c: "x: y"',
        "d: true",
        "e:",
        "  - 1",
        "  - rbd",
    ]


def test_table_aligns_columns() -> None:
    out = table([{"a": "x", "b": None}, {"a": "long", "b": True}], [("a", "A"), ("b", "B")])
    assert out.splitlines() == ["A     B", "x     -", "long  yes"]
