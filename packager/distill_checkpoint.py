"""Writing the distilled student: the student's checkpoint layout, dtypes and side files.

transformers loads a checkpoint into its own in-memory layout (fused expert tensors, for some
families) and `save_pretrained` writes the on-disk layout back, so the healed weights keep the
student's tensor names. What transformers would change besides the weights (config, generation
config, dtype) is taken from the student instead, and the result is checked tensor by tensor.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from packager.distill_train import DistillError

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_TORCH_DTYPES = ("F32", "F16", "BF16")


def _torch_dtype(name: str) -> Any:
    import torch

    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]


def write_checkpoint(model: Any, student_dir: Path, stage: Path) -> None:
    """Weights through transformers (which writes the family's on-disk tensor layout back), in
    the student's dtypes; config, tokenizer and every other side file copied from the student.
    The result must list exactly the student's tensors, names, shapes and dtypes."""
    expected = tensor_specs(student_dir)
    main = Counter(d for d, _ in expected.values()).most_common(1)[0][0]
    if main in _TORCH_DTYPES:
        model.to(_torch_dtype(main))
    model.save_pretrained(stage)
    for p in stage.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors") and p.name not in _WEIGHT_FILES:
            p.unlink()  # transformers' config and generation config: the student's are used
    for p in Path(student_dir).iterdir():
        if p.is_file() and not p.name.endswith(".safetensors") and p.name not in _WEIGHT_FILES:
            shutil.copyfile(p, stage / p.name)
    _match_dtypes(stage, expected)
    written = tensor_specs(stage)
    if written != expected:
        diff = sorted(set(written.items()) ^ set(expected.items()))[:3]
        raise DistillError(f"{stage}: the distilled weights do not match the student's tensors "
                           f"(name, (dtype, shape)) e.g. {diff}")


def _match_dtypes(stage: Path, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Recast the tensors not in the checkpoint's main dtype (F32 norms beside BF16 matrices),
    rewriting only the shards that hold one, one shard at a time."""
    from safetensors.torch import load_file, save_file

    for f in sorted(stage.glob("*.safetensors")):
        header = _header(f)
        wrong = {n: expected[n][0] for n, v in header.items() if n in expected
                 and v["dtype"] != expected[n][0] and expected[n][0] in _TORCH_DTYPES}
        if not wrong:
            continue
        tensors = load_file(f)
        for n, dtype in wrong.items():
            tensors[n] = tensors[n].to(_torch_dtype(dtype))
        tmp = f.with_name(f.name + ".tmp")
        save_file(tensors, tmp, metadata=header.get("__metadata__"))
        os.replace(tmp, f)
    index = stage / "model.safetensors.index.json"
    data = json.loads(index.read_text()) if index.is_file() else {}
    if "total_size" in data.get("metadata", {}):  # counts bytes, which a recast changed
        total = 0
        for f in stage.glob("*.safetensors"):
            for n, v in _header(f).items():
                if n != "__metadata__":
                    total += v["data_offsets"][1] - v["data_offsets"][0]
        data["metadata"]["total_size"] = total
        index.write_text(json.dumps(data, indent=2) + "\n")


def _header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return json.loads(fh.read(int.from_bytes(fh.read(8), "little")))


def tensor_specs(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) over every .safetensors file, from the headers only."""
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update({n: (v["dtype"], tuple(v["shape"])) for n, v in _header(f).items()
                    if n != "__metadata__"})
    return out
