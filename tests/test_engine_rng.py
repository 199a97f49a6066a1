"""The engine's random streams (analogff.engine.rng): counter-based kernel bits and their unpacking."""

from __future__ import annotations

import math
import torch

from analogff.engine.rng import _bits, _Rng, _unpack

_M = 2**64


def _splitmix64(key: int, i: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014) of its Weyl state at position ``i xor key``, in
    exact unsigned arithmetic."""
    z = ((i ^ key) * 0x9E3779B97F4A7C15) % _M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % _M
    z ^= z >> 31
    return z - _M if z >= 2**63 else z


def test_kernel_bits_are_splitmix64_of_the_key_and_the_position():
    for key in (0, 1, -1, 2**63 - 1, -2**63, 123456789123456789):
        b = _bits(torch.tensor(key, dtype=torch.int64), torch.zeros(3, 5), draws=2)
        assert b.shape == (2, 3, 5) and b.dtype == torch.int64
        want = [_splitmix64(key % _M, i) for i in range(30)]
        assert b.reshape(-1).tolist() == want


def test_keys_come_from_the_engine_generator_and_replay_from_its_state():
    r = _Rng(7, torch.device("cpu"))
    state = r.get_state()
    keys = [int(r.key()) for _ in range(4)]
    assert len(set(keys)) == 4 and r.key().shape == () and r.key().dtype == torch.int64
    r.set_state(state)
    assert [int(r.key()) for _ in range(4)] == keys
    assert [int(_Rng(8, torch.device("cpu")).key()) for _ in range(4)] != keys


def test_unpacked_draws_are_uniform_and_standard_normal_and_uncorrelated():
    """One call's draws (and two calls' keys) give a uniform and two normals with the right moments,
    no correlation between neighbouring devices or between two calls: 1e6 devices, 6 sigma bounds."""
    n = 1_000_000
    r = _Rng(0, torch.device("cpu"))
    like = torch.zeros(1000, 1000)
    u, z1, z2 = (t.double().reshape(-1) for t in _unpack(_bits(r.key(), like)))
    u_b, z1_b, _ = (t.double().reshape(-1) for t in _unpack(_bits(r.key(), like)))
    tol = 6 / math.sqrt(n)
    assert abs(float(u.mean()) - 0.5) < tol * math.sqrt(1 / 12) and abs(float(u.var()) - 1 / 12) < tol * 0.075
    for z in (z1, z2):
        assert abs(float(z.mean())) < tol and abs(float(z.var()) - 1) < tol * math.sqrt(2)
        assert abs(float((z ** 4).mean()) - 3) < tol * math.sqrt(96)  # kurtosis of a normal
    for a, b in ((z1, z2), (z1[1:], z1[:-1]), (u[1:], u[:-1]), (z1, z1_b), (u, u_b)):
        a, b = a[: b.numel()], b[: a.numel()]
        c = float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))
        assert abs(c) < tol
    # every one of the 10 deciles of u holds a tenth of the devices (chi-square, 9 dof, p ~ 1e-6)
    counts = torch.histc(u.float(), bins=10, min=0.0, max=1.0)
    assert float(((counts - n / 10) ** 2 / (n / 10)).sum()) < 45


def test_compiled_kernel_makes_the_same_bits_and_draws_as_eager():
    """The guard against miscompiled integer code (torch 2.13's CPU inductor gets ``arange *
    0x9E3779B97F4A7C15`` wrong past the first vector): bits, their slices and the unpacked draws of
    a compiled kernel equal the eager ones (the normals up to the rounding of the vectorised log
    and cos), on a vector-aligned and a ragged shape."""
    def k(key, like):
        b = _bits(key, like, draws=2)
        return (b, *_unpack(b[0]), *_unpack(b[1]))

    key = torch.tensor(-4242424242424242, dtype=torch.int64)
    c = torch.compile(k, dynamic=True)
    for like in (torch.zeros(64, 64), torch.zeros(37, 91)):
        got, want = c(key, like), k(key, like)
        for j, (a, b) in enumerate(zip(got, want)):
            if j in (0, 1, 4):  # the bits and the uniforms: exact
                assert torch.equal(a, b)
            else:
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
