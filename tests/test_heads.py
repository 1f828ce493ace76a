"""DINO head and AAM-softmax: shapes, prototype layer, margin math by hand, removed classes."""

import math

import torch

from ssrl.models.heads import AAMSoftmax, DINOHead


def _aam(margin: float) -> AAMSoftmax:
    head = AAMSoftmax(embed_dim=2, n_classes=3, scale=10.0, margin=margin)
    with torch.no_grad():  # prototypes at 0, 90 and 180 degrees
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    return head


def test_aam_without_margin_is_scaled_cosine_softmax():
    head = _aam(margin=0.0)
    emb = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([1, 0])
    s = 1 / math.sqrt(2)
    cos = [[1.0, 0.0, -1.0], [s, s, -s]]
    expected = []
    for row, y in zip(cos, labels.tolist()):
        logits = [10.0 * c for c in row]
        expected.append(math.log(sum(math.exp(z) for z in logits)) - logits[y])
    torch.testing.assert_close(head(emb, labels), torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_arcface_logit_by_hand():
    head = _aam(margin=0.2)
    theta = 0.5  # embedding at 0.5 rad from prototype 0
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    logits = head.logits(emb, torch.tensor([0]))
    assert math.isclose(logits[0, 0].item(), 10.0 * math.cos(0.7), rel_tol=1e-5)
    # non-target logits carry no margin
    assert math.isclose(logits[0, 1].item(), 10.0 * math.cos(math.pi / 2 - theta), rel_tol=1e-5)
    # theta + m > pi: fallback cos(theta) - m * sin(pi - m); here theta = pi - 0.1
    theta = math.pi - 0.1
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    logit = head.logits(emb, torch.tensor([0]))[0, 0].item()
    assert math.isclose(
        logit, 10.0 * (math.cos(theta) - 0.2 * math.sin(math.pi - 0.2)), rel_tol=1e-5
    )


def test_removed_class_has_zero_probability():
    head = _aam(margin=0.2)
    emb = torch.tensor([[1.0, 0.05], [-1.0, 0.1], [0.1, 1.0]])
    active = torch.tensor([False, True, True])
    cos = head.cosine(emb, active)
    assert torch.isinf(cos[:, 0]).all() and (cos[:, 0] < 0).all()
    assert 0 not in cos.argmax(dim=1).tolist()  # emb 0 is nearest to the removed prototype
    probs = torch.softmax(head.logits(emb, torch.tensor([1, 2, 1]), active), dim=1)
    assert (probs[:, 0] == 0).all()
    loss = head(emb, torch.tensor([1, 2, 1]), active)
    assert torch.isfinite(loss).all()
    # the loss ignores the removed class: same as a 2-class head without it
    small = AAMSoftmax(2, 2, scale=10.0, margin=0.2)
    with torch.no_grad():
        small.weight.copy_(head.weight[1:])
    torch.testing.assert_close(loss, small(emb, torch.tensor([0, 1, 0])))
    # a sample labelled with a removed class cannot be fitted
    assert torch.isinf(head(emb[:1], torch.tensor([0]), active)).all()
    loss.sum().backward()
    assert torch.isfinite(head.weight.grad).all()


def test_aam_float32_under_autocast():
    head = _aam(margin=0.2)
    emb = torch.randn(4, 2)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(emb.bfloat16(), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, head(emb.bfloat16().float(), labels))


def test_dino_head_shapes_and_last_layer():
    torch.manual_seed(0)
    head = DINOHead(in_dim=16, out_dim=100, hidden_dim=32, bottleneck_dim=8)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 100)
    # logits are cosines between the normalised bottleneck and unit-norm prototypes
    assert out.abs().max() <= 1.0 + 1e-5
    last = head.last_layer_parameters()
    assert [tuple(p.shape) for p in last] == [(100, 8), (100, 1)]
    assert {id(p) for p in last} == {id(head.last_layer.v), id(head.last_layer.g)}
    assert not head.last_layer.g.requires_grad  # norm fixed at 1
    assert torch.equal(head.last_layer.g, torch.ones(100, 1))
    others = {id(p) for p in head.parameters()} - {id(p) for p in last}
    assert len(others) == 3 * 2 + 2 * 2  # three linears (w, b) and two BNs (w, b)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 32), (32, 8)]
    assert all((m.bias == 0).all() for m in linears)
    free = DINOHead(16, 10, 32, 8, norm_last_layer=False)
    assert free.last_layer.g.requires_grad


def test_dino_head_prototype_norm_is_fixed():
    torch.manual_seed(1)
    head = DINOHead(in_dim=16, out_dim=50, hidden_dim=32, bottleneck_dim=8).eval()
    x = torch.randn(3, 16)
    before = head(x)
    with torch.no_grad():
        head.last_layer.v.mul_(7.0)
    torch.testing.assert_close(head(x), before)
