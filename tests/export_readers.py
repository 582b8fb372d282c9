"""Readers for exported files, written apart from the exporters (tests of exports and of the service)."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np


def parse_bvh(text: str) -> dict[str, Any]:
    """A minimal BVH reader: joints (name, parent, offset, channels), then the motion table."""
    tokens = text.split()
    i = 0
    joints: list[dict[str, Any]] = []
    stack: list[int] = []
    assert tokens[0] == "HIERARCHY"
    i = 1
    while tokens[i] != "MOTION":
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            joints.append({"name": tokens[i + 1], "parent": stack[-1] if stack else -1, "channels": [], "end": None})
            stack.append(len(joints) - 1)
            i += 2
        elif tok == "End":
            assert tokens[i + 1] == "Site" and tokens[i + 2] == "{" and tokens[i + 3] == "OFFSET"
            joints[stack[-1]]["end"] = [float(v) for v in tokens[i + 4 : i + 7]]
            assert tokens[i + 7] == "}"
            i += 8
        elif tok == "OFFSET":
            joints[stack[-1]]["offset"] = np.array([float(v) for v in tokens[i + 1 : i + 4]])
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            joints[stack[-1]]["channels"] = tokens[i + 2 : i + 2 + n]
            i += 2 + n
        elif tok == "{":
            i += 1
        elif tok == "}":
            stack.pop()
            i += 1
        else:
            raise AssertionError(f"unexpected BVH token {tok!r}")
    assert tokens[i + 1] == "Frames:" and tokens[i + 3] == "Frame" and tokens[i + 4] == "Time:"
    frames, frame_time = int(tokens[i + 2]), float(tokens[i + 5])
    values = np.array([float(v) for v in tokens[i + 6 :]])
    width = sum(len(j["channels"]) for j in joints)
    assert values.size == frames * width, (values.size, frames, width)
    return {"joints": joints, "frame_time": frame_time, "motion": values.reshape(frames, width)}


def parse_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942
    return doc, data[28 + json_len : 28 + json_len + bin_len]


# The Khronos validator's npm releases are all 2.0.0-dev.* prereleases, which a range would not match.
GLTF_VALIDATOR = "gltf-validator@2.0.0-dev.3.10"

VALIDATE_JS = """
const fs = require('fs');
const validator = require('gltf-validator');
validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))
  .then((report) => { process.stdout.write(JSON.stringify(report.issues)); })
  .catch((err) => { process.stderr.write(String(err)); process.exit(1); });
"""


def validate_glb(validator: tuple[str, Path, dict[str, str]], path: Path) -> dict[str, Any]:
    node, script, env = validator
    out = subprocess.run([node, str(script), str(path)], capture_output=True, text=True, env=env, timeout=120, check=True)
    return json.loads(out.stdout)


def rle_counts(text: str) -> list[int]:
    """COCO's compressed RLE text back to run lengths (pycocotools' ``rleFrString``)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_mask(rle: dict[str, Any]) -> np.ndarray:
    """A COCO RLE (``size`` [H, W], compressed ``counts``) as an (H, W) uint8 mask."""
    height, width = rle["size"]
    flat = np.zeros(height * width, np.uint8)
    pos, value = 0, 0
    for run in rle_counts(rle["counts"]):
        flat[pos : pos + run] = value
        pos, value = pos + run, 1 - value
    assert pos == height * width, (pos, height, width)
    return flat.reshape(width, height).T  # column-major runs


def phalp_schema(markdown: str) -> dict[str, dict[str, Any]]:
    """The PHALP pickle's schema table of docs/exports.md: key -> per, type, dtype, shape."""
    lines = markdown.split("### Schema", 1)[1].splitlines()
    rows: dict[str, dict[str, Any]] = {}
    for line in lines:
        if not line.startswith("| `"):
            if rows and not line.strip():
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key, per, kind, dtype, shape = cells[0].strip("`"), cells[1], cells[2], cells[3], cells[4]
        rows[key] = {
            "per": per,
            "type": kind,
            "dtype": None if dtype == "-" else dtype,
            "shape": None if shape == "-" else tuple(int(v) for v in shape.strip("()").split(",") if v.strip()),
        }
    return rows
