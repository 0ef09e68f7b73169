"""Checkpoints: bit-exact round trip, config carried in the file, nothing unpickled."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mimcast.models.checkpoint import (
    CheckpointError,
    InputConfig,
    load_checkpoint,
    open_checkpoint,
    read_metadata,
    save_checkpoint,
)
from mimcast.models.mimnet import MIMNet, MIMNetConfig
from mimcast.pipeline.defaults import SHIPPED_CHECKPOINT as SHIPPED

CONFIG = MIMNetConfig(
    input_length=3, output_length=2, num_layers=3, num_hidden=8, filter_size=3, patch_size=2,
    diff_input="cascade",
)  # fmt: skip


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(1)
    model = MIMNet(CONFIG).eval()
    path = save_checkpoint(
        model, tmp_path / "best.safetensors", extra={"step": 30}, inputs=InputConfig(0.0, 70.0)
    )
    return model, path


def test_round_trip_is_bit_exact_and_rebuilds_from_the_file_alone(saved):
    model, path = saved
    loaded, extra = load_checkpoint(path)
    assert loaded.config == CONFIG and extra == {"step": 30}
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    x = torch.rand(1, 3, 1, 10, 14)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert [p.name for p in path.parent.iterdir()] == ["best.safetensors"]  # no temp left


def _rewrite(path, **meta_changes):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    save_file(tensors, str(path), metadata=meta)


def test_config_that_does_not_match_the_code_fails_clearly(saved):
    _, path = saved
    raw = dataclasses.asdict(CONFIG) | {"num_heads": 4}
    _rewrite(path, config=json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"unknown keys: \['num_heads'\]") as err:
        read_metadata(path)
    assert str(path) in str(err.value)
    raw = dataclasses.asdict(CONFIG)
    raw.pop("patch_size")
    _rewrite(path, config=json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"missing keys: \['patch_size'\]"):
        load_checkpoint(path)


def test_weights_that_do_not_match_the_config_fail_clearly(saved):
    _, path = saved
    raw = dataclasses.asdict(CONFIG) | {"num_hidden": 16}
    _rewrite(path, config=json.dumps(raw))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(path)


def test_other_format_versions_and_files_are_refused(saved, tmp_path):
    _, path = saved
    _rewrite(path, format_version="99")
    with pytest.raises(CheckpointError, match="format version '99'"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    # a pickle is never unpickled: it is refused as an unreadable file
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"weights": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(evil)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(saved[1].read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)


def test_inputs_travel_with_the_checkpoint(tmp_path):
    model = MIMNet(CONFIG)
    spec = InputConfig(-10.0, 60.0, frame="lagrangian", motion_frames=3, postprocess="pm")
    path = save_checkpoint(model, tmp_path / "m.safetensors", inputs=spec)
    ckpt = open_checkpoint(path)
    assert ckpt.inputs == spec and ckpt.name == "MIMNet" and ckpt.format_version == "4"
    with pytest.raises(TypeError):
        save_checkpoint(model, tmp_path / "n.safetensors")  # no silent default normalisation


def test_format_2_checkpoints_are_still_read_without_silent_defaults(saved):
    _, path = saved
    raw = dataclasses.asdict(CONFIG)
    raw.pop("residual")  # format 2 predates it
    raw.pop("step_input")  # and this (format 4)
    _rewrite(path, format_version="2", config=json.dumps(raw),
             extra=json.dumps({"step": 3, "dbz_min": 5.0, "dbz_max": 65.0}))  # fmt: skip
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta.pop("inputs")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=meta)
    ckpt = open_checkpoint(path)
    assert ckpt.inputs == InputConfig(5.0, 65.0) and not ckpt.model.config.residual
    _rewrite(path, extra=json.dumps({"step": 3}))
    with pytest.raises(CheckpointError, match="normalisation is unknown"):
        open_checkpoint(path)


def test_format_3_checkpoints_are_read_as_step_blind_and_a_format_3_key_is_still_required(saved):
    _, path = saved
    raw = dataclasses.asdict(CONFIG)
    raw.pop("step_input")  # format 3 predates it
    _rewrite(path, format_version="3", config=json.dumps(raw))
    ckpt = open_checkpoint(path)
    assert ckpt.format_version == "3" and not ckpt.model.config.step_input
    raw.pop("residual")  # format 3 wrote it: missing, the file is refused
    _rewrite(path, config=json.dumps(raw))
    with pytest.raises(CheckpointError, match="missing keys: \\['residual'\\]"):
        open_checkpoint(path)


def test_shipped_checkpoint_opens_with_its_normalisation():
    ckpt = open_checkpoint(SHIPPED)
    assert ckpt.inputs.dbz_max > ckpt.inputs.dbz_min
