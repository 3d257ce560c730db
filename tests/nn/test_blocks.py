"""BatchNorm2D/1D, GlobalAvgPool2D and Residual as layers of a Sequential: PyTorch's
modules as the oracle over several training steps and in inference, gradcheck of every
layer, and buffers in state_dict, checkpoints, to(), configs, summaries and fusion."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Case, close_composed, torch_or_skip

import xpconv as xc
from xpconv.nn.layers import ConvMaxPool

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def block_model(
    case_or_backend,
    dtype: str,
    seed: int = 0,
    fuse: bool = True,
    widths: tuple[int, int] = (4, 6),
    size: int = 8,
) -> xc.Sequential:
    """conv + pool (fused) + BN + ReLU, a downsampling residual block with a 1x1 conv + BN
    shortcut, an identity block, global pooling, BN1D, Dense."""
    backend = getattr(case_or_backend, "backend", case_or_backend)
    a, b = widths
    return xc.Sequential(
        [
            xc.Conv2D(a, 3, padding=1, use_bias=False),
            xc.MaxPool2D(2),
            xc.BatchNorm2D(momentum=0.3),
            xc.ReLU(),
            xc.Residual(
                [
                    xc.Conv2D(b, 3, stride=2, padding=1, use_bias=False),
                    xc.BatchNorm2D(),
                    xc.ReLU(),
                    xc.Conv2D(b, 3, padding=1, use_bias=False),
                    xc.BatchNorm2D(),
                ],
                shortcut=[xc.Conv2D(b, 1, stride=2, use_bias=False), xc.BatchNorm2D()],
            ),
            xc.ReLU(),
            xc.Residual([xc.Conv2D(b, 3, padding=1), xc.BatchNorm2D(), xc.ReLU()]),
            xc.GlobalAvgPool2D(),
            xc.BatchNorm1D(),
            xc.Dense(3),
        ],
        backend=backend,
        dtype=dtype,
        seed=seed,
        input_shape=(2, size, size),
        fuse=fuse,
    )


def torch_twin(torch, model: xc.Sequential):
    """The same network in torch.nn with the model's weights and buffers."""
    nn = torch.nn
    state = {k: torch.tensor(v, dtype=torch.float64) for k, v in model.state_dict().items()}

    class Block(nn.Module):
        def __init__(self, branch, shortcut):
            super().__init__()
            self.branch, self.shortcut = branch, shortcut

        def forward(self, x):
            return self.branch(x) + (x if self.shortcut is None else self.shortcut(x))

    def bn2(name, c, momentum=0.1):
        m = nn.BatchNorm2d(c, momentum=momentum).double()
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(m, key).data.copy_(state[f"{name}.{key}"])
        return m

    def conv(name, c, o, k, stride=1, padding=0, bias=False):
        m = nn.Conv2d(c, o, k, stride=stride, padding=padding, bias=bias).double()
        m.weight.data.copy_(state[f"{name}.weight"])
        if bias:
            m.bias.data.copy_(state[f"{name}.bias"])
        return m

    bn1 = nn.BatchNorm1d(6).double()
    for key in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn1, key).data.copy_(state[f"batchnorm1d_0.{key}"])
    dense = nn.Linear(6, 3).double()
    dense.weight.data.copy_(state["dense_0.weight"])
    dense.bias.data.copy_(state["dense_0.bias"])
    r0, r1 = "residual_0", "residual_1"
    return nn.Sequential(
        conv("conv2d_0", 2, 4, 3, padding=1),
        nn.MaxPool2d(2),
        bn2("batchnorm2d_0", 4, momentum=0.3),
        nn.ReLU(),
        Block(
            nn.Sequential(
                conv(f"{r0}.conv2d_0", 4, 6, 3, stride=2, padding=1),
                bn2(f"{r0}.batchnorm2d_0", 6),
                nn.ReLU(),
                conv(f"{r0}.conv2d_1", 6, 6, 3, padding=1),
                bn2(f"{r0}.batchnorm2d_1", 6),
            ),
            nn.Sequential(
                conv(f"{r0}.shortcut.conv2d_0", 4, 6, 1, stride=2),
                bn2(f"{r0}.shortcut.batchnorm2d_0", 6),
            ),
        ),
        nn.ReLU(),
        Block(
            nn.Sequential(
                conv(f"{r1}.conv2d_0", 6, 6, 3, padding=1, bias=True),
                bn2(f"{r1}.batchnorm2d_0", 6),
                nn.ReLU(),
            ),
            None,
        ),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        bn1,
        dense,
    )


def test_blocks_match_torch_over_training_steps_and_in_eval(case: Case) -> None:
    torch = torch_or_skip()
    model = block_model(case, case.dtype, seed=3)
    twin = torch_twin(torch, model)
    r = np.random.default_rng(2)
    for step in range(3):
        x = case.host(r.normal(size=(5, 2, 8, 8)))
        g = case.host(r.normal(size=(5, 3)))
        tx = torch.tensor(x, requires_grad=True)
        twin.train()
        ty = twin(tx)
        ty.backward(torch.tensor(g))
        model.train()
        y = model.forward(case.asarray(x))
        gx = model.backward(case.asarray(g), input_grad=True)
        close_composed(case, y, ty.detach().numpy(), f"step {step} output")
        close_composed(case, gx, tx.grad.numpy(), f"step {step} grad_x")
        grads = {n: p.grad for n, p in model.parameters().items()}
        close_composed(case, grads["conv2d_0.weight"], twin[0].weight.grad.numpy(), "conv2d_0 grad")
        close_composed(
            case,
            grads["residual_0.shortcut.conv2d_0.weight"],
            twin[4].shortcut[0].weight.grad.numpy(),
            "shortcut conv grad",
        )
        close_composed(
            case,
            grads["residual_0.batchnorm2d_1.weight"],
            twin[4].branch[4].weight.grad.numpy(),
            "inner BN weight grad",
        )
        close_composed(
            case, grads["batchnorm1d_0.bias"], twin[9].bias.grad.numpy(), "BN1D bias grad"
        )
        twin.zero_grad()
    buffers = model.buffers()
    close_composed(
        case,
        buffers["batchnorm2d_0.running_var"],
        twin[2].running_var.numpy(),
        "running_var (momentum 0.3)",
    )
    close_composed(
        case,
        buffers["residual_0.shortcut.batchnorm2d_0.running_mean"],
        twin[4].shortcut[1].running_mean.numpy(),
        "shortcut running_mean",
    )
    close_composed(
        case, buffers["batchnorm1d_0.running_var"], twin[9].running_var.numpy(), "BN1D var"
    )
    x = case.host(r.normal(size=(4, 2, 8, 8)))
    twin.eval()
    model.eval()
    close_composed(
        case, model.forward(case.asarray(x)), twin(torch.tensor(x)).detach().numpy(), "eval"
    )
    before = {k: case.to_numpy(v) for k, v in model.buffers().items()}
    model.forward(case.asarray(x))
    for k, v in model.buffers().items():
        np.testing.assert_array_equal(case.to_numpy(v), before[k], err_msg=f"{k} moved in eval")


@pytest.mark.parametrize("training", [True, False])
def test_every_block_layer_passes_gradcheck(case64: Case, training: bool) -> None:
    model = block_model(case64, "float64", seed=1, widths=(2, 3), size=6)
    x = case64.asarray(np.random.default_rng(4).normal(size=(2, 2, 6, 6)))
    before = model.state_dict()
    report = xc.tools.gradcheck(model, x, training=training, max_elements=16)
    assert len(report.checks) == 1 + len(model.parameters())
    # the check leaves weights and running statistics as they were
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    # layer by layer too (the residual block with its shortcut, and BN1D on (N, C, L))
    h = model.forward(x, training=training)
    xc.tools.gradcheck(
        model.layers[4], case64.asarray(np.random.default_rng(5).normal(size=(3, 2, 3, 3)))
    )
    bn1 = xc.BatchNorm1D()
    bn1.build((3, 5), _ctx(case64))
    xc.tools.gradcheck(
        bn1, case64.asarray(np.random.default_rng(6).normal(size=(4, 3, 5))), training=training
    )
    assert h.shape == (2, 3)


def _ctx(case: Case):
    from xpconv.nn.layers import BuildContext

    return BuildContext(
        case.backend,
        case.backend.dtype(case.dtype),
        np.random.default_rng(0),
        np.random.default_rng(1),
    )


def test_buffers_in_state_dict_checkpoints_and_to(tmp_path, case: Case) -> None:
    model = block_model("numpy", case.dtype, seed=2)
    x = np.random.default_rng(1).normal(size=(6, 2, 8, 8)).astype(case.dtype)
    opt = xc.SGD(0.05, momentum=0.9)
    for _ in range(2):
        model.train_batch(x, np.arange(6) % 3)
        opt.step(model.parameters())
    names = list(model.buffers())
    assert "residual_0.shortcut.batchnorm2d_0.running_var" in names and len(names) == 12
    state = model.state_dict()
    assert set(names) <= set(state) and state["batchnorm2d_0.running_var"].dtype == case.dtype
    assert not np.allclose(state["batchnorm2d_0.running_mean"], 0.0)
    model.eval()
    ref = model.backend.to_numpy(model.predict(x))
    xc.save_model(model, tmp_path / "m.npz")
    loaded = xc.load_model(tmp_path / "m.npz", backend=case.backend)
    assert loaded.get_config() == model.get_config()
    close_composed(
        case, loaded.predict(case.asarray(x)), ref.astype(np.float64), "reloaded predictions"
    )
    model.to(case.backend)
    for k, v in model.buffers().items():
        assert case.backend.owns(v), k
        np.testing.assert_array_equal(case.to_numpy(v), state[k].astype(np.float64), err_msg=k)
    close_composed(
        case, model.predict(case.asarray(x)), ref.astype(np.float64), "moved predictions"
    )
    bad = dict(state)
    del bad["batchnorm1d_0.running_mean"]
    with pytest.raises(ValueError, match="batchnorm1d_0.running_mean"):
        model.load_state_dict(bad)


def test_training_resume_is_exact_with_buffers(tmp_path) -> None:
    r = np.random.default_rng(0)
    x, y = r.normal(size=(40, 2, 8, 8)).astype(np.float32), r.integers(0, 3, size=40)

    def trainer():
        return xc.Trainer(block_model("numpy", "float32"), xc.Adam(0.01), progress=False)

    full = trainer()
    full.fit(x, y, epochs=2, batch_size=8)
    part = trainer()
    part.fit(x, y, epochs=1, batch_size=8)
    xc.save_training(part, tmp_path / "t.npz")
    resumed = xc.load_training(tmp_path / "t.npz", progress=False)
    resumed.fit(x, y, epochs=2, batch_size=8)
    for k, v in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)


def test_summary_config_fusion_and_modes() -> None:
    model = block_model("numpy", "float32")
    text = model.summary(print_fn=None)
    assert "residual_0.shortcut.conv2d_0: Conv2D(6, 1x1" in text
    assert "residual_1.batchnorm2d_0: BatchNorm2D()" in text
    assert model.num_parameters() == sum(int(np.prod(p.shape)) for p in model.parameters().values())
    # the first Conv2D + MaxPool2D still run fused; the blocks are one step each
    assert isinstance(model.steps[0], ConvMaxPool)
    assert [type(s).__name__ for s in model.steps[1:4]] == ["BatchNorm2D", "ReLU", "Residual"]
    same = xc.Sequential.from_config(model.get_config(), backend="numpy")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(same.state_dict()[k], v, err_msg=k)
    unfused = block_model("numpy", "float32", fuse=False)
    x = np.random.default_rng(3).normal(size=(4, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        model.forward(x, training=True), unfused.forward(x, training=True), atol=1e-5
    )
    # train mode uses batch statistics, eval mode running ones: different outputs
    assert not np.allclose(model.forward(x, training=True), model.forward(x, training=False))


def test_block_errors() -> None:
    with pytest.raises(ValueError, match="shortcut"):
        xc.Sequential([xc.Residual([xc.Conv2D(4, 3, padding=1)])], input_shape=(2, 6, 6))
    with pytest.raises(TypeError, match="layers"):
        xc.Residual([])
    with pytest.raises(ValueError, match="momentum"):
        xc.BatchNorm2D(momentum=1.5)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        xc.Sequential([xc.BatchNorm2D()], input_shape=(4,))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        xc.Sequential([xc.GlobalAvgPool2D()], input_shape=(4, 3))


@pytest.mark.parametrize(
    "shortcut, where",
    [
        (None, "the identity shortcut (the input) gives (3, 6, 6)"),
        (1, "the shortcut gives (4, 6, 6)"),
    ],
)
def test_residual_shape_mismatch_names_both_shapes(shortcut, where: str) -> None:
    branch = [xc.nn.layers.Conv2D(8, 3, padding=1)]
    short = None if shortcut is None else [xc.nn.layers.Conv2D(4, 1)]
    message = (
        f"residual_0: the branch gives output shape (8, 6, 6) but {where}; "
        "add a shortcut such as Conv2D(..., kernel_size=1, stride=...)"
    )
    with pytest.raises(ValueError) as info:
        xc.Sequential([xc.nn.layers.Residual(branch, shortcut=short)], input_shape=(3, 6, 6))
    assert str(info.value) == message


def test_a_leading_residual_block_gives_the_input_gradient_on_request() -> None:
    """First in the model, a block computes its input gradient only when asked, and
    then exactly (central differences in float64)."""
    block = xc.nn.layers.Residual([xc.nn.layers.Conv2D(2, 3, padding=1), xc.nn.layers.Tanh()])
    model = xc.Sequential(
        [block, xc.nn.layers.Flatten()], input_shape=(2, 4, 4), seed=1, dtype="float64"
    )
    r = np.random.default_rng(0)
    x, g = r.normal(size=(2, 2, 4, 4)), r.normal(size=(2, 32))
    model.forward(x, training=True)
    assert model.backward(g, input_grad=False) is None
    model.forward(x, training=True)
    gx = model.backward(g, input_grad=True)
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += 1e-6
        down[idx] -= 1e-6
        fd[idx] = np.sum((model.forward(up) - model.forward(down)) * g) / 2e-6
    np.testing.assert_allclose(gx, fd, rtol=1e-6, atol=1e-8)
