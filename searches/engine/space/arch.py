"""The candidate architecture: μNAS's CNN search space as typed values and versioned JSON.

A candidate is an input shape, up to ten conv blocks, optional pooling, up to three
hidden dense layers and a classifier.  A block marked ``branch`` runs in parallel with
the block before it on that block's input; a run of such blocks is a *group* whose
outputs are merged by an element-wise Add, so every member must produce the same shape.

Shapes are ``(height, width, channels)``.  Padding ``same`` follows the TensorFlow
convention (output = ceil(input / stride), the extra pad row/column goes bottom/right)
so that the float model, the int8 reference and the generated C agree.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

FORMAT = "nasweb.arch"
VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "arch.schema.json"

OpName = Literal["conv2d", "conv1x1", "dwconv2d"]
OPS: tuple[str, ...] = ("conv2d", "conv1x1", "dwconv2d")
KERNELS: tuple[int, ...] = (3, 5, 7)
MIN_FILTERS, MAX_FILTERS = 1, 128
MIN_BLOCKS, MAX_BLOCKS = 1, 10
MIN_LAYERS, MAX_LAYERS = 1, 3
POOL_SIZES: tuple[int, ...] = (2, 4, 6)
MAX_DENSE = 3
MIN_UNITS, MAX_UNITS = 10, 256

Shape = tuple[int, int, int]


class ArchitectureError(ValueError):
    """An architecture that breaks the format or the search space; ``path`` locates the fault."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ConvLayer:
    op: OpName = "conv2d"
    kernel: int = 3
    filters: int | None = 8
    stride: int = 1
    padding: Literal["same", "valid"] = "same"
    pre_pool: bool = False
    batchnorm: bool = True
    relu: bool = True

    def out_channels(self, in_channels: int) -> int:
        return in_channels if self.op == "dwconv2d" else int(self.filters or 0)


@dataclass(frozen=True)
class ConvBlock:
    layers: tuple[ConvLayer, ...]
    branch: bool = False


@dataclass(frozen=True)
class Pooling:
    type: Literal["avg", "max"] = "avg"
    size: int | Literal["global"] = 2


@dataclass(frozen=True)
class Dense:
    units: int


@dataclass(frozen=True)
class Architecture:
    input_shape: Shape
    classes: int
    conv_blocks: tuple[ConvBlock, ...]
    pooling: Pooling | None = None
    dense: tuple[Dense, ...] = field(default=())

    # ---- structure -----------------------------------------------------------------

    def groups(self) -> list[list[int]]:
        """Block indices grouped into parallel groups (a block followed by its branch blocks)."""
        groups: list[list[int]] = []
        for i, block in enumerate(self.conv_blocks):
            if block.branch and groups:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def with_blocks(self, blocks: list[ConvBlock] | tuple[ConvBlock, ...]) -> Architecture:
        return replace(self, conv_blocks=tuple(blocks))

    # ---- JSON ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "conv_blocks": [
                {"branch": b.branch, "layers": [_layer_json(layer) for layer in b.layers]}
                for b in self.conv_blocks
            ],
            "pooling": None
            if self.pooling is None
            else {"type": self.pooling.type, "size": self.pooling.size},
            "dense": [{"units": d.units} for d in self.dense],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=False)

    def key(self) -> str:
        """A canonical string shared by architectures that compute the same function at the same cost.

        Two architectures get one key when they differ only in fields that change neither the
        network's function nor its resources (see :func:`canonical_json`), so de-duplication
        never trains the same network twice.
        """
        return json.dumps(canonical_json(self), sort_keys=True, separators=(",", ":"))


def _layer_json(layer: ConvLayer) -> dict[str, Any]:
    return {
        "op": layer.op,
        "kernel": layer.kernel,
        "filters": layer.filters,
        "stride": layer.stride,
        "padding": layer.padding,
        "pre_pool": layer.pre_pool,
        "batchnorm": layer.batchnorm,
        "relu": layer.relu,
    }


# ---- canonical form ---------------------------------------------------------------------


def canonical_json(arch: Architecture) -> dict[str, Any]:
    """The architecture with every no-op field normalised, as JSON (not a valid architecture).

    Normalised, because they change neither the computed function nor any resource number:

    * the padding of a 1x1 stride-1 conv ('same' pads nothing there, so it equals 'valid');
    * where blocks split a sequential chain: consecutive non-parallel blocks form one chain
      of layers (the op graph, the model and its parameter order are the same);
    * a k x k pool over a feature map of exactly k x k is the global pool (same window);
    * avg vs max of a pool over a 1x1 feature map (both are the identity).

    Deliberately *not* normalised: a kernel larger than its input under 'same' padding (the
    outer taps only ever see padding, but they cost flash: the clipped kernel is a cheaper,
    different candidate); no pooling vs a pool over a 1x1 map (the pool costs a tensor and
    MACs); the order of parallel blocks (Add commutes, but the execution order, memory plan
    and initialisation order follow it).
    """
    chain: list[Any] = []
    for group in arch.groups():
        if len(group) == 1:
            chain.extend(_canonical_layer(layer) for layer in arch.conv_blocks[group[0]].layers)
        else:
            chain.append(
                {"parallel": [[_canonical_layer(x) for x in arch.conv_blocks[b].layers] for b in group]}
            )
    return {
        "input_shape": list(arch.input_shape),
        "classes": arch.classes,
        "chain": chain,
        "pooling": _canonical_pooling(arch),
        "dense": [d.units for d in arch.dense],
    }


def _canonical_layer(layer: ConvLayer) -> dict[str, Any]:
    data = _layer_json(layer)
    if layer.kernel == 1 and layer.stride == 1:
        data["padding"] = "same"  # both paddings add nothing around a 1x1 stride-1 window
    return data


def _canonical_pooling(arch: Architecture) -> dict[str, Any] | None:
    pool = arch.pooling
    if pool is None:
        return None
    try:
        h, w, _ = validate(arch)[arch.groups()[-1][0]]
    except ArchitectureError:
        return {"type": pool.type, "size": pool.size}  # invalid: keep it as written
    size = pool.size
    if size == "global" or (h == size and w == size):
        size = "global"
    kind = "avg" if (size == "global" and h == 1 and w == 1) else pool.type
    return {"type": kind, "size": size}


# ---- shape arithmetic ------------------------------------------------------------------


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Spatial output size of a convolution (0 when a valid conv does not fit)."""
    if padding == "same":
        return math.ceil(size / stride)
    return 0 if size < kernel else (size - kernel) // stride + 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def layer_output_shape(layer: ConvLayer, shape: Shape) -> tuple[Shape | None, Shape]:
    """(shape after the optional pre-pool, shape after the conv); a collapsed dim is 0."""
    h, w, c = shape
    pooled: Shape | None = None
    if layer.pre_pool:
        h, w = h // 2, w // 2
        pooled = (h, w, c)
    ho = conv_output_size(h, layer.kernel, layer.stride, layer.padding)
    wo = conv_output_size(w, layer.kernel, layer.stride, layer.padding)
    return pooled, (ho, wo, layer.out_channels(c))


# ---- loading and validation ----------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


@functools.lru_cache(maxsize=1)
def _schema_validator() -> Any:
    import jsonschema  # local: only loading from JSON needs it

    return jsonschema.Draft202012Validator(load_schema())


def from_json(data: Any) -> Architecture:
    """Parse and fully validate a JSON architecture; raise ArchitectureError naming the path."""
    _check_schema(data)
    arch = Architecture(
        input_shape=tuple(data["input_shape"]),
        classes=data["classes"],
        conv_blocks=tuple(
            ConvBlock(
                layers=tuple(_layer_from_json(layer) for layer in block["layers"]),
                branch=block.get("branch", False),
            )
            for block in data["conv_blocks"]
        ),
        pooling=None if data.get("pooling") is None else Pooling(**data["pooling"]),
        dense=tuple(Dense(d["units"]) for d in data.get("dense", [])),
    )
    validate(arch)
    return arch


def loads(text: str) -> Architecture:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchitectureError(
            "$", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    return from_json(data)


def load_many(text: str) -> list[Architecture]:
    """Parse a file holding one architecture object or a JSON list of them."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchitectureError(
            "$", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    if isinstance(data, list):
        archs = []
        for i, item in enumerate(data):
            try:
                archs.append(from_json(item))
            except ArchitectureError as exc:
                raise ArchitectureError(f"$[{i}]" + exc.path[1:], exc.reason) from exc
        return archs
    return [from_json(data)]


def _layer_from_json(data: dict[str, Any]) -> ConvLayer:
    op = data["op"]
    return ConvLayer(
        op=op,
        kernel=data.get("kernel", 1 if op == "conv1x1" else 3),
        filters=data.get("filters"),
        stride=data.get("stride", 1),
        padding=data.get("padding", "same"),
        pre_pool=data.get("pre_pool", False),
        batchnorm=data.get("batchnorm", False),
        relu=data.get("relu", False),
    )


def _check_schema(data: Any) -> None:
    errors = sorted(
        _schema_validator().iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.path)))
    )
    if errors:
        err = errors[0]
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        raise ArchitectureError(path, err.message)


def validate(arch: Architecture) -> list[Shape]:
    """Check the search-space rules and shapes; return each block's output shape."""
    _validate_ranges(arch)
    return _validate_shapes(arch)


def _validate_ranges(arch: Architecture) -> None:
    if len(arch.input_shape) != 3 or min(arch.input_shape) < 1:
        raise ArchitectureError("$.input_shape", "must be [height, width, channels] with every value >= 1")
    if arch.classes < 2:
        raise ArchitectureError("$.classes", "needs at least 2 classes")
    if not MIN_BLOCKS <= len(arch.conv_blocks) <= MAX_BLOCKS:
        raise ArchitectureError("$.conv_blocks", f"needs {MIN_BLOCKS}..{MAX_BLOCKS} blocks")
    if arch.conv_blocks[0].branch:
        raise ArchitectureError("$.conv_blocks[0].branch", "the first block cannot be a branch")
    for b, block in enumerate(arch.conv_blocks):
        if not MIN_LAYERS <= len(block.layers) <= MAX_LAYERS:
            raise ArchitectureError(f"$.conv_blocks[{b}].layers", f"needs {MIN_LAYERS}..{MAX_LAYERS} layers")
        for i, layer in enumerate(block.layers):
            _validate_layer(layer, f"$.conv_blocks[{b}].layers[{i}]")
    if arch.pooling is not None:
        p = arch.pooling
        if p.type not in ("avg", "max"):
            raise ArchitectureError("$.pooling.type", "must be 'avg' or 'max'")
        if p.size != "global" and p.size not in POOL_SIZES:
            raise ArchitectureError("$.pooling.size", f"must be one of {POOL_SIZES} or 'global'")
    if len(arch.dense) > MAX_DENSE:
        raise ArchitectureError("$.dense", f"at most {MAX_DENSE} hidden dense layers")
    for i, d in enumerate(arch.dense):
        if not MIN_UNITS <= d.units <= MAX_UNITS:
            raise ArchitectureError(f"$.dense[{i}].units", f"must be in {MIN_UNITS}..{MAX_UNITS}")


def _validate_layer(layer: ConvLayer, path: str) -> None:
    if layer.op not in OPS:
        raise ArchitectureError(f"{path}.op", f"must be one of {OPS}")
    if layer.op == "conv1x1":
        if layer.kernel != 1:
            raise ArchitectureError(f"{path}.kernel", "a conv1x1 layer has kernel 1")
        if layer.stride != 1:
            raise ArchitectureError(f"{path}.stride", "a conv1x1 layer has stride 1")
    elif layer.kernel not in KERNELS:
        raise ArchitectureError(f"{path}.kernel", f"must be one of {KERNELS}")
    if layer.op == "dwconv2d":
        if layer.filters is not None:
            raise ArchitectureError(f"{path}.filters", "a dwconv2d layer keeps its input channels: use null")
    elif layer.filters is None or not MIN_FILTERS <= layer.filters <= MAX_FILTERS:
        raise ArchitectureError(f"{path}.filters", f"must be in {MIN_FILTERS}..{MAX_FILTERS}")
    if layer.stride not in (1, 2):
        raise ArchitectureError(f"{path}.stride", "must be 1 or 2")
    if layer.padding not in ("same", "valid"):
        raise ArchitectureError(f"{path}.padding", "must be 'same' or 'valid'")


def block_output_shape(arch: Architecture, b: int, shape: Shape) -> Shape:
    """Run block ``b`` on ``shape``; raise ArchitectureError if it collapses spatially."""
    for i, layer in enumerate(arch.conv_blocks[b].layers):
        path = f"$.conv_blocks[{b}].layers[{i}]"
        if layer.pre_pool and min(shape[0], shape[1]) < 2:
            raise ArchitectureError(
                f"{path}.pre_pool", f"input {_fmt(shape)} is too small for a 2x2 pre-pool"
            )
        pooled, out = layer_output_shape(layer, shape)
        if min(out[0], out[1]) < 1:
            conv_in = pooled or shape
            raise ArchitectureError(
                f"{path}.kernel",
                f"a valid {layer.kernel}x{layer.kernel} conv does not fit its input {_fmt(conv_in)}",
            )
        shape = out
    return shape


def _validate_shapes(arch: Architecture) -> list[Shape]:
    shape: Shape = tuple(arch.input_shape)  # type: ignore[assignment]
    outputs: list[Shape] = [(0, 0, 0)] * len(arch.conv_blocks)
    for group in arch.groups():
        group_out = None
        for b in group:
            out = block_output_shape(arch, b, shape)
            if group_out is None:
                group_out = out
            elif out != group_out:
                raise ArchitectureError(
                    f"$.conv_blocks[{b}]",
                    f"branch output {_fmt(out)} does not match the parallel block's output {_fmt(group_out)}",
                )
            outputs[b] = out
        assert group_out is not None
        shape = group_out
    if arch.pooling is not None and arch.pooling.size != "global":
        size = arch.pooling.size
        if min(shape[0], shape[1]) < size:
            raise ArchitectureError(
                "$.pooling.size", f"a {size}x{size} pool does not fit the feature map {_fmt(shape)}"
            )
    return outputs


def feature_shape(arch: Architecture) -> Shape:
    """Shape entering the dense layers (after pooling)."""
    shape = validate(arch)[arch.groups()[-1][0]]
    if arch.pooling is None:
        return shape
    if arch.pooling.size == "global":
        return (1, 1, shape[2])
    s = arch.pooling.size
    return (shape[0] // s, shape[1] // s, shape[2])


def _fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)
