"""The architecture format: JSON round trip, schema errors with paths, shape rules."""

from __future__ import annotations

import copy
import json

import pytest

from searches.engine.space import arch as A

pytestmark = pytest.mark.engine

GOOD = {
    "format": "nasweb.arch",
    "version": 1,
    "input_shape": [8, 8, 1],
    "classes": 10,
    "conv_blocks": [
        {
            "layers": [
                {
                    "op": "conv2d",
                    "kernel": 3,
                    "filters": 8,
                    "stride": 1,
                    "padding": "same",
                    "pre_pool": False,
                    "batchnorm": True,
                    "relu": True,
                }
            ]
        },
        {"layers": [{"op": "dwconv2d", "kernel": 3, "filters": None, "stride": 2}]},
        {"branch": True, "layers": [{"op": "conv2d", "kernel": 5, "filters": 8, "stride": 2}]},
    ],
    "pooling": {"type": "avg", "size": "global"},
    "dense": [{"units": 16}],
}


def _broken(path: list[object], value: object) -> dict:
    data = copy.deepcopy(GOOD)
    target = data
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return data


def test_it_round_trips() -> None:
    arch = A.from_json(GOOD)
    assert A.from_json(json.loads(arch.dumps())) == arch
    assert arch.groups() == [[0], [1, 2]]


def test_defaults_are_filled() -> None:
    arch = A.from_json(GOOD)
    assert arch.conv_blocks[1].layers[0].padding == "same"
    assert arch.conv_blocks[1].layers[0].relu is False


@pytest.mark.parametrize(
    ("path", "value", "where", "words"),
    [
        (["version"], 2, "$.version", "1 was expected"),
        (
            ["conv_blocks", 0, "layers", 0, "kernel"],
            4,
            "$.conv_blocks[0].layers[0].kernel",
            "4 is not one of",
        ),
        (["conv_blocks", 0, "layers", 0, "filters"], 129, "$.conv_blocks[0].layers[0].filters", "129"),
        (["conv_blocks", 0, "layers", 0, "colour"], "red", "$.conv_blocks[0].layers[0]", "colour"),
        (["dense", 0, "units"], 5, "$.dense[0].units", "5"),
        (["conv_blocks", 0, "branch"], True, "$.conv_blocks[0].branch", "first block"),
        (["conv_blocks", 1, "layers", 0, "filters"], 4, "$.conv_blocks[1].layers[0].filters", "dwconv2d"),
        (["conv_blocks", 2, "layers", 0, "stride"], 1, "$.conv_blocks[2]", "does not match"),
        (["conv_blocks", 0, "layers", 0, "padding"], "valid", "$.conv_blocks[2]", None),
    ],
)
def test_errors_name_the_path(path: list[object], value: object, where: str, words: str | None) -> None:
    data = _broken(path, value)
    if words is None:  # valid padding shrinks block 0 to 6x6: its branch pair still agree
        A.from_json(data)
        return
    with pytest.raises(A.ArchitectureError) as info:
        A.from_json(data)
    assert info.value.path == where
    assert words in str(info.value)


def test_a_valid_conv_that_does_not_fit_is_rejected() -> None:
    data = _broken(
        ["conv_blocks", 0, "layers", 0],
        {"op": "conv2d", "kernel": 7, "filters": 4, "padding": "valid", "pre_pool": True},
    )
    with pytest.raises(A.ArchitectureError) as info:
        A.from_json(data)
    assert info.value.path == "$.conv_blocks[0].layers[0].kernel"
    assert "does not fit its input 4x4x1" in info.value.reason


def test_pooling_must_fit() -> None:
    with pytest.raises(A.ArchitectureError, match=r"\$\.pooling\.size: a 6x6 pool"):
        A.from_json(_broken(["pooling"], {"type": "max", "size": 6}))


def test_invalid_json_text() -> None:
    with pytest.raises(A.ArchitectureError, match="not valid JSON"):
        A.loads("{nope")


def test_load_many_names_the_item() -> None:
    text = json.dumps([GOOD, _broken(["classes"], 1)])
    with pytest.raises(A.ArchitectureError) as info:
        A.load_many(text)
    assert info.value.path == "$[1].classes"


def test_same_padding_is_tensorflow_style() -> None:
    assert A.same_padding(8, 3, 2) == (0, 1)
    assert A.same_padding(7, 3, 2) == (1, 1)
    assert A.same_padding(8, 5, 1) == (2, 2)
    assert A.conv_output_size(7, 3, 2, "same") == 4
    assert A.conv_output_size(7, 3, 2, "valid") == 3
    assert A.conv_output_size(2, 3, 1, "valid") == 0


def test_schema_file_is_the_documented_one() -> None:
    schema = A.load_schema()
    assert schema["properties"]["version"]["const"] == A.VERSION
    assert schema["properties"]["conv_blocks"]["maxItems"] == A.MAX_BLOCKS
