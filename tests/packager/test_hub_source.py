"""SRC as a Hub repo id, resolved offline from a cache laid out as huggingface_hub lays it out."""

from __future__ import annotations

import pytest

from edgemoe_fixtures import make_hub_cache
from packager.api import PackOptions, pack, verify
from packager.errors import CheckpointError
from packager.source import open_checkpoint

pytestmark = pytest.mark.engine


@pytest.fixture
def hub_cache(tmp_path, fixture_checkpoint, monkeypatch):
    cache = tmp_path / "hub"
    commit = make_hub_cache(
        fixture_checkpoint("qwen3moe-tiny"), cache, "edgemoe-test/qwen3moe-tiny"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, commit


def test_repo_id_resolves_from_local_cache(hub_cache):
    cache, commit = hub_cache
    ckpt = open_checkpoint("edgemoe-test/qwen3moe-tiny", cache_dir=cache)
    assert ckpt.source.kind == "hub"
    assert ckpt.source.ref == "edgemoe-test/qwen3moe-tiny"
    assert ckpt.source.revision == commit
    assert "config.json" in ckpt.source.files


def test_pack_from_repo_id_offline(hub_cache, tmp_path):
    cache, commit = hub_cache
    out = tmp_path / "bundle"
    result = pack(
        PackOptions(
            src="edgemoe-test/qwen3moe-tiny",
            out_dir=out,
            cache_dir=cache,
            quant="Q8_0",
            reference=False,
        )
    )
    assert result.manifest.source.revision == commit
    assert verify(out).ok


def test_unknown_repo_offline_is_a_clear_error(hub_cache):
    cache, _ = hub_cache
    with pytest.raises(CheckpointError, match="not in the local Hub cache"):
        open_checkpoint("edgemoe-test/does-not-exist", cache_dir=cache)
