import pytest

from transferkit.errors import UserError
from transferkit.training import resolve_precision


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, "fp32"),
    ({"avx512f", "avx512bw"}, "fp32"),  # AVX-512 without bf16: emulated, slower than fp32
    ({"avx512f", "avx512_bf16"}, "bf16"),
    ({"amx_tile", "amx_bf16"}, "bf16"),
])
def test_auto_picks_bf16_only_with_native_support(flags, expected):
    choice = resolve_precision("auto", flags)
    assert choice.name == expected
    assert choice.reason.startswith("auto:")


def test_explicit_choice_wins():
    assert resolve_precision("fp32", {"avx512_bf16"}).name == "fp32"
    slow = resolve_precision("bf16", {"avx2"})
    assert slow.name == "bf16" and "slow" in slow.reason


def test_unknown_precision():
    with pytest.raises(UserError, match="--precision"):
        resolve_precision("fp8", set())


def test_fp16_loss_scale_travels_in_the_checkpoint():
    """GradScaler backs off from its initial 65536 where fp16 gradients overflow; a resumed fit must go on from
    the scale it had reached, not start over (the steps it would skip again would change the weights)."""
    import json

    import torch
    from torch import nn

    from transferkit.errors import Interrupted
    from transferkit.training import FitHooks, FitPlan, FitState, TensorBatches, fit

    torch.manual_seed(0)
    x = torch.randn(256, 4) * 100  # large gradients: inf in fp16 at the initial scale
    y = (x[:, 0] > 0).long()
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    saved = []
    fit(model, optimizer, TensorBatches(x, y, 16, seed=0), x, y, FitPlan(epochs=1, autocast_dtype=torch.float16),
        hooks=FitHooks(on_checkpoint=lambda s: saved.append(json.loads(json.dumps(s.to_dict())))))  # as the checkpoint keeps it
    scale = saved[-1]["loss_scale"]["scale"]
    assert scale < 65536.0
    resumed = FitState.from_dict(saved[-1])
    again = []
    with pytest.raises(Interrupted):  # stopped after one step of the resumed fit's second epoch
        fit(model, optimizer, TensorBatches(x, y, 16, seed=1), x, y, FitPlan(epochs=2, autocast_dtype=torch.float16),
            state=resumed, hooks=FitHooks(on_checkpoint=lambda s: again.append(dict(s.loss_scale)),
                                          should_stop=lambda: True))
    assert again[-1]["scale"] == scale  # one step later: no overflow at the reached scale, none re-learned
