"""PLY point files: the vertex element as named columns (CO3D point clouds, 3D Gaussian splats).

Reads ASCII and binary (little/big endian) PLY files whose vertex properties are scalars;
writes binary little endian. Elements after the vertices (faces, ...) are ignored when reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# PLY scalar type names (both spellings) -> numpy kinds.
_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
          "f4": "float", "f8": "double"}  # fmt: skip
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": None}


def _read_header(stream, path: Path) -> tuple[str, int, list[tuple[str, str]]]:
    """Parse the header: (format, vertex count, [(property, numpy kind)]) of the vertex element."""
    if stream.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic line)")
    fmt, count, properties, element = None, None, [], None
    for raw in iter(stream.readline, b""):
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            element = words[1]
            if element == "vertex":
                count = int(words[2])
            elif count is None:
                raise ValueError(f"{path}: element '{element}' before 'vertex' is not supported")
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list":
                raise ValueError(f"{path}: list property '{words[-1]}' in vertex is not supported")
            if words[1] not in _TYPES:
                raise ValueError(f"{path}: unknown property type '{words[1]}' of '{words[2]}'")
            properties.append((words[2], _TYPES[words[1]]))
    else:
        raise ValueError(f"{path}: PLY header has no end_header")
    if fmt not in _FORMATS:
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    if count is None:
        raise ValueError(f"{path}: PLY file has no vertex element")
    return fmt, count, properties


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """The vertex properties of a PLY file, one array (V,) per property, in file order."""
    path = Path(path)
    with path.open("rb") as stream:
        fmt, count, properties = _read_header(stream, path)
        byte_order = _FORMATS[fmt]
        if byte_order is None:  # ascii
            rows = [stream.readline().split() for _ in range(count)]
            if any(len(row) < len(properties) for row in rows):
                raise ValueError(f"{path}: truncated ASCII vertex data")
            table = np.array(rows, dtype=np.float64).reshape(count, -1)
            return {n: table[:, i].astype(k) for i, (n, k) in enumerate(properties)}
        dtype = np.dtype([(name, byte_order + kind) for name, kind in properties])
        data = stream.read(dtype.itemsize * count)
    if len(data) < dtype.itemsize * count:
        raise ValueError(f"{path}: truncated PLY: expected {count} vertices")
    records = np.frombuffer(data, dtype=dtype, count=count)
    return {
        name: records[name].astype(records[name].dtype.newbyteorder("=")) for name, _ in properties
    }


def write_ply(path: str | Path, vertices: dict[str, np.ndarray]) -> None:
    """Write named columns (each (V,)) as the vertex element of a binary little-endian PLY."""
    columns = {name: np.asarray(values) for name, values in vertices.items()}
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"PLY columns differ in length: {sorted(lengths)}")
    dtype = np.dtype([(name, "<" + values.dtype.str[1:]) for name, values in columns.items()])
    unknown = [n for n, v in columns.items() if v.dtype.str[1:] not in _NAMES]
    if unknown:
        raise ValueError(f"PLY cannot store the dtypes of {unknown}")
    records = np.empty(lengths.pop(), dtype=dtype)
    for name, values in columns.items():
        records[name] = values
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(records)}"]
    header += [f"property {_NAMES[v.dtype.str[1:]]} {n}" for n, v in columns.items()]
    header += ["end_header"]
    with Path(path).open("wb") as stream:
        stream.write(("\n".join(header) + "\n").encode("ascii"))
        stream.write(records.tobytes())
