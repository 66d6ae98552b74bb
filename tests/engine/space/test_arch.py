"""The architecture format: JSON round trip, schema errors with paths, shape rules."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

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


# ---- canonical key ------------------------------------------------------------------------------


def _net(*blocks: A.ConvBlock, pooling: A.Pooling | None = None) -> A.Architecture:
    arch = A.Architecture((8, 8, 1), 4, tuple(blocks), pooling, (A.Dense(16),))
    A.validate(arch)
    return arch


def _same_function(a: A.Architecture, b: A.Architecture) -> None:
    """Equal resources and, with the same seed, equal float outputs: a true duplicate."""
    import torch

    from searches.engine.resources.report import analyze
    from searches.engine.training.model import build_model

    ra, rb = analyze(a), analyze(b)
    assert (ra.peak_sram_bytes, ra.flash_bytes, ra.macs) == (rb.peak_sram_bytes, rb.flash_bytes, rb.macs)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    outputs = []
    for arch in (a, b):
        torch.manual_seed(0)
        outputs.append(build_model(arch).eval()(x))
    torch.testing.assert_close(outputs[0], outputs[1])


CONV = A.ConvLayer("conv2d", 3, 4, 1, "same", False, True, True)
ONE = A.ConvLayer("conv1x1", 1, 6, 1, "same", False, False, True)


def test_padding_of_a_1x1_conv_does_not_change_the_key() -> None:
    a = _net(A.ConvBlock((CONV, ONE)))
    b = _net(A.ConvBlock((CONV, replace(ONE, padding="valid"))))
    assert a.key() == b.key()
    _same_function(a, b)
    # Padding of a 3x3 conv changes the shapes: a different network.
    c = _net(A.ConvBlock((replace(CONV, padding="valid"), ONE)))
    assert c.key() != a.key()


def test_a_chain_split_into_blocks_has_the_key_of_one_block() -> None:
    a = _net(A.ConvBlock((CONV, ONE)))
    b = _net(A.ConvBlock((CONV,)), A.ConvBlock((ONE,)))
    assert a.key() == b.key()
    _same_function(a, b)
    # A branch is a different network.
    c = _net(A.ConvBlock((CONV,)), A.ConvBlock((replace(CONV, filters=4),), branch=True))
    assert c.key() != b.key()


def test_a_pool_as_large_as_the_feature_map_is_the_global_pool() -> None:
    stride2 = replace(CONV, stride=2)  # 8x8 -> 4x4 -> 2x2
    a = _net(A.ConvBlock((stride2, stride2)), pooling=A.Pooling("max", 2))
    b = _net(A.ConvBlock((stride2, stride2)), pooling=A.Pooling("max", "global"))
    assert a.key() == b.key()
    _same_function(a, b)
    assert a.key() != _net(A.ConvBlock((stride2, stride2)), pooling=A.Pooling("avg", 2)).key()
    # On a 4x4 map a 2x2 pool keeps four positions: not the global pool.
    c = _net(A.ConvBlock((stride2,)), pooling=A.Pooling("max", 2))
    assert c.key() != _net(A.ConvBlock((stride2,)), pooling=A.Pooling("max", "global")).key()


def test_avg_and_max_pool_over_a_1x1_map_are_one_network() -> None:
    stride2 = replace(CONV, stride=2)  # 8 -> 4 -> 2 -> 1
    a = _net(A.ConvBlock((stride2, stride2, stride2)), pooling=A.Pooling("max", "global"))
    b = _net(A.ConvBlock((stride2, stride2, stride2)), pooling=A.Pooling("avg", "global"))
    assert a.key() == b.key()
    _same_function(a, b)
    # No pool at all costs less (no pooled tensor): kept apart.
    assert _net(A.ConvBlock((stride2, stride2, stride2))).key() != a.key()


def test_a_kernel_larger_than_its_input_is_not_canonicalised() -> None:
    # Its outer taps only see padding, but they cost flash: a different, dominated candidate.
    stride2 = replace(CONV, stride=2)
    small = _net(A.ConvBlock((stride2, stride2, stride2)), A.ConvBlock((replace(CONV, kernel=3),)))
    big = _net(A.ConvBlock((stride2, stride2, stride2)), A.ConvBlock((replace(CONV, kernel=5),)))
    assert small.key() != big.key()


def test_every_other_field_changes_the_key() -> None:
    base = A.ConvBlock((CONV, ONE))
    variants = [
        replace(CONV, kernel=5),
        replace(CONV, filters=5),
        replace(CONV, stride=2),
        replace(CONV, pre_pool=True),
        replace(CONV, batchnorm=False),
        replace(CONV, relu=False),
        replace(CONV, op="dwconv2d", filters=None),
    ]
    keys = {_net(base).key()} | {_net(A.ConvBlock((v, ONE))).key() for v in variants}
    assert len(keys) == len(variants) + 1
