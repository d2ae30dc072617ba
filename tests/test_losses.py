"""The discriminative loss against a slow loop-by-loop reference, and the memory bank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from miragedet.model.config import LossConfig
from miragedet.model.losses import MemoryBank, MiraGeLoss, discriminative_loss


def reference_loss(z, y, bank_z=None, bank_y=None, tau=0.07):
    """Eq. 5 written out: per anchor i in Z, positives P(i) and all-but-self A(i) in Z U M."""
    members = [(z[j], int(y[j]), j) for j in range(len(z))]
    if bank_z is not None:
        members += [(bank_z[k], int(bank_y[k]), None) for k in range(len(bank_z))]
    per_anchor = []
    for i in range(len(z)):
        others = [(v, label) for v, label, j in members if j != i]
        denom = sum(math.exp(float(z[i] @ v) / tau) for v, _ in others)
        positives = [v for v, label in others if label == int(y[i])]
        if not positives:
            continue
        total = sum(math.log(math.exp(float(z[i] @ p) / tau) / denom) for p in positives)
        per_anchor.append(-total / len(positives))
    return sum(per_anchor) / len(per_anchor)


def unit(n, d, seed):
    return F.normalize(
        torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
        dim=-1,
    )


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("bank", [0, 7])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_loss_equals_loop_reference_with_text_anchors(n_classes, bank, tau):
    images, texts = unit(10, 16, 1), unit(n_classes, 16, 2)
    labels = torch.arange(10) % n_classes
    z = torch.cat([images, texts])
    y = torch.cat([labels, torch.arange(n_classes)])
    bank_z = unit(bank, 16, 3) if bank else None
    bank_y = (torch.arange(bank) * 3) % n_classes if bank else None
    ours = discriminative_loss(z, y, bank_z, bank_y, tau)
    assert ours.item() == pytest.approx(reference_loss(z, y, bank_z, bank_y, tau), rel=1e-9)


def test_anchor_without_positive_is_left_out():
    z, y = unit(4, 8, 5), torch.tensor([0, 0, 1, 2])  # classes 1 and 2 have no partner
    ours = discriminative_loss(z, y, tau=0.1)
    assert ours.item() == pytest.approx(reference_loss(z, y, tau=0.1), rel=1e-9)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_mirage_loss_is_ce_plus_lambda_times_reference(n_classes):
    torch.manual_seed(0)
    images, texts = unit(8, 12, 7).float(), unit(n_classes, 12, 8).float()
    labels = torch.arange(8) % n_classes
    logits = torch.randn(8, n_classes)
    loss_fn = MiraGeLoss(LossConfig(lambda_dis=0.5, tau=0.1, bank_size=5), dim=12)
    past = unit(6, 12, 9).float()
    loss_fn.bank.push(past, torch.arange(6) % n_classes)
    bank_z, bank_y = loss_fn.bank.contents()
    out = loss_fn(logits, images, texts, labels)
    z = torch.cat([images, texts]).double()
    y = torch.cat([labels, torch.arange(n_classes)])
    expected_dis = reference_loss(z, y, bank_z.double(), bank_y, tau=0.1)
    assert out.dis.item() == pytest.approx(expected_dis, rel=1e-5)
    assert out.ce.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(out.ce.item() + 0.5 * expected_dis, rel=1e-5)
    # The step pushed this batch: the bank now ends with it.
    torch.testing.assert_close(loss_fn.bank.contents()[0][-5:], images[-5:])


def test_without_text_anchors_only_images_are_anchors():
    images, texts = unit(6, 8, 1).float(), unit(2, 8, 2).float()
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    loss_fn = MiraGeLoss(LossConfig(text_anchors=False, bank_size=0, tau=0.2), dim=8)
    out = loss_fn(torch.zeros(6, 2), images, texts, labels)
    assert out.dis.item() == pytest.approx(
        reference_loss(images.double(), labels, tau=0.2), rel=1e-5
    )


def test_bank_is_fifo_and_bounded():
    bank = MemoryBank(size=5, dim=3)
    assert len(bank) == 0 and bank.contents()[0].shape == (0, 3)
    stream = torch.arange(36, dtype=torch.float32).reshape(12, 3)
    labels = torch.arange(12)
    bank.push(stream[:3], labels[:3])
    assert len(bank) == 3 and bank.contents()[1].tolist() == [0, 1, 2]
    bank.push(stream[3:7], labels[3:7])
    assert len(bank) == 5 and bank.contents()[1].tolist() == [2, 3, 4, 5, 6]
    bank.push(stream[7:], labels[7:])  # a batch larger than the bank keeps its newest entries
    feats, labs = bank.contents()
    assert labs.tolist() == [7, 8, 9, 10, 11]
    torch.testing.assert_close(feats, stream[7:])


def test_bank_entries_carry_no_gradient():
    bank = MemoryBank(size=4, dim=3)
    x = torch.randn(4, 3, requires_grad=True)
    bank.push(x * 2, torch.tensor([0, 1, 0, 1]))
    feats, _ = bank.contents()
    assert not feats.requires_grad and feats.grad_fn is None
    anchors = F.normalize(torch.randn(4, 3), dim=-1).requires_grad_()
    leaf_bank = F.normalize(torch.randn(3, 3), dim=-1).requires_grad_()
    loss = discriminative_loss(
        anchors, torch.tensor([0, 1, 0, 1]), leaf_bank, torch.tensor([0, 1, 1])
    )
    loss.backward()
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0
    assert leaf_bank.grad is None


def test_zero_bank_size_disables_the_bank():
    images, texts = unit(6, 8, 4).float(), unit(2, 8, 5).float()
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    loss_fn = MiraGeLoss(LossConfig(bank_size=0, tau=0.1), dim=8)
    for _ in range(3):
        out = loss_fn(torch.zeros(6, 2), images, texts, labels)
    z = torch.cat([images, texts]).double()
    y = torch.cat([labels, torch.tensor([0, 1])])
    assert out.dis.item() == pytest.approx(reference_loss(z, y, tau=0.1), rel=1e-5)
    assert len(loss_fn.bank) == 0


def test_lambda_zero_is_plain_cross_entropy():
    logits = torch.randn(4, 2)
    labels = torch.tensor([0, 1, 1, 0])
    loss_fn = MiraGeLoss(LossConfig.for_method("multimodal"), dim=8)
    out = loss_fn(logits, unit(4, 8, 1).float(), unit(2, 8, 2).float(), labels)
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    with pytest.raises(ValueError):
        LossConfig(tau=0)
