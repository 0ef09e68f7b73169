"""MIMNet: faithful structure, any grid size, explicit state, gradients, and it learns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mimcast.models.mimnet import (
    MIMN,
    MIMBlock,
    MIMNet,
    MIMNetConfig,
    STLSTMCell,
    autocast,
    compile_step,
    eager_on_failure,
    from_patches,
    is_compiled,
    to_patches,
)

TINY = MIMNetConfig(
    input_length=3, output_length=2, num_layers=3, num_hidden=8, filter_size=3, patch_size=2
)


def tiny(**changes) -> MIMNet:
    torch.manual_seed(0)
    return MIMNet(dataclasses.replace(TINY, **changes)).eval()


def frames(b: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 1, h, w, generator=g)


def test_default_model_on_two_grids_same_parameters_same_outputs():
    """The issue's check: MIMNet(MIMNetConfig()) on 64x64 and 96x80."""
    torch.manual_seed(0)
    model = MIMNet(MIMNetConfig()).eval()
    cfg = model.config
    shapes_before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with torch.no_grad():
        for h, w in [(64, 64), (96, 80)]:
            x = frames(1, cfg.input_length, h, w)
            y1, y2 = model(x), model(x)
            assert y1.shape == (1, cfg.output_length, cfg.in_channels, h, w)
            assert torch.equal(y1, y2)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes_before


@pytest.mark.parametrize(("h", "w"), [(16, 16), (17, 23), (5, 9), (40, 12)])
@pytest.mark.parametrize("patch", [1, 2, 4])
def test_output_shapes_for_any_grid(h, w, patch):
    model = tiny(patch_size=patch)
    with torch.no_grad():
        y = model(frames(2, TINY.input_length, h, w))
    assert y.shape == (2, TINY.output_length, 1, h, w)
    assert torch.isfinite(y).all()


def test_no_parameter_shape_involves_the_grid():
    model = tiny(patch_size=1)
    k, nh = TINY.filter_size, TINY.num_hidden
    for name, p in model.named_parameters():
        if p.ndim == 4:  # conv weights: spatial dims are kernel sizes only
            assert p.shape[2:] in ((k, k), (1, 1)), name
        elif p.ndim == 3:  # per-channel peepholes
            assert p.shape == (nh, 1, 1), name
        else:
            assert p.ndim == 1, name
    # and the same weights run on two different grids
    with torch.no_grad():
        model(frames(1, 3, 12, 12))
        model(frames(1, 3, 31, 7))


def test_no_state_leaks_between_calls_or_batches():
    model = tiny()
    x = frames(3, TINY.input_length, 20, 24, seed=1)
    with torch.no_grad():
        full = model(x)
        model(frames(5, TINY.input_length, 8, 8, seed=2))  # an unrelated call in between
        again = model(x)
        last_small_batch = model(x[2:])  # smaller last batch, as a DataLoader gives
    assert torch.equal(full, again)
    torch.testing.assert_close(last_small_batch, full[2:], rtol=1e-5, atol=1e-6)


def test_fewer_steps_are_the_first_frames_of_the_full_forecast():
    """A forecast of fewer steps stops the recurrence early: the same frames, bit for bit,
    as the first ones of the full forecast (and only the frames asked for)."""
    model = tiny(output_length=5, step_input=True)
    x = frames(2, TINY.input_length, 12, 16, seed=4)
    with torch.no_grad():
        full = model(x, step_minutes=5.0)
        for steps in (1, 3, 5):
            first = model(x, step_minutes=5.0, steps=steps)
            assert first.shape == (2, steps, 1, 12, 16)
            assert torch.equal(first, full[:, :steps])
    for bad in (0, 6):
        with pytest.raises(ValueError, match="steps="):
            model(x, step_minutes=5.0, steps=bad)


def test_layer_1_is_st_lstm_and_the_others_mim_blocks():
    model = tiny(num_layers=4)
    layers = list(model.stack.layers)
    assert isinstance(layers[0], STLSTMCell)
    assert all(isinstance(layer, MIMBlock) for layer in layers[1:])
    assert all(isinstance(layer.mim_n, MIMN) for layer in layers[1:])
    assert not any(isinstance(m, MIMBlock) for m in layers[0].modules())


def test_gradients_reach_every_parameter():
    model = tiny().train()
    x = frames(2, TINY.total_length, 12, 12)
    mask = torch.ones(2, TINY.total_length - 2)
    mask[:, TINY.input_length - 1 :] = 0.5
    loss = ((model(x, mask) - x[:, TINY.input_length :]) ** 2).mean()
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead


def _capture_mimn_inputs(model: MIMNet) -> list[list[torch.Tensor]]:
    seen: list[list[torch.Tensor]] = [[] for _ in model.stack.layers[1:]]
    for i, layer in enumerate(model.stack.layers[1:]):
        layer.mim_n.register_forward_hook(
            lambda mod, args, out, i=i: seen[i].append((args[0].clone(), out[0].clone()))
        )
    return seen


def _memoryless_first_layer(model: MIMNet) -> None:
    """Make layer 1's hidden state a function of the current frame only."""
    cell = model.stack.layers[0]
    nh = model.config.num_hidden
    with torch.no_grad():
        for conv in (cell.conv_h.conv, cell.conv_m.conv):
            conv.weight.zero_()
            conv.bias.zero_()
        bias = cell.conv_x.conv.bias
        bias[1 * nh : 2 * nh] = -1e4  # f: forget the cell memory
        bias[4 * nh : 5 * nh] = -1e4  # f': forget the spatiotemporal memory


def test_difference_path_sees_change_and_only_change():
    model = tiny(layer_norm=False)
    _memoryless_first_layer(model)
    seen = _capture_mimn_inputs(model)
    still = frames(1, 1, 16, 16).repeat(1, TINY.input_length, 1, 1, 1)  # identical frames
    with torch.no_grad():
        model(still)
    diffs_layer2 = [d for d, _ in seen[0]]
    # identical consecutive frames: H^1_t == H^1_{t-1}, so MIM-N gets exactly zero
    assert all(torch.count_nonzero(d) == 0 for d in diffs_layer2[: TINY.input_length])
    # and MIM-N's output then depends on its own memory only: D is the same for zero diffs
    for layer in seen:
        layer.clear()
    moving = frames(1, TINY.input_length, 16, 16, seed=5)
    with torch.no_grad():
        model(moving)
    assert all(torch.count_nonzero(d) > 0 for d, _ in seen[0][1 : TINY.input_length])


def test_perturbing_the_previous_hidden_state_below_changes_mim_n():
    model = tiny()
    x = to_patches(frames(2, 1, 16, 16), TINY.patch_size)[:, 0]  # (B, C p^2, h, w)
    state = model.stack.init_state(x)
    with torch.no_grad():
        _, state = model.step(x, state, first=True)
        block = model.stack.layers[1]
        h_below_now = model.stack.layers[0](x, state.h[0], state.c[0], state.m)[0]
        d_ref, _ = block.mim_n(h_below_now - state.h[0], state.n[0])
        perturbed = state._replace(h=(state.h[0] + 0.1, *state.h[1:]))
        # same H_t^{l-1}, different H_{t-1}^{l-1}: the difference and D change
        d_pert, _ = block.mim_n(h_below_now - perturbed.h[0], state.n[0])
        assert (d_pert - d_ref).abs().max() > 1e-4
        # and through the whole stack step, layer 2's MIM-N memory changes too
        _, s_ref = model.step(x, state)
        _, s_pert = model.step(x, perturbed)
        assert (s_pert.n[0] - s_ref.n[0]).abs().max() > 1e-4


def test_cascade_flag_feeds_d_of_the_layer_below():
    model = tiny(diff_input="cascade", num_layers=4)
    seen = _capture_mimn_inputs(model)
    with torch.no_grad():
        model(frames(1, TINY.input_length, 12, 12))
    for t in range(1, TINY.input_length):
        for layer in (1, 2):  # MIM layers 3 and 4 get D of layers 2 and 3
            assert torch.equal(seen[layer][t][0], seen[layer - 1][t][1])


def test_first_step_flag():
    x = frames(1, TINY.input_length, 12, 12)
    zero, state = tiny(first_step_diff="zero"), tiny(first_step_diff="state")
    seen_zero, seen_state = _capture_mimn_inputs(zero), _capture_mimn_inputs(state)
    layer1 = []
    zero.stack.layers[0].register_forward_hook(lambda m, a, out: layer1.append(out[0].clone()))
    with torch.no_grad():
        zero(x)
        state(x)
    assert torch.count_nonzero(seen_zero[0][0][0]) == 0
    # "state" differences against the zero initial state: layer 2's MIM-N sees H_0 itself
    # (layer 1 at t = 0 is the same in both models: nothing above has run yet)
    torch.testing.assert_close(seen_state[0][0][0], layer1[0], atol=0, rtol=0)
    assert torch.count_nonzero(layer1[0]) > 0


def test_scheduled_sampling_mask_semantics():
    model = tiny()
    x = frames(2, TINY.total_length, 12, 12, seed=3)
    steps = TINY.total_length - 2
    with torch.no_grad():
        free = model(x[:, : TINY.input_length])
        zeros_mask = torch.ones(2, steps)
        zeros_mask[:, TINY.input_length - 1 :] = 0  # observed inputs, own predictions after
        assert torch.allclose(model(x, zeros_mask), free, atol=1e-6)
        teacher = model(x, torch.ones(2, steps))  # fed the true frames throughout
        assert not torch.allclose(teacher, free, atol=1e-4)
        pixel_mask = torch.ones(2, steps, 1, 12, 12)
        assert torch.allclose(model(x, pixel_mask), teacher, atol=1e-6)
    with pytest.raises(ValueError, match="mask"):
        model(x, torch.ones(2, steps + 1))
    with pytest.raises(ValueError, match="time steps"):
        model(x[:, :2])


def test_patching_round_trips_any_grid():
    x = torch.rand(2, 3, 2, 13, 18)
    p = to_patches(x, 4)
    assert p.shape == (2, 3, 32, 4, 5)
    assert torch.equal(from_patches(p, 4, 13, 18), x)


def test_bf16_autocast_on_cpu_stays_close_to_fp32():
    model = tiny()
    x = frames(1, TINY.input_length, 16, 16)
    with torch.no_grad():
        ref = model(x)
        with autocast("cpu", native_only=False):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1


def test_bf16_autocast_runs_only_where_the_cpu_has_native_bf16():
    # an AVX2-only CPU has no oneDNN bf16 kernels: bf16 convolutions there are 15-80x slower
    from mimcast.models.device import bf16_native

    model = tiny()
    x = frames(1, TINY.input_length, 16, 16)
    with torch.no_grad(), autocast("cpu"):
        out = model(x)
    native = bf16_native("cpu")
    assert native == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert out.dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_compiled_step_trains_as_the_eager_one(device, monkeypatch):
    # the recipe's features (channels_last, residual, step input, a sampling mask); forward and
    # backward compiled: the outputs and every parameter's gradient as in eager mode
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 on both sides
    changes = dict(num_layers=2, channels_last=True, residual=True, step_input=True)
    x, mask = frames(2, TINY.total_length, 12, 12), torch.full((2, TINY.total_length - 2), 0.5)
    x, mask = x.to(device), mask.to(device)
    results = []
    for compile_it in (False, True):
        model = tiny(**changes).to(device).to(memory_format=torch.channels_last).train()
        model = compile_step(model) if compile_it else model
        with torch.no_grad():  # a trained step offset, so that the step input is exercised
            w = model.step_gates.weight
            w.copy_(0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
        out = model(x, mask, step_minutes=torch.tensor([5.0, 10.0], device=device))
        ((out - x[:, TINY.input_length :]) ** 2).mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert eager_grads.keys() == compiled_grads.keys()
    for name, grad in eager_grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)


def test_a_step_that_fails_to_compile_runs_eagerly_and_says_so(caplog):
    def broken_backend(graph, example_inputs):  # a compiler that fails, as on a broken toolchain
        raise RuntimeError("no C++ compiler found")

    x = frames(1, TINY.input_length, 12, 12)
    with torch.no_grad():
        eager = tiny()(x)
        with caplog.at_level("WARNING", logger="mimcast.models.mimnet"):
            model = compile_step(tiny(), backend=broken_backend)
            out = model(x)
            again = model(x)  # later calls go straight to the eager step
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    said = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(said) == 1 and "no C++ compiler found" in said[0], said


def test_a_backward_that_fails_to_compile_is_trained_eagerly(caplog):
    # AOTAutograd compiles the backward lazily: its failure raises only in backward(), after
    # the compiled forward ran; eager_on_failure makes the step eager and runs it again
    from torch._dynamo.backends.common import aot_autograd

    def broken(graph, example_inputs):
        raise RuntimeError("backward kernel failed to build")

    x = frames(2, TINY.total_length, 12, 12)
    backend = aot_autograd(fw_compiler=lambda graph, _: graph, bw_compiler=broken)
    grads = []
    for model in (tiny(num_layers=2).train(), tiny(num_layers=2).train()):
        if grads:
            compile_step(model, backend=backend)
            assert is_compiled(model)

        def step(model=model):
            model.zero_grad(set_to_none=True)
            loss = ((model(x[:, : TINY.input_length]) - x[:, TINY.input_length :]) ** 2).mean()
            loss.backward()
            return loss

        with caplog.at_level("WARNING", logger="mimcast.models.mimnet"):
            loss = eager_on_failure(model, step)
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert not is_compiled(model)
    (eager_loss, eager_grads), (loss, got) = grads
    assert loss == eager_loss
    for a, b in zip(got, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    said = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(said) == 1 and "backward kernel failed to build" in said[0], said
    # an error that is not the compiler's is raised as it is, and the step stays compiled
    model, warned = compile_step(tiny(), backend=backend), len(caplog.records)
    with pytest.raises(ValueError, match="time steps"):
        eager_on_failure(model, lambda: model(x[:, :1]))
    assert is_compiled(model) and len(caplog.records) == warned


def test_channel_norm_in_channels_last_matches_the_plain_layout_without_a_copy():
    from mimcast.models.mimnet import ChannelNorm

    norm = ChannelNorm(3, 12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 12, 5, 7)
    plain = norm(x)
    last = norm(x.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    torch.testing.assert_close(last, plain, rtol=1e-5, atol=1e-6)


def test_channel_norm_in_place_without_autograd_gives_the_same_values(monkeypatch):
    import mimcast.models.mimnet as mimnet

    norm = mimnet.ChannelNorm(3, 12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 12, 5, 7)
    for layout in (torch.contiguous_format, torch.channels_last):
        inputs = x.contiguous(memory_format=layout)
        for context in (torch.no_grad, torch.inference_mode):
            with context():
                monkeypatch.setattr(mimnet, "IN_PLACE_NORM", False)
                ref = norm(inputs)
                monkeypatch.setattr(mimnet, "IN_PLACE_NORM", True)
                fast = norm(inputs)
            torch.testing.assert_close(fast, ref, rtol=0, atol=0)
            torch.testing.assert_close(fast, norm(inputs).detach(), rtol=0, atol=0)  # autograd
    # a bf16 input is not overwritten with the fp32 affine (it would round the result)
    assert not norm._in_place(torch.zeros(2, dtype=torch.bfloat16))
    with torch.no_grad():
        assert norm._in_place(torch.zeros(2))
    assert not norm._in_place(torch.zeros(2))  # autograd on: the input is kept for backward


def test_a_channels_last_model_gives_the_same_outputs_and_gradients():
    x = frames(2, TINY.input_length + TINY.output_length, 16, 16)
    results = []
    for layout in (False, True):
        model = tiny(num_layers=3, channels_last=layout).train()
        if layout:
            model = model.to(memory_format=torch.channels_last)
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    for g_last, g_plain in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(g_last, g_plain, rtol=1e-3, atol=1e-6)


def test_a_tiny_model_overfits_one_synthetic_sequence():
    from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube

    weather = SyntheticConfig(
        height=48, width=48, frames=8, seed=4, radars=1, cell_rate=4.0, stratiform_fraction=0.3
    )
    cube = synthetic_cube(weather)
    dbz = np.nan_to_num(cube.reflectivity.values, nan=0.0)
    seq = torch.from_numpy(np.clip(dbz, 0, 60) / 60.0).float()[None, :, None]  # (1, 8, 1, H, W)
    assert seq[0, 4:].mean() > 0.05  # there is weather to learn
    config = MIMNetConfig(
        input_length=4, output_length=4, num_layers=2, num_hidden=16, filter_size=3, patch_size=4
    )
    torch.manual_seed(0)
    model = MIMNet(config).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []  # bounded by steps, not by the clock: a busy machine must not fail it
    while len(losses) < 400:
        opt.zero_grad()
        loss = ((model(seq[:, :4]) - seq[:, 4:]) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < losses[0] / 20:
            break
    assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:], len(losses))


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="filter_size=4"):
        MIMNetConfig(filter_size=4)
    with pytest.raises(ValueError, match="diff_input"):
        MIMNetConfig(diff_input="both")
    with pytest.raises(ValueError, match="channels"):
        tiny()(torch.rand(1, 3, 2, 8, 8))


@pytest.mark.gpu
def test_cuda_bf16_channels_last_forward_and_backward():
    device = torch.device("cuda")
    model = tiny(channels_last=True).to(device).to(memory_format=torch.channels_last).train()
    x = frames(4, TINY.total_length, 64, 48).to(device)
    with autocast(device):
        y = model(x[:, : TINY.input_length])
        loss = ((y.float() - x[:, TINY.input_length :]) ** 2).mean()
    loss.backward()
    assert y.shape == (4, TINY.output_length, 1, 64, 48)
    assert all(p.grad is not None for p in model.parameters())
    # the layouts must agree in fp32. cuDNN convolutions round to TF32 by default on Ampere and
    # later, with kernels that differ per layout; with TF32 on, this comparison failed on an H200
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = tiny().to(device)(x[:, : TINY.input_length])
            same = tiny(channels_last=True).to(device)(x[:, : TINY.input_length])
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(same, ref, rtol=1e-3, atol=1e-4)


def test_residual_model_starts_as_persistence_and_learns_changes():
    model = tiny(residual=True)
    x = frames(2, TINY.input_length, 12, 12, seed=5)
    with torch.no_grad():
        out = model(x)
    # an untrained residual head is near zero: every lead nearly repeats the last input frame
    for k in range(TINY.output_length):
        torch.testing.assert_close(out[:, k], x[:, -1], atol=0.02, rtol=0)
    plain = tiny()
    with torch.no_grad():
        assert (plain(x)[:, 0] - x[:, -1]).abs().mean() > 0.05  # a plain head does not
    # and the stack receives gradient through the small head
    model.train()
    loss = model(x).square().mean()
    loss.backward()
    assert model.stack.layers[0].conv_x.conv.weight.grad.abs().sum() > 0


def test_step_input_starts_as_the_step_blind_model_and_then_tells_steps_apart():
    x = frames(2, TINY.input_length, 12, 12, seed=3)
    blind, aware = tiny(residual=True), tiny(residual=True, step_input=True)
    # the same weights but the step's gate offsets, which start at zero
    missing = aware.load_state_dict(blind.state_dict(), strict=False).missing_keys
    assert missing == ["step_gates.weight"]
    with torch.no_grad():
        torch.testing.assert_close(aware(x, step_minutes=5.0), blind(x), atol=0, rtol=0)
        torch.nn.init.normal_(aware.step_gates.weight, std=0.5)
        two, ten = aware(x, step_minutes=2.0), aware(x, step_minutes=10.0)
        assert (two - ten).abs().max() > 1e-3
        # one step per sequence in a batch: each as if alone
        mixed = aware(x, step_minutes=torch.tensor([2.0, 10.0]))
        torch.testing.assert_close(mixed[0], two[0])
        torch.testing.assert_close(mixed[1], ten[1])
    with pytest.raises(ValueError, match="step_minutes"):
        aware(x)
    with pytest.raises(ValueError, match="step_minutes"):
        aware(x, step_minutes=torch.tensor([5.0, 5.0, 5.0]))
    with pytest.raises(ValueError, match="step_minutes"):
        aware(x, step_minutes=0.0)
    # gradient reaches the offsets
    aware.train()
    aware(x, step_minutes=torch.tensor([2.0, 10.0])).square().mean().backward()
    assert aware.step_gates.weight.grad.abs().sum() > 0


def test_a_compiled_step_stays_compiled_through_a_whole_training_run():
    # A training run calls the step in more variants than dynamo's default of 8 compiled
    # versions: the first step and the later ones, with and without gradients (validation),
    # a full batch and an epoch's last, partial one. Past the limit dynamo silently ran the
    # step eagerly for the rest of the run. Every call below must reach the compiled graph.
    runs = []

    def counting(graph, example_inputs):  # a backend that counts the graph's executions
        def run(*args):
            runs.append(1)
            return graph(*args)

        return run

    model = tiny(residual=False).train()  # the Eulerian recipe feeds back its bf16 output
    compile_step(model, backend=counting)
    calls = TINY.total_length - 1  # step calls per forward

    def train(b):
        x = frames(b, TINY.total_length, 12, 12)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, torch.full((b, TINY.total_length - 2), 0.5))
        ((out.float() - x[:, TINY.input_length :]) ** 2).mean().backward()

    def validate(b):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(frames(b, TINY.input_length, 12, 12))

    for _ in range(2):  # the second round: every variant is compiled already
        before = len(runs)
        for call in (lambda: train(4), lambda: validate(4), lambda: train(3), lambda: validate(3)):
            call()
        assert len(runs) - before == 4 * calls
