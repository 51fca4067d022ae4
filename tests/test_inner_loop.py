"""The inner loop against references: a hand-unrolled update, central finite differences and ``higher`` 0.2.1.

The model is a float64 miniature of the acoustic model's speaker conditioning: a convolution, a speaker vector
projected and added inside a tanh, and a layer norm whose gain offset and bias are per-speaker -- the fast weights
(``slot_embedding``, ``slot_norm``) are the speaker; everything else is shared (θ).
"""

from __future__ import annotations

import weakref

import higher
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from metatts.adapt.adapters import SGDAdapter
from metatts.meta import InnerLR, adapt, fine_tune, make_loss_fn

FAST = ("slot_embedding", "slot_norm")
STEPS = 3


class TinySpeakerNet(nn.Module):
    def __init__(self, channels: int = 2, hidden: int = 4, speaker_dim: int = 3, out: int = 2):
        super().__init__()
        self.conv = nn.Conv1d(channels, hidden, 3, padding=1)
        self.project = nn.Linear(speaker_dim, hidden)
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.head = nn.Linear(hidden, out)
        self.slot_embedding = nn.Parameter(torch.randn(speaker_dim))
        self.slot_norm = nn.Parameter(0.3 * torch.randn(2, hidden))  # gain offset, bias

    def forward(self, x: Tensor) -> Tensor:  # x [B, C, T] -> [B, T, out]
        h = torch.tanh(self.conv(x).transpose(1, 2) + self.project(self.slot_embedding))
        return self.head(self.norm(h) * (1 + self.slot_norm[0]) + self.slot_norm[1])


def mse(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).pow(2).mean()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def episode():
    torch.manual_seed(0)
    model = TinySpeakerNet().double()
    g = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return model, (randn(4, 2, 6), randn(4, 6, 2)), (randn(3, 2, 6), randn(3, 6, 2))


def fast_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if n in FAST}


def shared_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if n not in FAST}


def support_loss(model, support):
    x, y = support
    return make_loss_fn(model, None, (x,), lambda out: mse(out, y))


def query_loss(model, query, fast):
    x, y = query
    return mse(functional_call(model, fast, (x,)), y)


def meta_grads(model, support, query, lr, *, first_order=False, l2_anchor=0.0, steps=STEPS, extra=()):
    """Gradients of the query loss after the inner loop wrt every model parameter (and ``extra`` tensors)."""
    result = adapt(support_loss(model, support), fast_of(model), steps, lr, first_order=first_order,
                   l2_anchor=l2_anchor)
    loss = query_loss(model, query, result.fast)
    params = list(model.parameters()) + list(extra)
    return [g for g in torch.autograd.grad(loss, params)]


def finite_difference(fn, tensors: list[Tensor], eps: float = 1e-6) -> list[Tensor]:
    """Central differences of the scalar ``fn()`` wrt every element of ``tensors`` (perturbed in place)."""
    grads = []
    with torch.no_grad():
        for t in tensors:
            g = torch.zeros_like(t)
            flat, gflat = t.view(-1), g.view(-1)
            for i in range(flat.numel()):
                orig = flat[i].item()
                flat[i] = orig + eps
                up = fn()
                flat[i] = orig - eps
                down = fn()
                flat[i] = orig
                gflat[i] = (up - down) / (2 * eps)
            grads.append(g)
    return grads


def assert_close_rel(actual: list[Tensor], expected: list[Tensor], tol: float = 1e-6) -> None:
    a = torch.cat([t.reshape(-1) for t in actual])
    e = torch.cat([t.reshape(-1) for t in expected])
    rel = ((a - e).norm() / e.norm()).item()
    assert rel < tol, f"relative error {rel:.2e} >= {tol:.0e}"


# ----------------------------------------------------------------------------------------------- basic behaviour

def test_zero_steps_is_the_plain_loss(episode):
    model, support, query = episode
    result = adapt(support_loss(model, support), fast_of(model), 0, 0.1)
    assert result.losses == []
    assert all(result.fast[n] is p for n, p in fast_of(model).items())
    expected = torch.autograd.grad(mse(model(query[0]), query[1]), list(model.parameters()))
    assert_close_rel(meta_grads(model, support, query, 0.1, steps=0), list(expected), tol=1e-14)


def test_fast_weights_equal_a_hand_unrolled_update(episode):
    model, support, query = episode
    lr = {"slot_embedding": torch.tensor(0.2, dtype=torch.float64),
          "slot_norm": torch.full((2, 4), 0.05, dtype=torch.float64)}
    result = adapt(support_loss(model, support), fast_of(model), STEPS, lr)

    x, y = support
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(STEPS):
        fast = {n: params[n].clone().requires_grad_() for n in FAST}
        loss = mse(functional_call(model, {**params, **fast}, (x,)), y)
        grads = torch.autograd.grad(loss, list(fast.values()))
        losses.append(loss.item())
        for n, g in zip(FAST, grads):
            params[n] = params[n] - lr[n] * g
    for n in FAST:
        torch.testing.assert_close(result.fast[n], params[n], rtol=1e-12, atol=1e-12)
    assert [loss.item() for loss in result.losses] == pytest.approx(losses, rel=1e-12)
    assert losses[-1] < losses[0]  # the steps do descend the support loss


def hand_unrolled(model, support, rates: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """φ_1 … φ_k of plain SGD on the support loss, step i at ``rates[i]``, written out without the library."""
    x, y = support
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    path = []
    for rate in rates:
        fast = {n: params[n].clone().requires_grad_() for n in FAST}
        grads = torch.autograd.grad(mse(functional_call(model, {**params, **fast}, (x,)), y), list(fast.values()))
        for n, g in zip(FAST, grads):
            params[n] = params[n] - rate[n] * g
        path.append({n: params[n] for n in FAST})
    return path


def test_per_step_rates_equal_a_hand_unrolled_update_and_the_last_is_reused(episode):
    model, support, _ = episode
    g = torch.Generator().manual_seed(5)
    rates = [{"slot_embedding": torch.tensor(0.1 + 0.1 * i, dtype=torch.float64),
              "slot_norm": 0.02 + 0.1 * torch.rand(2, 4, generator=g, dtype=torch.float64)} for i in range(STEPS)]
    loss_fn = support_loss(model, support)
    result = adapt(loss_fn, fast_of(model), STEPS + 2, rates, keep_path=True)
    expected = hand_unrolled(model, support, rates + [rates[-1]] * 2)  # steps past the list reuse its last rate
    assert len(result.path) == STEPS + 2 and result.path[-1] is result.fast
    for got, want in zip(result.path, expected):
        for n in FAST:
            torch.testing.assert_close(got[n], want[n], rtol=1e-12, atol=1e-12)
    # The rates really are per step: one shared rate gives other weights.
    shared = adapt(loss_fn, fast_of(model), STEPS, rates[0]).fast
    assert not torch.allclose(shared["slot_norm"], result.path[STEPS - 1]["slot_norm"])
    # In pieces (what the test-time SGDAdapter does), each piece picks up the schedule where the last one stopped.
    adapter = SGDAdapter(loss_fn, fast_of(model), rates)
    adapter.advance(1)
    adapter.advance(STEPS + 1)
    for n in FAST:
        torch.testing.assert_close(adapter.params()[n], expected[-1][n], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least one rate"):
        adapt(loss_fn, fast_of(model), 1, [])


def test_inputs_are_not_modified_and_no_graph_mode_matches(episode):
    model, support, _ = episode
    before = {n: p.detach().clone() for n, p in fast_of(model).items()}
    tracked = adapt(support_loss(model, support), fast_of(model), STEPS, 0.1)
    with torch.no_grad():  # test-time callers may sit in no_grad; the inner gradient must still be computed
        untracked = adapt(support_loss(model, support), fast_of(model), STEPS, 0.1, differentiable=False)
    for n in FAST:
        assert torch.equal(model.get_parameter(n), before[n])
        assert untracked.fast[n].grad_fn is None and not untracked.fast[n].requires_grad
        torch.testing.assert_close(untracked.fast[n], tracked.fast[n].detach(), rtol=1e-13, atol=1e-13)


def test_learning_rates_must_name_the_fast_weights(episode):
    model, support, _ = episode
    with pytest.raises(KeyError, match="slot_norm"):
        adapt(support_loss(model, support), fast_of(model), 1, {"slot_embedding": torch.tensor(0.1)})
    with pytest.raises(ValueError, match="steps"):
        adapt(support_loss(model, support), fast_of(model), -1, 0.1)


def test_unused_fast_weight_is_kept_and_still_reaches_the_outer_gradient():
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    unused = torch.randn(2, dtype=torch.float64, requires_grad=True)
    result = adapt(lambda f: f["w"].pow(2).sum(), {"w": w, "u": unused}, 2, 0.1)
    assert torch.equal(result.fast["u"], unused)
    (result.fast["w"].sum() + result.fast["u"].sum()).backward()
    torch.testing.assert_close(unused.grad, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(w.grad, torch.full((3,), 0.8 ** 2, dtype=torch.float64))  # (1 − 2·0.1)^2


# ----------------------------------------------------------------------------------------------- meta-gradients

@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("mode", ["per_parameter", "per_tensor"])
def test_second_order_meta_gradient_matches_finite_differences(episode, mode, per_step):
    model, support, query = episode
    inner_lr = InnerLR(fast_of(model), init=0.3, mode=mode, steps=STEPS if per_step else None).double()
    with torch.no_grad():  # distinct rates per element, so a mix-up between elements would show
        for raw in inner_lr.raw.values():
            raw.add_(0.2 * torch.randn_like(raw))
    tensors = list(model.parameters()) + list(inner_lr.parameters())
    analytic = meta_grads(model, support, query, inner_lr.rates(), extra=list(inner_lr.parameters()))

    def outer() -> float:
        fast = adapt(support_loss(model, support), fast_of(model), STEPS, inner_lr.rates(), differentiable=False)
        return query_loss(model, query, fast.fast).item()

    assert_close_rel(analytic, finite_difference(outer, tensors))


def test_l2_anchored_meta_gradient_matches_finite_differences(episode):
    model, support, query = episode
    analytic = meta_grads(model, support, query, 0.2, l2_anchor=0.7)

    def outer() -> float:
        fast = adapt(support_loss(model, support), fast_of(model), STEPS, 0.2, l2_anchor=0.7, differentiable=False)
        return query_loss(model, query, fast.fast).item()

    assert_close_rel(analytic, finite_difference(outer, list(model.parameters())))


def _higher_episode(model, support, query, lrs: list[Tensor], track_higher_grads: bool):
    """The same episode through ``higher``: SGD over the fast weights only, one param group each (its own LR)."""
    fast = fast_of(model)
    opt = torch.optim.SGD([{"params": [p]} for p in fast.values()], lr=0.0)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False,
                              track_higher_grads=track_higher_grads) as (fmodel, diffopt):
        for _ in range(STEPS):
            diffopt.step(mse(fmodel(support[0]), support[1]), override={"lr": lrs})
        loss = mse(fmodel(query[0]), query[1])
        if track_higher_grads:
            return torch.autograd.grad(loss, list(model.parameters()) + lrs)
        # First order: higher detaches every parameter at each step, so the gradient wrt the final (leaf) copies is
        # the FOMAML meta-gradient for θ and φ0 (∂φ_k/∂φ_0 = I when inner gradients are constants).
        return torch.autograd.grad(loss, fmodel.parameters())


def test_second_order_matches_higher(episode):
    model, support, query = episode
    lrs = [torch.tensor(0.3, dtype=torch.float64, requires_grad=True),  # per tensor
           (0.05 + 0.1 * torch.rand(2, 4, dtype=torch.float64)).requires_grad_()]  # per element
    ours = meta_grads(model, support, query, dict(zip(FAST, lrs)), extra=lrs)
    theirs = _higher_episode(model, support, query, lrs, track_higher_grads=True)
    assert_close_rel(ours, list(theirs), tol=1e-10)


def test_first_order_matches_higher(episode):
    model, support, query = episode
    lrs = [torch.tensor(0.3, dtype=torch.float64), torch.full((2, 4), 0.1, dtype=torch.float64)]
    ours = meta_grads(model, support, query, dict(zip(FAST, lrs)), first_order=True)
    theirs = _higher_episode(model, support, query, lrs, track_higher_grads=False)
    assert_close_rel(ours, list(theirs), tol=1e-10)


def test_first_order_learning_rate_gradient_is_minus_the_sum_of_inner_gradients(episode):
    # φ_k = φ_0 − α Σ_i g_i with g_i constants, so ∂L_q/∂α = −Σ_i g_i ⊙ ∂L_q/∂φ_k (per element).
    model, support, query = episode
    alpha = torch.full((2, 4), 0.1, dtype=torch.float64, requires_grad=True)
    lr = {"slot_embedding": 0.2, "slot_norm": alpha}
    (d_alpha,) = meta_grads(model, support, query, lr, first_order=True, extra=[alpha])[-1:]

    fast = {n: p.detach().clone() for n, p in fast_of(model).items()}
    loss_fn = support_loss(model, support)
    grad_sum = torch.zeros(2, 4, dtype=torch.float64)
    for _ in range(STEPS):
        fast = {n: t.requires_grad_() for n, t in fast.items()}
        grads = dict(zip(FAST, torch.autograd.grad(loss_fn(fast), list(fast.values()))))
        grad_sum += grads["slot_norm"]
        fast = {n: (fast[n] - (alpha.detach() if n == "slot_norm" else 0.2) * grads[n]).detach() for n in FAST}
    fast = {n: t.requires_grad_() for n, t in fast.items()}
    d_phi = torch.autograd.grad(query_loss(model, query, fast), fast["slot_norm"])[0]
    torch.testing.assert_close(d_alpha, -grad_sum * d_phi, rtol=1e-10, atol=1e-14)


def test_first_order_differs_from_second_order(episode):
    model, support, query = episode
    second = meta_grads(model, support, query, 0.3)
    first = meta_grads(model, support, query, 0.3, first_order=True)
    names = [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, second, first):
        # The dropped terms are curvature terms: every parameter's meta-gradient changes.
        assert (a - b).norm() > 1e-3 * a.norm(), name


def test_l2_anchor_changes_the_update_as_derived(episode):
    model, support, _ = episode
    lam, lr = 0.5, 0.2
    loss_fn = support_loss(model, support)
    plain = adapt(loss_fn, fast_of(model), 2, lr, differentiable=False).fast
    anchored = adapt(loss_fn, fast_of(model), 2, lr, l2_anchor=lam, differentiable=False).fast
    phi0 = {n: p.detach() for n, p in fast_of(model).items()}
    # Step 1 is identical (φ_0 − φ_0 = 0); step 2 adds 2λ(φ_1 − φ_0) to the gradient.
    phi1 = adapt(loss_fn, phi0, 1, lr, differentiable=False).fast
    g1 = {n: (phi1[n] - plain[n]) / lr for n in FAST}  # ∇L(φ_1), read off the plain second step
    for n in FAST:
        expected = phi1[n] - lr * (g1[n] + 2 * lam * (phi1[n] - phi0[n]))
        torch.testing.assert_close(anchored[n], expected, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(anchored[n], plain[n])


def test_make_loss_fn_frozen_values_replace_the_modules_own(episode):
    model, support, _ = episode
    frozen = {n: torch.zeros_like(p) for n, p in shared_of(model).items()}
    fast = {n: p.detach() for n, p in fast_of(model).items()}
    x, y = support
    # With every shared weight zero the output is the head's zero bias: the loss is just mean(y²).
    loss = make_loss_fn(model, frozen, (x,), lambda out: mse(out, y))(fast)
    assert loss.item() == pytest.approx(y.pow(2).mean().item())


# ----------------------------------------------------------------------------------------------- learned LRs

def test_inner_lr_shapes_values_and_names():
    fast = {"speaker.slot_embedding": torch.zeros(4), "speaker.slot_norms": torch.zeros(2, 3)}
    per_param = InnerLR(fast, init=0.1)
    per_tensor = InnerLR(fast, init=0.1, mode="per_tensor", parameterization="identity")
    assert {n: t.shape for n, t in per_param.as_dict().items()} == {n: t.shape for n, t in fast.items()}
    assert all(t.shape == () for t in per_tensor.as_dict().values())
    for lrs in (per_param.as_dict(), per_tensor.as_dict()):
        assert all(torch.allclose(t, torch.tensor(0.1)) for t in lrs.values())
    assert set(per_param.state_dict()) == {"raw.speaker__slot_embedding", "raw.speaker__slot_norms"}
    with pytest.raises(ValueError, match="positive"):
        InnerLR(fast, init=0.0)


@pytest.mark.parametrize("mode", ["per_parameter", "per_tensor"])
def test_per_step_inner_lr_shapes_and_file_round_trip(mode):
    fast = {"speaker.slot_embedding": torch.zeros(4), "speaker.slot_norms": torch.zeros(2, 3)}
    per_step = InnerLR(fast, init=0.1, mode=mode, steps=3)
    with torch.no_grad():  # distinct values per step and element, so a mix-up would show
        for raw in per_step.raw.values():
            raw.add_(torch.randn_like(raw))
    rates = per_step.rates()
    assert len(rates) == 3
    assert all({n: t.shape for n, t in r.items()} ==
               {n: (t.shape if mode == "per_parameter" else ()) for n, t in fast.items()} for r in rates)
    assert not torch.equal(rates[0]["speaker.slot_norms"], rates[1]["speaker.slot_norms"])
    with pytest.raises(ValueError, match="rates()"):
        per_step.as_dict()
    info = per_step.file_info()
    assert info["steps"] == 3
    loaded = InnerLR.rates_from_file(per_step.state_dict(), info)
    assert len(loaded) == 3 and all(torch.equal(a[n], b[n]) for a, b in zip(loaded, rates) for n in fast)
    # A fresh module of the same config takes the saved state (resume) and then hands out the same rates.
    again = InnerLR(fast, init=0.5, mode=mode, steps=3)
    again.load_state_dict(per_step.state_dict())
    assert all(torch.equal(a[n], b[n]) for a, b in zip(again.rates(), rates) for n in fast)
    with pytest.raises(ValueError, match="not 4 steps"):
        InnerLR.rates_from_file(per_step.state_dict(), {**info, "steps": 4})


def test_a_rate_file_from_before_per_step_rates_still_loads():
    # The metadata and tensors as files written before per-step rates existed: no "steps" entry, no step dimension.
    info = {"mode": "per_parameter", "parameterization": "log", "names": ["speaker.slot_norms"]}
    tensors = {"raw.speaker__slot_norms": torch.log(torch.tensor([[0.1, 0.2, 0.3]]))}
    rates = InnerLR.rates_from_file(tensors, info)
    assert isinstance(rates, dict)
    torch.testing.assert_close(rates["speaker.slot_norms"], torch.tensor([[0.1, 0.2, 0.3]]))
    shared = InnerLR({"speaker.slot_norms": torch.zeros(1, 3)}, init=0.1)
    assert "steps" not in shared.file_info()  # the shared form still writes the old format
    shared.load_state_dict(tensors)
    torch.testing.assert_close(shared.as_dict()["speaker.slot_norms"], rates["speaker.slot_norms"])


def test_log_parameterized_lr_stays_positive_under_a_large_outer_step():
    fast = {"w": torch.zeros(3)}
    lrs = {"log": InnerLR(fast, init=0.1), "identity": InnerLR(fast, init=0.1, parameterization="identity")}
    for module in lrs.values():
        module.as_dict()["w"].sum().backward()
        with torch.no_grad():
            for raw in module.parameters():
                raw -= 5.0 * raw.grad  # an outer step that overshoots
    assert (lrs["log"].as_dict()["w"] > 0).all()
    assert (lrs["identity"].as_dict()["w"] < 0).all()


def test_outer_step_trains_the_inner_learning_rates(episode):
    model, support, query = episode
    inner_lr = InnerLR(fast_of(model), init=0.01, mode="per_tensor").double()
    opt = torch.optim.Adam(list(inner_lr.parameters()), lr=0.05)
    losses = []
    for _ in range(20):
        result = adapt(support_loss(model, support), fast_of(model), STEPS, inner_lr.as_dict())
        loss = query_loss(model, query, result.fast)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3  # a rate of 0.01 is far too small: learning it lowers the query loss


# ----------------------------------------------------------------------------------------------- test time

def test_fine_tune_adam_descends_and_respects_the_anchor(episode):
    model, support, _ = episode
    loss_fn = support_loss(model, support)
    start = {n: p.detach().clone() for n, p in fast_of(model).items()}
    free = fine_tune(loss_fn, fast_of(model), 30, 0.05)
    pulled = fine_tune(loss_fn, fast_of(model), 30, 0.05, l2_anchor=10.0)
    assert free.losses[-1] < 0.9 * free.losses[0]
    assert all(not t.requires_grad for t in free.fast.values())
    def distance(result):
        return sum((result.fast[n] - start[n]).norm() ** 2 for n in FAST)

    assert distance(pulled) < 0.5 * distance(free)
    sgd = fine_tune(loss_fn, fast_of(model), 3, 0.1, optimizer="sgd").fast
    reference = adapt(loss_fn, fast_of(model), 3, 0.1, differentiable=False).fast
    for n in FAST:
        torch.testing.assert_close(sgd[n], reference[n], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- memory

class SavedTensorBytes:
    """Bytes of distinct storages autograd has saved for backward that are still alive when read."""

    def __init__(self):
        self.refs: list[weakref.ref] = []

    def pack(self, t: Tensor) -> Tensor:
        self.refs.append(weakref.ref(t))
        return t

    def live_bytes(self) -> int:
        storages = {}
        for ref in self.refs:
            t = ref()
            if t is not None:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(storages.values())


def episode_graph_bytes(steps: int, first_order: bool) -> int:
    torch.manual_seed(0)
    width, batch = 64, 256
    body = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))
    speaker = torch.zeros(width, requires_grad=True)
    x, y = torch.randn(batch, width), torch.randn(batch, 1)
    counter = SavedTensorBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        result = adapt(lambda f: mse(body(x + f["s"]), y), {"s": speaker}, steps, 0.1, first_order=first_order)
        query = mse(body(x + result.fast["s"]), y)
        held = counter.live_bytes()  # what the outer backward needs alive: the peak of an episode
    query.backward()
    return held


def test_second_order_memory_grows_with_steps_and_first_order_does_not():
    second = [episode_graph_bytes(k, first_order=False) for k in (0, 1, 2, 4)]
    first = [episode_graph_bytes(k, first_order=True) for k in (0, 1, 2, 4)]
    per_step = second[1] - second[0]
    assert per_step > second[0]  # a step holds its forward activations and its backward graph: > one forward
    assert second[3] - second[0] == pytest.approx(4 * per_step, rel=0.05)  # linear in k
    assert max(first) - first[0] < 0.05 * per_step  # constant in k (only the tiny φ updates stay on the tape)
