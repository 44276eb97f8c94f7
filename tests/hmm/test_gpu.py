"""The HMM's CUDA path (skipped without a CUDA device; benchmarks/gpu_suite.sh runs it when one is lent)."""

import pytest
import torch
from torch.testing import assert_close

from latentlm.hmm.config import HMMConfig
from latentlm.hmm.em import EM
from latentlm.hmm.model import HMMLanguageModel

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("parameterization", ["dense", "neural"])
def test_forward_and_gradient_on_cuda_match_cpu(parameterization):
    model = HMMLanguageModel(
        HMMConfig(num_states=64, vocab_size=300, parameterization=parameterization, seed=1)
    )
    obs = torch.randint(0, 300, (8, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.arange(40).unsqueeze(0) < torch.tensor([40, 39, 30, 20, 10, 5, 2, 1]).unsqueeze(1)
    cpu = model.log_likelihood(obs, mask)
    cpu.sum().backward()
    cpu_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    cuda_model = model.to("cuda")
    gpu = cuda_model.log_likelihood(obs.cuda(), mask.cuda())
    gpu.sum().backward()
    assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-3)
    for p, expected in zip(cuda_model.parameters(), cpu_grads, strict=True):
        assert_close(p.grad.cpu(), expected, rtol=1e-3, atol=1e-3)


def test_em_step_on_cuda_matches_cpu():
    results = []
    for device in ("cpu", "cuda"):
        model = HMMLanguageModel(HMMConfig(num_states=32, vocab_size=100, seed=2)).to(device)
        model.parameterization.count_gradients = True
        optimizer = EM(model.parameters(), pseudocount=0.1)
        obs = torch.randint(0, 100, (16, 30), generator=torch.Generator().manual_seed(3)).to(device)
        (-model.log_likelihood(obs).sum()).backward()
        optimizer.step()
        results.append([t.detach().cpu() for t in model.log_parameters()])
    for a, b in zip(*results, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-4)
