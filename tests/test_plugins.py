"""Extension points: a third-party package adds a radar format and a forecast method through
entry points, without editing mimcast."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from mimcast.pipeline import forecasters, readers


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """An installed distribution 'mimcast-plugin-demo' with one reader and one forecaster."""
    (tmp_path / "demo_plugin.py").write_text(
        textwrap.dedent("""
        import numpy as np
        from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube

        def read(path, zr=None):
            return synthetic_cube(SyntheticConfig(height=16, width=16, frames=1))

        def guess_can_open(head, path):
            return head.startswith(b"DEMO")

        class Doubling:
            name = "doubling"
            description = "twice the last frame"
            input_frames = 1
            max_leads = None
            default_leads = 3

            def __init__(self, **options):
                self.options = options

            def __call__(self, inputs, n_leads):
                return np.repeat(2 * inputs[-1:], n_leads, axis=0).astype(np.float32)
    """)
    )
    info = tmp_path / "mimcast_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mimcast-plugin-demo\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[mimcast.readers]\ndemo = demo_plugin\n\n"
        "[mimcast.forecasters]\ndoubling = demo_plugin:Doubling\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    readers._readers.cache_clear()
    forecasters._plugins.cache_clear()
    yield tmp_path
    sys.modules.pop("demo_plugin", None)
    readers._readers.cache_clear()
    forecasters._plugins.cache_clear()


def test_a_plugin_adds_a_format_and_a_method(plugin_package):
    sample = plugin_package / "frame.bin"
    sample.write_bytes(b"DEMO" + bytes(60))
    assert "demo" in readers.list_readers()
    assert readers.detect_format(sample) == "demo"
    assert readers.read(sample).sizes["y"] == 16
    assert "doubling" in forecasters.list_forecasters()
    method = forecasters.get_forecaster("doubling", checkpoint=None)
    out = method(np.ones((2, 4, 4), np.float32), 3)
    assert out.shape == (3, 4, 4) and (out == 2).all()


def test_without_the_plugin_the_format_is_unknown(tmp_path):
    sample = tmp_path / "frame.bin"
    sample.write_bytes(b"DEMO" + bytes(60))
    with pytest.raises(readers.ReaderError, match="unknown format"):
        readers.detect_format(sample)
    with pytest.raises(ValueError, match="unknown forecast method 'doubling'"):
        forecasters.get_forecaster("doubling")
