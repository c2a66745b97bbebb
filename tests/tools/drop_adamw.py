#!/usr/bin/env python3
"""Rewrites train_reference.safetensors files without their adamw1.* tensors (the weights after
one AdamW step). The variant fixtures, and the base fixtures but llama2, qwen3 and gemma2 (as they
came), keep only the loss and the gradients: AdamW is elementwise, and those three test it. This halves what each adds to the
repository, which a GPU run's tree (tracked files and binaries) must keep under 64 MiB.
    python3 tests/tools/drop_adamw.py FILE...
Plain Python (no torch, no safetensors package): the format is an 8-byte header length, a JSON
header of name -> {dtype, shape, data_offsets}, then the data."""
import json, os, struct, sys

for path in sys.argv[1:]:
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    out_header, chunks, at = {}, [], 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name.startswith("adamw1."):
            continue
        b, e = info["data_offsets"]
        chunks.append(data[b:e])
        out_header[name] = dict(info, data_offsets=[at, at + (e - b)])
        at += e - b
    if meta is not None:
        out_header["__metadata__"] = meta
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    os.replace(tmp, path)
    print(path, len(raw), "->", os.path.getsize(path))
