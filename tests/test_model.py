"""The network: exactly the notebook's MLP, and a LightningModule that trains it."""

import pytest
import torch
from torch import nn

from timit_lit.models import PhoneClassifier


class NotebookClassifier(nn.Module):
    """The course notebook's model, copied as published."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(429, 1024)
        self.layer2 = nn.Linear(1024, 512)
        self.layer3 = nn.Linear(512, 128)
        self.out = nn.Linear(128, 39)
        self.act_fn = nn.Sigmoid()

    def forward(self, x):
        x = self.act_fn(self.layer1(x))
        x = self.act_fn(self.layer2(x))
        x = self.act_fn(self.layer3(x))
        return self.out(x)


def test_default_network_is_the_notebooks():
    net = PhoneClassifier().net
    assert [type(m) for m in net] == [nn.Linear, nn.Sigmoid] * 3 + [nn.Linear]
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)] == [
        (429, 1024), (1024, 512), (512, 128), (128, 39)
    ]
    assert sum(p.numel() for p in net.parameters()) == 1_035_815


def test_same_seed_same_weights_and_outputs_as_the_notebook():
    torch.manual_seed(0)
    ours = PhoneClassifier()
    torch.manual_seed(0)
    theirs = NotebookClassifier()
    for a, b in zip(ours.net.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    x = torch.randn(5, 429)
    assert torch.equal(ours(x), theirs(x))


def test_widths_and_activation_are_configurable():
    model = PhoneClassifier(input_dim=39, num_classes=10, hidden_sizes=(16,), activation="relu")
    assert model(torch.randn(3, 39)).shape == (3, 10)
    assert isinstance(model.net[1], nn.ReLU) and len(model.net) == 3


def test_a_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = PhoneClassifier(lr=1e-3)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-3
    x, y = torch.randn(64, 429), torch.randint(0, 39, (64,))
    model.log = lambda *args, **kwargs: None  # no trainer here
    losses = []
    for _ in range(5):
        loss = model.training_step((x, y), 0)
        assert loss.item() == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-6)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_predict_step_returns_row_ids_classes_and_posteriors():
    model = PhoneClassifier()
    rows, classes, posteriors = model.predict_step((torch.randn(4, 429), torch.tensor([7, 8, 9, 10])), 0)
    assert rows.tolist() == [7, 8, 9, 10] and classes.shape == (4,) and classes.max() < 39
    assert posteriors.shape == (4, 39) and torch.allclose(posteriors.sum(1), torch.ones(4))
    assert torch.equal(posteriors.argmax(1), classes)
