"""`compress-cache info` / `verify` on a cache directory with split stores."""

from __future__ import annotations

import h5py
import numpy as np
from click.testing import CliRunner

from cache_builder.cli import main
from storage import create_store
from tests.storage.conftest import unit_rows


def _cache(tmp_path, backend="hdf5") -> str:
    for split, n in (("train", 30), ("val", 10)):
        writer = create_store(str(tmp_path / "cache" / split), n, 8, backend=backend, shard_size=10,
                              provenance={"teacher": "simclr_r50x4"})
        for s in writer.pending_shards():
            writer.write_shard(s, unit_rows(10, 8, seed=s))
        writer.finalize()
    return str(tmp_path / "cache")


def test_info_lists_every_split(tmp_path) -> None:
    result = CliRunner().invoke(main, ["info", _cache(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cache/train" in result.output and "cache/val" in result.output
    assert "30 x 8" in result.output and "complete: 3 shards" in result.output
    assert "simclr_r50x4" in result.output


def test_verify_passes_then_names_the_bad_shard(tmp_path) -> None:
    cache = _cache(tmp_path)
    ok = CliRunner().invoke(main, ["verify", cache, "--no-progress"])
    assert ok.exit_code == 0 and ok.output.count("OK") == 2
    with h5py.File(f"{cache}/val/shard-00000.h5", "r+") as f:
        f["embeddings"][0, 0] = np.float16(0.25)
    bad = CliRunner().invoke(main, ["verify", cache, "--no-progress"])
    assert bad.exit_code == 1
    assert "val: FAILED" in bad.output and "shard 0 (rows 0-9): checksum mismatch" in bad.output


def test_info_on_a_missing_cache_is_a_clean_error(tmp_path) -> None:
    result = CliRunner().invoke(main, ["info", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "no such cache" in result.output
