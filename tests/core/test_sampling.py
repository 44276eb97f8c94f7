"""Token draws: top-k / top-p filtering vs brute force, draw frequencies vs the tempered softmax."""

import pytest
import torch

from latentlm.core.sampling import filter_logits, sample_categorical


def _nucleus_brute_force(probs, top_p):
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = [], 0.0
    for i in order:
        kept.append(i)
        mass += probs[i]
        if mass >= top_p:
            break
    return set(kept)


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.9, 0.999])
def test_top_p_matches_brute_force(top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 11, generator=g, dtype=torch.float64)
    filtered = filter_logits(logits, top_p=top_p)
    for row in range(20):
        expected = _nucleus_brute_force(logits[row].softmax(-1).tolist(), top_p)
        assert set(torch.isfinite(filtered[row]).nonzero().flatten().tolist()) == expected


@pytest.mark.parametrize("method", ["gumbel", "inverse_cdf"])
def test_top_k_and_samples_stay_inside(method):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, generator=g, dtype=torch.float64)
    draws = sample_categorical(logits.expand(5000, 4, 9), top_k=3, generator=g, method=method)
    for row in range(4):
        top3 = set(logits[row].topk(3).indices.tolist())
        assert set(draws[:, row].tolist()) <= top3
        assert len(set(draws[:, row].tolist())) == 3  # all three reachable
    draws_p = sample_categorical(logits.expand(5000, 4, 9), top_p=0.5, generator=g, method=method)
    for row in range(4):
        assert set(draws_p[:, row].tolist()) <= _nucleus_brute_force(logits[row].softmax(-1).tolist(), 0.5)


@pytest.mark.parametrize("method", ["gumbel", "inverse_cdf"])
def test_draw_frequencies_match_tempered_softmax(method):
    g = torch.Generator().manual_seed(2)
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0], dtype=torch.float64)
    n = 200_000
    draws = sample_categorical(logits.expand(n, -1), temperature=0.7, top_k=3, generator=g, method=method)
    freq = torch.bincount(draws, minlength=4).double() / n
    kept = filter_logits(logits / 0.7, top_k=3)
    expected = kept.softmax(-1)
    stderr = (expected * (1 - expected) / n).sqrt().max()
    torch.testing.assert_close(freq, expected, atol=5 * float(stderr), rtol=0)
    assert freq[2] == 0.0  # outside the top-3


def test_inverse_cdf_never_draws_a_zero_probability_token():
    """Boundaries of the cumulative softmax: -inf tokens at the start, middle and end are skipped."""
    logits = torch.tensor([[float("-inf"), 0.0, float("-inf"), 0.0, float("-inf")]], dtype=torch.float64)
    draws = sample_categorical(
        logits.expand(20_000, -1), generator=torch.Generator().manual_seed(4), method="inverse_cdf"
    )
    assert set(draws.tolist()) == {1, 3}


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method"):
        sample_categorical(torch.zeros(2, 3), method="multinomial")


def test_inverse_cdf_across_blocks_matches_the_softmax():
    """V = 600 spans three 256-token blocks (the last padded); mass sits on the block edges."""
    logits = torch.full((600,), float("-inf"), dtype=torch.float64)
    support = torch.tensor([0, 255, 256, 511, 512, 599])
    logits[support] = torch.tensor([0.5, -1.0, 1.0, 0.0, -0.5, 2.0], dtype=torch.float64)
    n = 100_000
    draws = sample_categorical(
        logits.expand(n, -1), generator=torch.Generator().manual_seed(5), method="inverse_cdf"
    )
    freq = torch.bincount(draws, minlength=600).double() / n
    expected = logits.softmax(-1)
    assert set(draws.unique().tolist()) == set(support.tolist())
    stderr = (expected * (1 - expected) / n).sqrt().max()
    torch.testing.assert_close(freq, expected, atol=5 * float(stderr), rtol=0)
