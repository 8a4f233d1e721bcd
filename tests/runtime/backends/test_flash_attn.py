"""The flash-attention switch reaches llama.cpp: off and on both run the same model to the same
answer (two kernels, logits equal to rounding), and a quantized KV cache, which llama.cpp keeps
only with flash attention, refuses `flash_attn=False` before anything loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.backends.base import EngineConfig
from runtime.backends.registry import open_backend
from runtime.errors import BundleError

pytestmark = pytest.mark.engine


def _first_logits(bundle: Path, flash_attn: bool | None) -> tuple[np.ndarray, list[int]]:
    with runtime.load(bundle, budget="100%", threads=1, flash_attn=flash_attn) as m:
        logits = np.array(m.step(m.tokenize("The quick brown fox jumps over")))
        m.engine.reset()
        answer = m.generate("The quick brown fox jumps over", max_tokens=8, temperature=0)
        return logits, list(answer.tokens)


def test_on_and_off_give_the_same_answer(tiny_bundle: Path) -> None:
    off, off_tokens = _first_logits(tiny_bundle, False)
    on, on_tokens = _first_logits(tiny_bundle, True)
    auto, auto_tokens = _first_logits(tiny_bundle, None)
    scale = float(np.abs(off).max())
    assert np.abs(on - off).max() <= 2e-3 * scale
    assert not np.array_equal(on, off)  # two kernels: the switch reached llama.cpp
    assert np.array_equal(auto, on)  # auto is on for this CPU backend
    assert off_tokens == on_tokens == auto_tokens


def test_a_quantized_kv_cache_refuses_flash_attention_off(tiny_bundle: Path) -> None:
    cfg = EngineConfig(tiny_bundle / "model.gguf", n_ctx=256, n_threads=1,
                       observe_routing=False, kv_cache_type="q8_0", flash_attn=False)
    with pytest.raises(BundleError, match=r"a q8_0 KV cache .* needs flash attention"):
        open_backend(cfg, None, kind="llama.cpp")
