"""CRD (Tian et al. 2020) against a transcription of the authors' code, plus the properties the method
rests on: the momentum memory update, Z fixed after the first batch, NCE monotonicity, negatives that
exclude the positive, exact resume from a state dict, and one-line errors for missing or wrong sizes.

The reference follows HobbitLong/RepDistiller ``crd/criterion.py`` (``CRDLoss``, ``ContrastLoss``,
``Embed``, ``Normalize``) and ``crd/memory.py`` (``ContrastMemory`` with explicit ``contrast_idx``; the
alias sampler and ``.cuda()`` calls are left out); mdistiller ``distillers/CRD.py`` is the same code.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.losses import build_loss
from distill.losses.crd import CRDLoss, nce_loss

EPS = 1e-7


# ----------------------------------------------------------------------------- reference (RepDistiller)
class RefNormalize(nn.Module):
    def forward(self, x):
        norm = x.pow(2).sum(1, keepdim=True).pow(1.0 / 2)
        return x.div(norm)


class RefEmbed(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = RefNormalize()

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        return self.l2norm(self.linear(x))


class RefContrastMemory(nn.Module):
    def __init__(self, input_size, output_size, K, T=0.07, momentum=0.5):
        super().__init__()
        self.register_buffer("params", torch.tensor([K, T, -1, -1, momentum]))
        stdv = 1.0 / math.sqrt(input_size / 3)
        self.register_buffer(
            "memory_v1", torch.rand(output_size, input_size).mul_(2 * stdv).add_(-stdv)
        )
        self.register_buffer(
            "memory_v2", torch.rand(output_size, input_size).mul_(2 * stdv).add_(-stdv)
        )

    def forward(self, v1, v2, y, idx):
        K = int(self.params[0].item())
        T = self.params[1].item()
        Z_v1 = self.params[2].item()
        Z_v2 = self.params[3].item()
        momentum = self.params[4].item()
        batch_size = v1.size(0)
        output_size = self.memory_v1.size(0)
        input_size = self.memory_v1.size(1)
        weight_v1 = torch.index_select(self.memory_v1, 0, idx.view(-1)).detach()
        weight_v1 = weight_v1.view(batch_size, K + 1, input_size)
        out_v2 = torch.exp(torch.div(torch.bmm(weight_v1, v2.view(batch_size, input_size, 1)), T))
        weight_v2 = torch.index_select(self.memory_v2, 0, idx.view(-1)).detach()
        weight_v2 = weight_v2.view(batch_size, K + 1, input_size)
        out_v1 = torch.exp(torch.div(torch.bmm(weight_v2, v1.view(batch_size, input_size, 1)), T))
        if Z_v1 < 0:
            self.params[2] = out_v1.mean() * output_size
            Z_v1 = self.params[2].clone().detach().item()
        if Z_v2 < 0:
            self.params[3] = out_v2.mean() * output_size
            Z_v2 = self.params[3].clone().detach().item()
        out_v1 = torch.div(out_v1, Z_v1).contiguous()
        out_v2 = torch.div(out_v2, Z_v2).contiguous()
        with torch.no_grad():
            l_pos = torch.index_select(self.memory_v1, 0, y.view(-1))
            l_pos.mul_(momentum)
            l_pos.add_(torch.mul(v1, 1 - momentum))
            l_norm = l_pos.pow(2).sum(1, keepdim=True).pow(0.5)
            self.memory_v1.index_copy_(0, y, l_pos.div(l_norm))
            ab_pos = torch.index_select(self.memory_v2, 0, y.view(-1))
            ab_pos.mul_(momentum)
            ab_pos.add_(torch.mul(v2, 1 - momentum))
            ab_norm = ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)
            self.memory_v2.index_copy_(0, y, ab_pos.div(ab_norm))
        return out_v1, out_v2


class RefContrastLoss(nn.Module):
    def __init__(self, n_data):
        super().__init__()
        self.n_data = n_data

    def forward(self, x):
        bsz = x.shape[0]
        m = x.size(1) - 1
        Pn = 1 / float(self.n_data)
        P_pos = x.select(1, 0)
        log_D1 = torch.div(P_pos, P_pos.add(m * Pn + EPS)).log_()
        P_neg = x.narrow(1, 1, m)
        log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + EPS)).log_()
        return -(log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz


class RefCRDLoss(nn.Module):
    def __init__(self, s_dim, t_dim, feat_dim, n_data, nce_k, nce_t=0.07, nce_m=0.5):
        super().__init__()
        self.embed_s = RefEmbed(s_dim, feat_dim)
        self.embed_t = RefEmbed(t_dim, feat_dim)
        self.contrast = RefContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)
        self.criterion_t = RefContrastLoss(n_data)
        self.criterion_s = RefContrastLoss(n_data)

    def forward(self, f_s, f_t, idx, contrast_idx):
        f_s = self.embed_s(f_s)
        f_t = self.embed_t(f_t)
        out_s, out_t = self.contrast(f_s, f_t, idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


# ----------------------------------------------------------------------------- helpers
N, K, FEAT, B = 40, 12, 16, 6


def paired(n=N, k=K, feat=FEAT, s_dim=10, t_dim=24, seed=0):
    """Our loss and the reference with the same heads and memory banks."""
    torch.manual_seed(seed)
    ref = RefCRDLoss(s_dim, t_dim, feat, n, k)
    ours = CRDLoss(feat_dim=feat, num_negatives=k)
    ours.build(torch.zeros(2, s_dim), torch.zeros(2, t_dim), num_samples=n)
    with torch.no_grad():
        ours.embed_student.linear.load_state_dict(ref.embed_s.linear.state_dict())
        ours.embed_teacher.linear.load_state_dict(ref.embed_t.linear.state_dict())
        # RepDistiller: memory_v1 holds student embeddings, memory_v2 teacher embeddings
        ours.memory_student.copy_(ref.contrast.memory_v1)
        ours.memory_teacher.copy_(ref.contrast.memory_v2)
    return ours, ref


def batch(step, s_dim=10, t_dim=24, n=N, k=K):
    g = torch.Generator().manual_seed(100 + step)
    index = torch.randperm(n, generator=g)[:B]
    contrast = torch.cat([index[:, None], torch.randint(0, n, (B, k), generator=g)], dim=1)
    return torch.randn(B, s_dim, generator=g), torch.randn(B, t_dim, generator=g), index, contrast


# ----------------------------------------------------------------------------- parity
def test_parity_with_repdistiller_over_steps():
    """Loss, gradients and both memory banks match the reference over 3 steps (Z set on the first)."""
    ours, ref = paired()
    for step in range(3):
        f_s, f_t, index, contrast = batch(step)
        s1, s2 = f_s.clone().requires_grad_(), f_s.clone().requires_grad_()
        mine = ours(s1, f_t, index, contrast_index=contrast)
        theirs = ref(s2, f_t, index, contrast)
        torch.testing.assert_close(mine, theirs.reshape(()), rtol=1e-5, atol=1e-5)
        mine.backward()
        theirs.sum().backward()
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-6)
        for a, b in (
            (ours.embed_student.linear.weight.grad, ref.embed_s.linear.weight.grad),
            (ours.embed_teacher.linear.weight.grad, ref.embed_t.linear.weight.grad),
        ):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        ours.zero_grad(), ref.zero_grad()
        torch.testing.assert_close(ours.memory_student, ref.contrast.memory_v1)
        torch.testing.assert_close(ours.memory_teacher, ref.contrast.memory_v2)
        torch.testing.assert_close(
            float(ours.z_student), float(ref.contrast.params[2].detach()), rtol=1e-5, atol=0
        )
        torch.testing.assert_close(
            float(ours.z_teacher), float(ref.contrast.params[3].detach()), rtol=1e-5, atol=0
        )


def test_parity_on_the_row_gathering_path():
    """Banks much larger than (K+1) x feat_dim take the gather-rows path; same numbers."""
    ours, ref = paired(n=300, k=3, feat=4)
    f_s, f_t, index, contrast = batch(0, n=300, k=3)
    torch.testing.assert_close(
        ours(f_s, f_t, index, contrast_index=contrast),
        ref(f_s, f_t, index, contrast).reshape(()),
        rtol=1e-5,
        atol=1e-5,
    )


# ----------------------------------------------------------------------------- properties
def test_memory_update_is_the_normalised_momentum_average():
    loss = build_loss("crd", feat_dim=FEAT, num_negatives=K, momentum=0.5)
    torch.manual_seed(0)
    loss.build(torch.zeros(2, 10), torch.zeros(2, 24), num_samples=N)
    f_s, f_t, index, _ = batch(0)
    before_s, before_t = loss.memory_student.clone(), loss.memory_teacher.clone()
    loss(f_s, f_t, index)
    with torch.no_grad():
        s, t = loss.embed_student(f_s), loss.embed_teacher(f_t)
    for after, before, e in (
        (loss.memory_student, before_s, s),
        (loss.memory_teacher, before_t, t),
    ):
        expected = 0.5 * before[index] + 0.5 * e
        torch.testing.assert_close(after[index], expected / expected.norm(dim=1, keepdim=True))
        torch.testing.assert_close(after[index].norm(dim=1), torch.ones(B))
        untouched = torch.ones(N, dtype=torch.bool)
        untouched[index] = False
        assert torch.equal(after[untouched], before[untouched])


def test_eval_mode_leaves_the_banks_alone_and_z_is_fixed_after_the_first_batch():
    loss = build_loss("crd", feat_dim=FEAT, num_negatives=K)
    loss.build(torch.zeros(2, 10), torch.zeros(2, 24), num_samples=N)
    assert float(loss.z_student) < 0 and float(loss.z_teacher) < 0
    f_s, f_t, index, _ = batch(0)
    loss(f_s, f_t, index)
    z = (float(loss.z_student), float(loss.z_teacher))
    assert min(z) > 0
    loss.eval()
    banks = (loss.memory_student.clone(), loss.memory_teacher.clone())
    loss(*batch(1)[:3])
    assert (float(loss.z_student), float(loss.z_teacher)) == z
    assert torch.equal(loss.memory_student, banks[0]) and torch.equal(loss.memory_teacher, banks[1])
    assert {"memory_student", "memory_teacher", "z_student", "z_teacher"} <= set(loss.state_dict())


def test_nce_loss_rewards_the_positive_and_penalises_negatives():
    """The NCE critic: the loss falls as the positive's score rises and rises with any negative's."""
    probs = torch.rand(4, 9).mul(0.01).add(1e-4).requires_grad_()
    nce_loss(probs, num_samples=100).backward()
    assert (probs.grad[:, 0] < 0).all() and (probs.grad[:, 1:] > 0).all()
    # NCE as a binary classifier data vs noise: -log D(pos) - sum log(1 - D(neg)), D = P / (P + K Pn)
    p = probs.detach()
    d = p / (p + 8 / 100)
    expected = -(d[:, 0].log().sum() + (1 - d[:, 1:]).log().sum()) / 4
    torch.testing.assert_close(nce_loss(p, 100), expected, rtol=1e-4, atol=1e-5)


def test_negatives_exclude_the_positive_and_k_is_clamped():
    loss = CRDLoss(feat_dim=4)  # K = 16384 asked, only 9 others exist
    loss.build(torch.zeros(2, 3), torch.zeros(2, 3), num_samples=10)
    assert loss.negatives == 9
    torch.manual_seed(0)
    index = torch.arange(10)
    contrast = loss.sample_contrast_index(index)
    assert contrast.shape == (10, 10)
    assert torch.equal(contrast[:, 0], index)
    assert (contrast[:, 1:] != index[:, None]).all()
    assert contrast.min() >= 0 and contrast.max() < 10
    # negatives come from torch's global RNG: reseeding reproduces them (the trainer reseeds each step)
    torch.manual_seed(0)
    assert torch.equal(loss.sample_contrast_index(index), contrast)


def test_resume_from_state_dict_is_exact():
    """Banks and Z are buffers: a fresh loss loaded from a state dict continues bit for bit."""
    first = CRDLoss(feat_dim=FEAT, num_negatives=K)
    first.build(torch.zeros(2, 10), torch.zeros(2, 24), num_samples=N)
    for step in range(2):
        torch.manual_seed(step)
        first(*batch(step)[:3])
    second = CRDLoss(feat_dim=FEAT, num_negatives=K)
    second.build(torch.zeros(2, 10), torch.zeros(2, 24), num_samples=N)
    second.load_state_dict(first.state_dict())
    torch.manual_seed(2)
    a = first(*batch(2)[:3])
    torch.manual_seed(2)
    b = second(*batch(2)[:3])
    assert torch.equal(a, b)
    assert torch.equal(first.memory_student, second.memory_student)


def test_maps_are_flattened():
    loss = CRDLoss(feat_dim=8, num_negatives=5)
    s, t = torch.randn(4, 2, 3, 3), torch.randn(4, 5, 2, 2)
    loss.build(s, t, num_samples=20)
    assert loss.embed_student.linear.in_features == 18
    assert loss.embed_teacher.linear.in_features == 20
    assert torch.isfinite(loss(s, t, torch.arange(4)))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("num_samples", [None, 1, 2.5])
def test_missing_num_samples_is_a_one_line_error(num_samples):
    with pytest.raises(DistillError, match="num_samples") as err:
        CRDLoss().build(torch.zeros(2, 3), torch.zeros(2, 3), num_samples=num_samples)
    assert "\n" not in str(err.value)


def test_index_out_of_range_is_a_one_line_error():
    loss = CRDLoss(feat_dim=4, num_negatives=3)
    loss.build(torch.zeros(2, 3), torch.zeros(2, 3), num_samples=8)
    with pytest.raises(DistillError, match="sample index 8 is out of range") as err:
        loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([1, 8]))
    assert "\n" not in str(err.value)


def test_forward_before_build_is_an_error():
    with pytest.raises(DistillError, match="build"):
        CRDLoss()(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"feat_dim": 0}, "feat_dim"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"temperature": 0.0}, "temperature"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_options(options, needle):
    with pytest.raises(ValueError, match=needle):
        CRDLoss(**options)


# ----------------------------------------------------------------------------- torch.distributed
DDP_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from distill.losses.crd import CRDLoss

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
loss = CRDLoss(feat_dim=8, num_negatives=5)
loss.build(torch.zeros(2, 6), torch.zeros(2, 10), num_samples=16)
for step in range(2):
    g = torch.Generator().manual_seed(step)
    index, f_s, f_t = torch.randperm(16, generator=g)[:8], torch.randn(8, 6, generator=g), torch.randn(8, 10, generator=g)
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    loss(f_s[part], f_t[part], index[part]).backward()
save_file({k: v.contiguous() for k, v in loss.state_dict().items()}, sys.argv[1] + f".{rank}")
dist.destroy_process_group()
"""


@pytest.mark.integration
def test_banks_stay_identical_across_ranks_and_see_the_global_batch(tmp_path):
    """Two gloo ranks with half a batch each end with the banks of one process with the whole batch, and
    with the same Z."""
    from safetensors.torch import load_file

    from helpers.torchrun import torchrun

    out = tmp_path / "banks"
    torchrun(tmp_path, "crd_ddp.py", DDP_SCRIPT, [str(out)])
    torch.manual_seed(0)
    single = CRDLoss(feat_dim=8, num_negatives=5)
    single.build(torch.zeros(2, 6), torch.zeros(2, 10), num_samples=16)
    for step in range(2):
        g = torch.Generator().manual_seed(step)
        index = torch.randperm(16, generator=g)[:8]
        single(torch.randn(8, 6, generator=g), torch.randn(8, 10, generator=g), index)
    states = [load_file(f"{out}.{rank}") for rank in (0, 1)]
    for state in states:
        for key in ("memory_student", "memory_teacher"):
            torch.testing.assert_close(state[key], single.state_dict()[key], msg=key)
    for key in (
        "z_student",
        "z_teacher",
    ):  # estimated from each rank's own negatives, then averaged
        assert torch.equal(states[0][key], states[1][key]) and float(states[0][key]) > 0
