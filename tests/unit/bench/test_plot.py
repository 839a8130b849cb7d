"""bench/plot.py draws the benchmarks' samples into a PNG (real matplotlib, nothing timed);
bench/figures.py judges a figure against its baseline and target."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_plot_renders_a_png_from_sample_json(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    plot = _load("plot")
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"title": "bench/run.py", "samples": {
        "ext.local create (CLI)": [91.5, 96.0, 104.2, 250.0],
        "ext.local destroy (CLI)": [41.0, 44.5],
        "baseline: python -c pass": [61.0, 63.5, 70.1],
    }, "checks": [{"what": "create-to-ready", "limit": 100, "series": "ext.local create (CLI)"},
                  {"what": "python -c pass", "limit": None, "series": None}]}))
    compose = tmp_path / "compose.json"
    compose.write_text(json.dumps({"samples": {"compose CLI": [1200.0, 1350.5],
                                               "raw compose up + ssh": [1100.0]}}))
    wrk = tmp_path / "api.json"
    wrk.write_text(json.dumps({"sqlite": {"rps": 1000.0}}))  # no samples: passed over
    out = tmp_path / "out" / "latency.png"

    assert plot.main([str(wrk), str(compose), str(run), "--out", str(out)]) == 0

    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "api.json has no samples" in captured.err
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 800
    assert height > 300
    loaded = plot.load([wrk, compose, run])  # run before compose; api.json (no samples) out
    assert [(label, limits) for label, _s, limits in loaded] == [
        ("bench/run.py", {"ext.local create (CLI)": 100.0}), ("compose", {})]


def test_plot_without_any_samples_says_so(tmp_path: Path) -> None:
    plot = _load("plot")
    empty = tmp_path / "api.json"
    empty.write_text("{}")
    with pytest.raises(SystemExit, match="no samples to draw"):
        plot.main([str(empty), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_check_judges_limit_and_ratio() -> None:
    figures = _load("figures")
    fast = figures.Check("create", 90.0, 80.0, "bwrap + ssh", limit=100, max_ratio=1.5)
    assert fast.passed is True
    assert fast.ratio == pytest.approx(1.125)
    assert figures.Check("create", 130.0, 80.0, "b", limit=100, max_ratio=1.5).passed is False
    assert figures.Check("create", 90.0, 50.0, "b", limit=100, max_ratio=1.5).passed is False
    assert figures.Check("python", 60.0, 80.0, "b").passed is None
    assert "target <= 100 ms and <= x1.5" in fast.line()
    assert figures.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert figures.percentile([0.0, 10.0], 99) == pytest.approx(9.9)
