"""qkv.ops.linear: the oneDNN path (plain and packed weights) equals a float64 product at awkward row counts and
shapes, stays out of autograd, autocast and float64, and refuses what it cannot compute in one line."""
import pytest
import torch
import torch.nn.functional as F

from qkv.ops import linear, pack_weight
from qkv.ops.linear import ONEDNN_MIN_WEIGHTS, onednn_available

f64 = torch.float64
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear")
BIG = (1152, 384)  # 442368 weights: past ONEDNN_MIN_WEIGHTS, so "auto" takes the oneDNN path


def reference(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


def close_to_float64(got, x, w, b):
    """float32 products over 384 inputs: within float32 rounding of the float64 product."""
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(x, w, b), rtol=1e-5, atol=1e-4)


def test_big_weight_is_past_the_threshold():
    assert BIG[0] * BIG[1] >= ONEDNN_MIN_WEIGHTS


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 384), (3, 384), (1, 5, 384), (2, 17, 384), (63, 384)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", ["auto", "onednn", "torch"])
def test_every_backend_equals_the_float64_product(shape, bias, backend):
    torch.manual_seed(0)
    w, b, x = torch.randn(*BIG), (torch.randn(BIG[0]) if bias else None), torch.randn(*shape)
    with torch.no_grad():
        got = linear(x, w, b, backend=backend)
    assert got.shape == (*shape[:-1], BIG[0])
    close_to_float64(got, x, w, b)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 5, 9, 33, 130])
def test_a_packed_weight_gives_the_product_of_the_weight(rows):
    torch.manual_seed(1)
    w, b = torch.randn(*BIG), torch.randn(BIG[0])
    packed = pack_weight(w)
    x = torch.randn(1, rows, BIG[1])
    with torch.no_grad():
        close_to_float64(linear(x, w, b, packed=packed), x, w, b)
        close_to_float64(linear(x, w, None, packed=packed, backend="onednn"), x, w, None)


@needs_onednn
def test_a_non_contiguous_input_gives_the_same_product():
    torch.manual_seed(2)
    w = torch.randn(*BIG)
    x = torch.randn(BIG[1], 7).t()  # (7, 384), strides transposed
    assert not x.is_contiguous()
    with torch.no_grad():
        close_to_float64(linear(x, w, None, packed=pack_weight(w)), x, w, None)
        close_to_float64(linear(x, w, None), x, w, None)


def test_with_autograd_the_product_is_differentiable_and_equal_to_f_linear():
    torch.manual_seed(3)
    w = torch.randn(*BIG, requires_grad=True)
    b = torch.randn(BIG[0], requires_grad=True)
    x = torch.randn(4, BIG[1], requires_grad=True)
    got = linear(x, w, b)  # grad enabled: F.linear, whatever the size
    got.square().sum().backward()
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    F.linear(x, w, b).square().sum().backward()
    for mine, ref in zip(grads, (x.grad, w.grad, b.grad)):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0)


def test_float64_and_autocast_keep_f_linear_results():
    torch.manual_seed(4)
    w, x = torch.randn(*BIG, dtype=f64), torch.randn(3, BIG[1], dtype=f64)
    with torch.no_grad():
        assert torch.equal(linear(x, w), F.linear(x, w))  # float64: F.linear exactly
        w32, x32 = w.float(), x.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, ref = linear(x32, w32), F.linear(x32, w32)
    assert got.dtype == ref.dtype == torch.bfloat16  # autocast's precision, as F.linear under it
    assert torch.equal(got, ref)


@needs_onednn
def test_onednn_backend_refuses_what_it_cannot_compute():
    w = torch.randn(*BIG)
    with torch.no_grad(), pytest.raises(ValueError, match="backend='onednn'.*float64"):
        linear(torch.randn(2, BIG[1], dtype=f64), w.double(), backend="onednn")
    with pytest.raises(ValueError, match="backend='onednn'.*grad on"):
        linear(torch.randn(2, BIG[1], requires_grad=True), w, backend="onednn")
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'torch', 'onednn'\), got 'fast'"):
        linear(torch.randn(2, BIG[1]), w, backend="fast")


@needs_onednn
def test_pack_weight_refuses_other_dtypes_and_shapes():
    with pytest.raises(ValueError, match="2-D float32 or bfloat16 CPU weight, got torch.float64"):
        pack_weight(torch.randn(8, 8, dtype=f64))
    with pytest.raises(ValueError, match=r"of shape \(8,\)"):
        pack_weight(torch.randn(8))
    with pytest.raises(TypeError, match="got list"):
        pack_weight([[1.0, 2.0]])


@needs_onednn
@pytest.mark.parametrize("make", [
    lambda: torch.randn(BIG[1]),                                   # one vector
    lambda: torch.randn(2, 9, BIG[1])[:, -1:],                     # the last position of each row (last_only)
    lambda: torch.randn(9, 2, BIG[1]).transpose(0, 1),             # batch and time swapped
    lambda: torch.randn(2, 3, 4, BIG[1]),                          # 4-D
    lambda: torch.randn(1, 1, BIG[1]).expand(3, 5, BIG[1]),        # stride 0
    lambda: torch.zeros(0, BIG[1]),                                # empty
], ids=["1-D", "last-position", "transposed", "4-D", "expanded", "empty"])
def test_odd_input_layouts_give_f_linear_shapes_and_values(make):
    torch.manual_seed(5)
    w, b = torch.randn(*BIG), torch.randn(BIG[0])
    x, packed = make(), pack_weight(w)
    with torch.no_grad():
        for got in (linear(x, w, b), linear(x, w, b, packed=packed)):
            assert got.shape == F.linear(x, w, b).shape
            close_to_float64(got, x, w, b)


@needs_onednn
def test_inf_and_nan_inputs_propagate_as_in_f_linear():
    w = torch.randn(*BIG)
    x = torch.zeros(2, BIG[1])
    x[0, 0], x[1, 0] = float("inf"), float("nan")
    with torch.no_grad():
        got, ref = linear(x, w, packed=pack_weight(w)), F.linear(x, w)
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.isinf(), ref.isinf())


@needs_onednn
@pytest.mark.parametrize("rows", [1, 5, 17])
def test_a_packed_bfloat16_weight_gives_f_linears_bfloat16_product(rows):
    torch.manual_seed(6)
    w, b = torch.randn(*BIG, dtype=torch.bfloat16), torch.randn(BIG[0], dtype=torch.bfloat16)
    x = torch.randn(1, rows, BIG[1], dtype=torch.bfloat16)
    with torch.no_grad():
        got, ref = linear(x, w, b, packed=pack_weight(w)), F.linear(x, w, b)
        assert linear(x, w, b).dtype == torch.bfloat16
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), rtol=1.6e-2, atol=1e-1)  # bfloat16 rounding at most


@needs_onednn
@pytest.mark.parametrize("shape", [(768, 256), (1152, 384), (256, 1024)])
def test_a_packed_product_gives_each_row_the_same_bits_whatever_the_number_of_rows(shape):
    """Batch invariance: a sentence decoded in a batch gets the bits it gets alone (MKL's F.linear does not:
    1, 2, 3 and 5 rows differed from the rest on this machine)."""
    torch.manual_seed(7)
    w = torch.randn(*shape)
    packed, x = pack_weight(w), torch.randn(256, shape[1])
    with torch.no_grad():
        full = linear(x, w, packed=packed)
        for rows in (1, 2, 3, 4, 5, 8, 17, 64, 100):
            assert torch.equal(linear(x[:rows], w, packed=packed), full[:rows]), rows


@needs_onednn
def test_a_packed_copy_of_another_weight_is_refused_not_multiplied():
    w = torch.randn(*BIG)
    for other in (torch.randn(768, BIG[1]), w.bfloat16()):
        with torch.no_grad(), pytest.raises(ValueError, match="packed is the copy of a .* not of this"):
            linear(torch.randn(2, BIG[1]), w, packed=pack_weight(other))
