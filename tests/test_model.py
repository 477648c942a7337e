from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import slm.model.loss as loss_mod
from slm.config import ModelConfig
from slm.data.batch import IGNORE
from slm.model.loss import cross_entropy, linear_cross_entropy
from slm.model.transformer import KVCache, Transformer


def make(**kw) -> Transformer:
    torch.manual_seed(0)
    base = {"n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 32, "max_seq_len": 24}
    return Transformer(ModelConfig(**(base | kw)), 97).eval()


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True}, {"n_kv_head": 4, "tie_embeddings": False}])
def test_future_tokens_never_change_earlier_logits(kw):
    m = make(**kw)
    x = torch.randint(0, 97, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_matches_full_forward():
    m = make(qk_norm=True)
    x = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        full, _ = m(x)
        cache = KVCache(m.cfg, 1, 24, torch.float32, torch.device("cpu"))
        first, _ = m(x[:, :7], cache=cache)  # prefill
        steps = [first] + [m(x[:, i : i + 1], cache=cache)[0] for i in range(7, 20)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_tied_embeddings_share_storage_and_sizes():
    m = make()
    assert m.lm_head.weight.data_ptr() == m.embed_tokens.weight.data_ptr()
    untied = make(tie_embeddings=False)
    assert untied.num_params(False) == m.num_params(False) + 97 * 32
    assert m.cfg.ff_dim % 32 == 0


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match=r"exceeds model\.max_seq_len"):
        make()(torch.zeros(1, 25, dtype=torch.long))


@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_fused_cross_entropy_matches_pytorch(z):
    torch.manual_seed(1)
    base = torch.randn(50, 333, dtype=torch.float64)
    t = torch.randint(0, 333, (50,))
    a = base.clone().requires_grad_()
    loss_a = cross_entropy(a * 1.0, t, z)
    loss_a.backward()
    b = base.clone().requires_grad_()
    loss_b = F.cross_entropy(b, t) + z * torch.logsumexp(b, -1).pow(2).mean()
    loss_b.backward()
    assert torch.allclose(loss_a, loss_b, atol=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_masked_cross_entropy_matches_pytorch_ignore_index(z):
    """Ignored positions take no loss and no gradient; the mean runs over the others (value and gradient
    against PyTorch's cross_entropy(ignore_index=...) plus the z-loss over the same positions)."""
    torch.manual_seed(2)
    base = torch.randn(60, 211, dtype=torch.float64)
    t = torch.randint(0, 211, (60,))
    t[::3] = IGNORE
    t[7] = IGNORE
    a = base.clone().requires_grad_()
    loss_a = cross_entropy(a * 1.0, t, z)
    loss_a.backward()
    b = base.clone().requires_grad_()
    keep = t != IGNORE
    loss_b = F.cross_entropy(b, t, ignore_index=IGNORE) + z * torch.logsumexp(b[keep], -1).pow(2).mean()
    loss_b.backward()
    assert torch.allclose(loss_a, loss_b, atol=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    assert torch.equal(a.grad[~keep], torch.zeros_like(a.grad[~keep]))
    # nothing to learn from: zero loss and zero gradient, not NaN
    c = base.clone().requires_grad_()
    loss_c = cross_entropy(c * 1.0, torch.full((60,), IGNORE), z)
    loss_c.backward()
    assert loss_c.item() == 0.0 and torch.equal(c.grad, torch.zeros_like(c.grad))


def test_unmasked_loss_is_bit_identical_to_a_plain_mean():
    """The mask costs nothing when no position is ignored: the loss is exactly mean(lse - picked)."""
    torch.manual_seed(3)
    logits = torch.randn(512, 300)
    t = torch.randint(0, 300, (512,))
    expect = (torch.logsumexp(logits, -1) - logits.gather(1, t[:, None]).squeeze(1)).mean()
    assert torch.equal(cross_entropy(logits.clone(), t), expect)


def test_model_loss_is_cross_entropy_of_logits():
    m = make()
    x = torch.randint(0, 97, (2, 16))
    y = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        logits, _ = m(x)
        _, loss = m(x, y)
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 97), y.view(-1)), atol=1e-5)


@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_chunked_linear_cross_entropy_matches_pytorch(z, monkeypatch):
    """Loss and both gradients of the chunked head (chunks of 7 rows, the last one short) against PyTorch's
    cross-entropy of the whole logit matrix, with ignored positions, z-loss and an upstream factor."""
    monkeypatch.setattr(loss_mod, "HEAD_CHUNK_ROWS", 7)
    torch.manual_seed(4)
    h0, w0 = torch.randn(50, 16, dtype=torch.float64), torch.randn(333, 16, dtype=torch.float64)
    t = torch.randint(0, 333, (50,))
    t[::4] = IGNORE
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, t, z)
    (3 * loss).backward()
    h2, w2 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    logits, keep = h2 @ w2.t(), t != IGNORE
    expect = F.cross_entropy(logits, t, ignore_index=IGNORE) + z * torch.logsumexp(logits[keep], -1).pow(2).mean()
    (3 * expect).backward()
    assert torch.allclose(loss, expect, atol=1e-12)
    assert torch.allclose(h.grad, h2.grad, atol=1e-12) and torch.allclose(w.grad, w2.grad, atol=1e-12)
    assert torch.equal(h.grad[~keep], torch.zeros_like(h.grad[~keep]))
    with torch.no_grad():  # evaluation: the loss alone, the same value
        assert torch.allclose(linear_cross_entropy(h0, w0, t, z), expect.detach(), atol=1e-12)
    # nothing to learn from: zero loss and zero gradients, not NaN
    h3, w3 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    none = linear_cross_entropy(h3, w3, torch.full((50,), IGNORE), z)
    none.backward()
    assert none.item() == 0.0 and not h3.grad.any() and not w3.grad.any()


def test_chunked_head_hands_back_its_gradients_unscaled_without_losing_them():
    """Backward of the loss itself (upstream gradient exactly 1) returns the gradients the forward made, not a
    scaled copy. Autograd must then not add into them: the weight used twice (tied, as the embedding is) and
    the graph run backward twice must give twice one backward's gradients."""
    torch.manual_seed(8)
    h0, w0 = torch.randn(30, 8), torch.randn(40, 8)
    t = torch.randint(0, 40, (30,))
    grads = []
    for times in (1, 2):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = linear_cross_entropy(h, w, t) + (w * w).sum()  # a second use of the weight, as a tied embedding
        for _ in range(times):
            loss.backward(retain_graph=True)
        grads.append((h.grad.clone(), w.grad.clone()))
    (h1, w1), (h2, w2) = grads
    assert torch.allclose(h2, 2 * h1) and torch.allclose(w2, 2 * w1)
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    logits = h @ w.t()
    (F.cross_entropy(logits, t) + (w * w).sum()).backward()
    assert torch.allclose(h1, h.grad, atol=1e-6) and torch.allclose(w1, w.grad, atol=1e-6)


@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_chunked_head_loss_is_exact_where_the_target_probability_underflows(z):
    """Targets 150 nats below the rest of their row, whose probability is far below float32's range: the
    chunked head's loss, z-loss and gradients in float32 must still match float64's (no exponential of a
    target's logit may stand in for the log-partition)."""
    torch.manual_seed(6)
    h0, w0 = torch.randn(40, 8), torch.randn(64, 8)
    t = torch.randint(0, 64, (40,))
    w0[t[:5]] = 0.0  # these targets' logits are 0 ...
    h0[:5] = 0.0
    h0[:5, 0] = 1.0
    w0[:, 0] += 150.0  # ... and every other one 150 higher (one target every few rows, the rest ordinary)
    w0[t[:5], 0] = 0.0
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, t, z)
    loss.backward()
    h2, w2 = h0.double().requires_grad_(), w0.double().requires_grad_()
    logits = h2 @ w2.t()
    expect = F.cross_entropy(logits, t) + z * torch.logsumexp(logits, -1).pow(2).mean()
    expect.backward()
    assert loss.item() > 18  # 5 rows of 150+ nats among 40
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert torch.allclose(h.grad.double(), h2.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(w.grad.double(), w2.grad, rtol=1e-4, atol=1e-4)


def test_chunked_head_under_bf16_autocast_matches_the_logits_path():
    """Under autocast the projection runs in bf16 as nn.Linear's would, the loss and the weight gradient's
    sums in fp32: the same loss and gradients as the whole-matrix path to bf16's precision."""
    torch.manual_seed(5)
    h0, w0 = torch.randn(300, 64), torch.randn(1000, 64) * 0.1
    t = torch.randint(0, 1000, (300,))
    got, want = [], []
    for fn, out in (
        (lambda h, w: linear_cross_entropy(h, w, t), got),
        (lambda h, w: cross_entropy((h @ w.t()).float(), t), want),
    ):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(h, w)
        loss.float().backward()
        out += [loss.float(), h.grad, w.grad]
    assert got[1].dtype == got[2].dtype == torch.float32
    assert abs(got[0].item() - want[0].item()) < 1e-3
    for a, b in zip(got[1:], want[1:], strict=True):
        assert ((a - b).norm() / b.norm()).item() < 1e-2


def test_a_head_that_is_not_a_plain_weight_takes_its_own_forward():
    """LoRA on lm_head (or a packed or int8 head) changes what the head computes: head_loss must go through
    the head's forward then, not read its weight."""
    m = make()
    x, y = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        h, _ = m(x, hidden_only=True)
        plain = m.head_loss(h, y)
        assert m.pack()  # an inference copy of every weight, lm_head's included
        m.lm_head.weight.mul_(2)  # the copy is now stale: the head still computes with the old weight
        assert torch.allclose(m.head_loss(h, y), plain, atol=1e-5)
        m.unpack()
        assert not torch.allclose(m.head_loss(h, y), plain, atol=1e-3)


def test_bad_head_layout_is_rejected():
    with pytest.raises(ValueError, match="divisible by n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3, d_model=32)


@pytest.mark.parametrize("qk_norm,pack", [(True, False), (False, True), (True, True)])
def test_rows_at_their_own_positions_decode_like_each_row_alone(qk_norm: bool, pack: bool):
    """Rows of different lengths share a cache and decode together, each at its own position; every row's
    logits equal a full forward of that row alone, whatever the others hold, packed (fused q/k/v) or not."""
    m = make(qk_norm=qk_norm, n_kv_head=2)
    if pack:
        assert m.pack()
    torch.manual_seed(4)
    seqs = [torch.randint(0, 97, (n,)) for n in (5, 11, 8)]
    cache = KVCache(m.cfg, 3, 24, torch.float32, torch.device("cpu"), zeroed=True)
    with torch.no_grad():
        for i, s in enumerate(seqs):  # each prompt into its own row, minus its last token
            m.hidden(s[None, :-1], cache=cache.rows(i, i + 1))
        x = torch.stack([s[-1:] for s in seqs])
        got = m.logits(m.hidden(x, cache=cache, positions=[len(s) - 1 for s in seqs])[:, 0])
        for i, s in enumerate(seqs):
            want, _ = m(s[None])
            assert torch.allclose(got[i], want[0, -1], atol=1e-5)


def test_packed_weights_give_the_same_logits():
    """Inference copies of the weights in oneDNN's layout change the kernel, not the result; a row's result
    does not depend on how many rows share the product."""
    m = make(n_kv_head=2)
    x = torch.randint(0, 97, (3, 9))
    with torch.no_grad():
        plain, _ = m(x)
        assert m.pack()
        packed, _ = m(x)
        one, _ = m(x[1:2])
        fused = [(b.attn.qkv, b.mlp.gate_up) for b in m.layers]
        m.unpack()
        assert m.pack(fuse=False) and all(b.attn.qkv is None and b.attn.q_proj.packed is not None for b in m.layers)
        apart, _ = m(x)
        m.unpack()
        again, _ = m(x)
    assert torch.allclose(plain, packed, atol=1e-5) and torch.equal(packed[1:2], one)
    assert torch.allclose(apart, packed, atol=1e-5)
    assert torch.equal(plain, again)
    assert all(w is not None for pair in fused for w in pair)  # q/k/v and gate/up ran as one product each
    assert all(getattr(mod, name, None) is None for mod in m.modules() for name in ("packed", "qkv", "gate_up"))
    assert not make().to(torch.bfloat16).pack()  # float32 on a CPU only


def test_cpus_where_onednn_was_never_measured_generate_with_pytorchs_products(monkeypatch):
    from slm.model import matmul

    m = make(n_kv_head=2)
    x = torch.randint(0, 97, (3, 9))
    with torch.no_grad():
        plain, _ = m(x)
        monkeypatch.setattr(matmul, "ONEDNN_MEASURED", False)  # as on an ARM CPU
        assert not m.pack()
        assert all(getattr(mod, name, None) is None for mod in m.modules() for name in ("packed", "qkv", "gate_up"))
        again, _ = m(x)
    assert torch.equal(plain, again)


def test_fp16_copies_serve_one_row_only():
    """pack(fp16=True): a single row (one sequence decoding) multiplies float16 copies, close to float32 but
    rounded differently; several rows still multiply the packed float32 weights, bit for bit."""
    m = make(n_kv_head=2)
    x = torch.randint(0, 97, (3, 9))
    with torch.no_grad():
        assert m.pack()
        rows32, _ = m(x)
        one32, _ = m(x[1:2, :1])
        assert m.pack(fp16=True)
        copies = [(b.attn.qkv_fp16, b.mlp.gate_up_fp16, b.attn.o_proj.fp16) for b in m.layers]
        rows16, _ = m(x)
        one16, _ = m(x[1:2, :1])
        m.unpack()
    assert all(w is not None and w.dtype == torch.float16 for trio in copies for w in trio)
    assert m.lm_head.fp16 is None and all(b.attn.qkv_fp16 is None for b in m.layers)
    assert torch.equal(rows16, rows32)
    assert not torch.equal(one16, one32) and torch.allclose(one16, one32, atol=2e-3)


def test_packing_leaves_adapted_projections_to_their_adapter():
    """A LoRA adapter on q_proj computes more than q_proj's weight: packing keeps q/k/v apart (the adapter's
    wrapper runs its packed base weight plus the low-rank path) and still fuses what is plain."""
    from slm.model.lora import add_lora

    m = make(n_kv_head=2)
    add_lora(m, rank=2, alpha=4.0, dropout=0.0, targets=["q_proj"])
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_()  # peft starts B at zero: make the adapter change the output
        x = torch.randint(0, 97, (2, 9))
        plain, _ = m(x)
        assert m.pack()
        packed, _ = m(x)
    assert all(b.attn.qkv is None and b.mlp.gate_up is not None for b in m.layers)
    assert torch.allclose(plain, packed, atol=1e-5)
