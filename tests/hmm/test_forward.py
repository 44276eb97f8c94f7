"""Forward algorithm, joint, posteriors, Viterbi and gradients against brute-force path enumeration."""

import itertools

import pytest
import torch
from torch.testing import assert_close

from latentlm.hmm.forward import (
    expected_counts,
    forward_log_likelihood,
    joint_log_likelihood,
    posterior_marginals,
    viterbi,
)

K, V, T, B = 3, 5, 4, 3


def random_params(seed=0, scale=1.5, normalised=True):
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(K, generator=gen, dtype=torch.float64) * scale
    trans = torch.randn(K, K, generator=gen, dtype=torch.float64) * scale
    emit = torch.randn(K, V, generator=gen, dtype=torch.float64) * scale
    if normalised:
        start, trans, emit = start.log_softmax(0), trans.log_softmax(1), emit.log_softmax(1)
    return start, trans, emit


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, V, (B, T), generator=gen)
    lengths = torch.tensor([T, 2, 1])
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return obs, mask, lengths


def path_score(start, trans, emit, seq, path):
    score = start[path[0]] + emit[path[0], seq[0]]
    for t in range(1, len(seq)):
        score = score + trans[path[t - 1], path[t]] + emit[path[t], seq[t]]
    return score


def brute_force(start, trans, emit, obs, lengths):
    """All K^T paths of every sequence: (log P(O), posteriors, best path, best score) per row."""
    results = []
    for b in range(obs.shape[0]):
        seq = obs[b, : lengths[b]].tolist()
        paths = list(itertools.product(range(K), repeat=len(seq)))
        scores = torch.stack([path_score(start, trans, emit, seq, p) for p in paths])
        log_z = torch.logsumexp(scores, 0)
        probs = (scores - log_z).exp()
        post = torch.zeros(T, K, dtype=torch.float64)
        for p, w in zip(paths, probs, strict=True):
            for t, s in enumerate(p):
                post[t, s] += w
        best = int(scores.argmax())
        results.append((log_z, post, list(paths[best]), scores[best]))
    return results


@pytest.mark.parametrize("normalised", [True, False])
def test_log_likelihood_matches_enumeration(normalised):
    start, trans, emit = random_params(normalised=normalised)
    obs, mask, lengths = batch()
    expected = torch.stack([r[0] for r in brute_force(start, trans, emit, obs, lengths)])
    assert_close(forward_log_likelihood(start, trans, emit, obs, mask), expected)


def test_gradient_matches_enumeration():
    params = [p.requires_grad_() for p in random_params()]
    obs, mask, lengths = batch()
    weights = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)
    (forward_log_likelihood(*params, obs, mask) * weights).sum().backward()
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    brute = torch.stack([r[0] for r in brute_force(*params, obs, lengths)])
    (brute * weights).sum().backward()
    for mine, ref in zip(ours, [p.grad for p in params], strict=True):
        assert_close(mine, ref)


def test_gradient_through_log_softmax_matches_enumeration():
    logits = [p.requires_grad_() for p in random_params(seed=3, normalised=False)]
    obs, mask, lengths = batch(seed=4)

    def normalise(ps):
        return ps[0].log_softmax(0), ps[1].log_softmax(1), ps[2].log_softmax(1)

    forward_log_likelihood(*normalise(logits), obs, mask).sum().backward()
    ours = [p.grad.clone() for p in logits]
    for p in logits:
        p.grad = None
    torch.stack([r[0] for r in brute_force(*normalise(logits), obs, lengths)]).sum().backward()
    for mine, ref in zip(ours, [p.grad for p in logits], strict=True):
        assert_close(mine, ref)


def test_posteriors_match_enumeration():
    start, trans, emit = random_params(seed=5)
    obs, mask, lengths = batch(seed=6)
    brute = brute_force(start, trans, emit, obs, lengths)
    post = posterior_marginals(start, trans, emit, obs, mask)
    assert post.shape == (B, T, K)
    assert_close(post, torch.stack([r[1] for r in brute]))


def test_expected_counts_sum_to_token_counts():
    start, trans, emit = random_params(seed=7)
    obs, mask, lengths = batch(seed=8)
    counts = expected_counts(start, trans, emit, obs, mask)
    assert_close(counts.start.sum(), torch.tensor(float(B), dtype=torch.float64))
    assert_close(counts.transition.sum(), (lengths - 1).sum().double())
    assert_close(counts.emission.sum(), lengths.sum().double())
    for v in range(V):
        assert_close(counts.emission[:, v].sum(), obs[mask].eq(v).sum().double())


def test_joint_matches_path_score():
    start, trans, emit = random_params(seed=9)
    obs, mask, lengths = batch(seed=10)
    states = torch.randint(0, K, (B, T), generator=torch.Generator().manual_seed(11))
    expected = torch.stack(
        [
            path_score(start, trans, emit, obs[b, : lengths[b]].tolist(), states[b, : lengths[b]].tolist())
            for b in range(B)
        ]
    )
    assert_close(joint_log_likelihood(start, trans, emit, obs, states, mask), expected)


def test_viterbi_matches_enumeration():
    start, trans, emit = random_params(seed=12, scale=2.5)
    obs, mask, lengths = batch(seed=13)
    brute = brute_force(start, trans, emit, obs, lengths)
    paths, scores = viterbi(start, trans, emit, obs, mask, max_chunk_elements=7)
    for b in range(B):
        assert paths[b, : lengths[b]].tolist() == brute[b][2]
        assert paths[b, lengths[b] :].eq(0).all()
    assert_close(scores, torch.stack([r[3] for r in brute]))


def test_padding_does_not_change_result():
    start, trans, emit = random_params(seed=14)
    obs, mask, lengths = batch(seed=15)
    padded = obs.clone()
    padded[~mask] = 0
    other = obs.clone()
    other[~mask] = V - 1
    assert_close(
        forward_log_likelihood(start, trans, emit, padded, mask),
        forward_log_likelihood(start, trans, emit, other, mask),
    )
    single = forward_log_likelihood(start, trans, emit, obs[1:2, :2])
    assert_close(forward_log_likelihood(start, trans, emit, obs, mask)[1:2], single)


def test_rows_in_any_length_order_match_enumeration():
    """Rows run longest first inside; log P(O), posteriors and weighted gradients come back per caller row."""
    params = [p.requires_grad_() for p in random_params(seed=16)]
    obs, _, _ = batch(seed=17)
    lengths = torch.tensor([2, 1, T])  # not longest first
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    weights = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)
    log_likelihood = forward_log_likelihood(*params, obs, mask)
    (log_likelihood * weights).sum().backward()
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    brute = brute_force(*params, obs, lengths)
    assert_close(log_likelihood, torch.stack([r[0] for r in brute]))
    (torch.stack([r[0] for r in brute]) * weights).sum().backward()
    for mine, ref in zip(ours, [p.grad for p in params], strict=True):
        assert_close(mine, ref)
    post = posterior_marginals(*(p.detach() for p in params), obs, mask)
    assert_close(post, torch.stack([r[1] for r in brute]).detach())


def test_no_underflow_on_long_unlikely_sequences():
    start, trans, emit = random_params(seed=16)
    emit = emit.clone()
    emit[:, 0] = -800.0  # exp(-800) is 0 in float64: the per-word shift must rescue it
    obs = torch.zeros(2, 200, dtype=torch.long)
    ll = forward_log_likelihood(start, trans, emit, obs)
    assert torch.isfinite(ll).all()
    assert_close(ll, torch.full((2,), -800.0 * 200, dtype=torch.float64), atol=1e-6, rtol=1e-9)


def test_bad_inputs_raise():
    start, trans, emit = random_params()
    obs = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="right-padded"):
        forward_log_likelihood(start, trans, emit, obs, torch.tensor([[True, False, True]] * 2))
    with pytest.raises(ValueError, match="start with a real token"):
        forward_log_likelihood(start, trans, emit, obs, torch.tensor([[False, True, True]] * 2))
    with pytest.raises(ValueError, match="outside"):
        forward_log_likelihood(start, trans, emit, obs + V)
    with pytest.raises(ValueError, match="integer"):
        forward_log_likelihood(start, trans, emit, obs.float())
