"""MXFP4 as gpt-oss publishes it -> GGML's MXFP4 blocks, byte for byte (no float round trip).

Both store OCP microscaling FP4: 32 weights along the input dimension share an E8M0 scale
(exponent + 127, the same byte in both) and each weight is a 4-bit E2M1 code (the same code
in both). Only the packing differs. The checkpoint keeps a row's scales in `*_scales`
[..., n_blocks] apart from its codes in `*_blocks` [..., n_blocks, 16], two codes a byte with
weight 2j in the low nibble and 2j+1 in the high one. GGML keeps each block as 17 bytes, the
scale then 16 bytes whose low nibbles hold weights 0-15 and high nibbles weights 16-31
(gguf-py's quants.MXFP4, ggml's block_mxfp4).
"""

from __future__ import annotations

import numpy as np

from packager.errors import UnsupportedArchitectureError

BLOCK = 32  # weights per block
CODE_BYTES = BLOCK // 2
GGML_BLOCK_BYTES = 1 + CODE_BYTES


def check_pair(name: str, blocks: tuple[int, ...], scales: tuple[int, ...],
               rows: tuple[int, ...], n_in: int) -> None:
    """Refuse, naming the tensor, a blocks/scales pair that is not `rows` x `n_in` in MXFP4."""
    if n_in % BLOCK:
        raise UnsupportedArchitectureError(
            f"{name}: MXFP4 blocks hold {BLOCK} weights, which do not divide the input width "
            f"{n_in}"
        )
    want_blocks = (*rows, n_in // BLOCK, CODE_BYTES)
    if tuple(blocks) != want_blocks or tuple(scales) != want_blocks[:-1]:
        raise UnsupportedArchitectureError(
            f"{name}: MXFP4 blocks {list(blocks)} / scales {list(scales)} do not hold "
            f"{'x'.join(map(str, rows))} rows of {n_in} weights (expected blocks "
            f"{list(want_blocks)}, scales {list(want_blocks[:-1])})"
        )


def to_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[..., n_blocks, 16] codes + [..., n_blocks] scales -> [..., n_blocks * 17] GGML bytes."""
    blocks = np.asarray(blocks, dtype=np.uint8)
    low, high = blocks & 0x0F, blocks >> 4
    codes = np.stack([low, high], axis=-1).reshape(*blocks.shape[:-1], BLOCK)  # in order
    packed = codes[..., :CODE_BYTES] | (codes[..., CODE_BYTES:] << 4)
    out = np.concatenate([np.asarray(scales, dtype=np.uint8)[..., None], packed], axis=-1)
    return np.ascontiguousarray(out.reshape(*blocks.shape[:-2], -1))


# E2M1 values of the 16 codes (the sign is the high bit).
_FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0,
                 -6.0], dtype=np.float32)  # fmt: skip


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The checkpoint's MXFP4 as float32 [..., n_blocks * 32] (exact), for the ONNX exporter,
    which writes experts in its own precision."""
    blocks = np.asarray(blocks, dtype=np.uint8)
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], BLOCK)
    scale = np.ldexp(np.float32(1.0), np.asarray(scales, dtype=np.int32) - 127)
    values = _FP4[codes] * scale[..., None].astype(np.float32)
    return values.reshape(*blocks.shape[:-2], -1)
