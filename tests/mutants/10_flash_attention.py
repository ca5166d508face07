"""Mutants of module 10 (FlashAttention's tiling): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

M_REF = '    m_ref = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)'
ALPHA = "    alpha = torch.exp(m - m_ref)  # (..., q): rescales the old terms; exp(-inf) = 0 for a fresh row"
P = "    p = torch.exp(scores - m_ref[..., None])  # (..., q, kb): unnormalised probabilities, 0 where masked"
L_NEW = "    l_new = alpha * l + p.sum(dim=-1)"
ACC_NEW = "    acc_new = alpha[..., None] * acc + p @ v"
Q_LOOP = "    for q_start in range(0, q_len, block_q):"
K_LOOP = "        for k_start in range(0, kv_len, block_k):"
SKIP = "            if causal and k_start > q_end - 1:\n                break  # this tile and every later one lie above the diagonal: every score is masked"
CROSSES = "            if causal and k_end - 1 > q_start:  # the tile crosses the diagonal: mask keys after each query"
ROWS = "                rows = torch.arange(q_start, q_end, device=q.device)[:, None]"
COLS = "                cols = torch.arange(k_start, k_end, device=q.device)[None, :]"
MASK = '                scores = scores.masked_fill(cols > rows, float("-inf"))'
SCORES = "            scores = (q_block @ k[..., k_start:k_end, :].float().transpose(-2, -1)) * scale  # (..., bq, bk)"
OUT = "        outs.append((acc / l[..., None]).to(q.dtype))"
LSE = "        lses.append(m + torch.log(l))"
TILED = "    naive = seq_len * seq_len * bytes_per_element\n    tiled = (block_q * block_k + block_q * (head_dim + 2)) * bytes_per_element"

MUTANTS = [
    Mutant("sum_not_rescaled", "adds the block's sum to l without rescaling the old sum by exp(m_old - m_new)",
           [(L_NEW, "    l_new = l + p.sum(dim=-1)")]),
    Mutant("accumulator_not_rescaled", "adds the block's p @ v to acc without rescaling the old acc by exp(m_old - m_new)",
           [(ACC_NEW, "    acc_new = acc + p @ v")]),
    Mutant("rescaled_the_wrong_way", "rescales by exp(m_new - m_old) instead of exp(m_old - m_new)",
           [(ALPHA, "    alpha = torch.exp(m_ref - m)")]),
    Mutant("nan_from_inf_minus_inf", "subtracts m_new even where it is still -inf: -inf - (-inf) = NaN on fully masked rows",
           [(M_REF, "    m_ref = m_new")]),
    Mutant("lse_without_m", "returns log(l) as the logsumexp, forgetting the running max m",
           [(LSE, "        lses.append(torch.log(l))")]),
    Mutant("diagonal_tile_skipped", "under causal, stops before the tile on the diagonal (queries lose their own key)",
           [(SKIP, "            if causal and k_start + block_k > q_start:\n                break")]),
    Mutant("tiles_above_diagonal_computed", "under causal, computes and masks every tile instead of skipping those above the diagonal",
           [(SKIP, "            pass")]),
    Mutant("ragged_last_key_block_dropped", "iterates over whole key blocks only, dropping the ragged last one",
           [(K_LOOP, "        for k_start in range(0, kv_len - block_k + 1, block_k):")]),
    Mutant("ragged_last_query_block_dropped", "iterates over whole query blocks only, dropping the ragged last one",
           [(Q_LOOP, "    for q_start in range(0, q_len - block_q + 1, block_q):")]),
    Mutant("full_score_matrix", "computes the whole q_len x kv_len score matrix once and slices tiles out of it",
           [(Q_LOOP, "    full = (q.float() @ k.float().transpose(-2, -1)) * scale  # (..., q_len, kv_len)\n" + Q_LOOP),
            (SCORES, "            scores = full[..., q_start:q_end, k_start:k_end]")]),
    Mutant("float32_output", "returns out in float32 whatever q's dtype",
           [(OUT, "        outs.append(acc / l[..., None])")]),
    Mutant("tile_local_causal_mask", "builds the causal mask from tile-local indices (right only when the tile sits on the diagonal's corner)",
           [(ROWS, "                rows = torch.arange(q_end - q_start, device=q.device)[:, None]"),
            (COLS, "                cols = torch.arange(k_end - k_start, device=q.device)[None, :]")]),
    Mutant("mask_excludes_the_diagonal", "masks j >= i instead of j > i: a query does not see its own key",
           [(MASK, '                scores = scores.masked_fill(cols >= rows, float("-inf"))')]),
    Mutant("only_the_corner_tile_masked", "masks only the tile that starts on the diagonal, not every tile it crosses",
           [(CROSSES, "            if causal and k_start == q_start:")]),
    Mutant("scale_one_over_d", "scales the scores by 1/head_dim instead of 1/sqrt(head_dim)",
           [("        scale = head_dim ** -0.5", "        scale = head_dim ** -1.0")]),
    Mutant("lse_in_input_dtype", "returns lse in q's dtype instead of float32",
           [(LSE, "        lses.append((m + torch.log(l)).to(q.dtype))")]),
    Mutant("tiled_bytes_without_m_and_l", "counts acc but not m and l in the tiled working set",
           [(TILED, "    naive = seq_len * seq_len * bytes_per_element\n    tiled = (block_q * block_k + block_q * head_dim) * bytes_per_element")]),
    Mutant("naive_bytes_in_elements", "returns the naive score matrix in elements, not bytes",
           [("    naive = seq_len * seq_len * bytes_per_element", "    naive = seq_len * seq_len")]),
]

FORWARD_LOOP = '''    outs, lses = [], []
    for q_start in range(0, q_len, block_q):
        q_end = min(q_start + block_q, q_len)  # the last block may be shorter
        q_block = q[..., q_start:q_end, :].float()  # (..., bq, d)
        m = torch.full(q_block.shape[:-1], float("-inf"), device=q.device)  # (..., bq)
        l = torch.zeros(q_block.shape[:-1], device=q.device)
        acc = torch.zeros(q_block.shape[:-1] + (v.shape[-1],), device=q.device)  # (..., bq, d)
        for k_start in range(0, kv_len, block_k):
            if causal and k_start > q_end - 1:
                break  # this tile and every later one lie above the diagonal: every score is masked
            k_end = min(k_start + block_k, kv_len)
            scores = (q_block @ k[..., k_start:k_end, :].float().transpose(-2, -1)) * scale  # (..., bq, bk)
            if causal and k_end - 1 > q_start:  # the tile crosses the diagonal: mask keys after each query
                rows = torch.arange(q_start, q_end, device=q.device)[:, None]
                cols = torch.arange(k_start, k_end, device=q.device)[None, :]
                scores = scores.masked_fill(cols > rows, float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, scores, v[..., k_start:k_end, :].float())
        outs.append((acc / l[..., None]).to(q.dtype))
        lses.append(m + torch.log(l))
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1).detach()'''

# FlashAttention-2's backward (Dao, 2023, Algorithm 2): nothing but out and lse is kept from the forward; each
# tile's probabilities are recomputed from lse, and dS = P * (dP - rowsum(dO * O)).
RECOMPUTE = '''    with torch.no_grad():
        out, lse = _tiled_forward(q, k, v, causal, block_q, block_k, scale)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = _FlashAttentionFunction.apply(q, k, v, out, lse, causal, block_q, block_k, scale)
    return out, lse


def _tile_ranges(q_len, kv_len, causal, block_q, block_k):
    for q_start in range(0, q_len, block_q):
        q_end = min(q_start + block_q, q_len)
        for k_start in range(0, kv_len, block_k):
            if causal and k_start > q_end - 1:
                break
            yield q_start, q_end, k_start, min(k_start + block_k, kv_len)


class _FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, out, lse, causal, block_q, block_k, scale):
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (causal, block_q, block_k, scale)
        return out.clone()

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        causal, block_q, block_k, scale = ctx.settings
        do = grad_out.float()
        d_rows = (do * out.float()).sum(-1)  # (..., q_len): rowsum(dO * O)
        dq, dk, dv = torch.zeros_like(q, dtype=torch.float32), torch.zeros_like(k, dtype=torch.float32), torch.zeros_like(v, dtype=torch.float32)
        for q0, q1, k0, k1 in _tile_ranges(q.shape[-2], k.shape[-2], causal, block_q, block_k):
            qb, kb, vb = q[..., q0:q1, :].float(), k[..., k0:k1, :].float(), v[..., k0:k1, :].float()
            s = (qb @ kb.transpose(-2, -1)) * scale
            if causal and k1 - 1 > q0:
                keep = torch.arange(k0, k1, device=q.device)[None, :] <= torch.arange(q0, q1, device=q.device)[:, None]
                s = s.masked_fill(~keep, float("-inf"))
            p = torch.exp(s - lse[..., q0:q1, None])  # the tile's probabilities, recomputed
            dv[..., k0:k1, :] += p.transpose(-2, -1) @ do[..., q0:q1, :]
            ds = p * (do[..., q0:q1, :] @ vb.transpose(-2, -1) - d_rows[..., q0:q1, None])
            dq[..., q0:q1, :] += (ds @ kb) * scale
            dk[..., k0:k1, :] += (ds.transpose(-2, -1) @ qb) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def _tiled_forward(q, k, v, causal, block_q, block_k, scale):
    q_len, kv_len = q.shape[-2], k.shape[-2]
''' + FORWARD_LOOP

# FlashAttention-1's loop order (Dao et al., 2022, Algorithm 1): keys and values outside, queries inside, the
# running state of every query block kept between visits.
KV_OUTER = '''    q_starts = list(range(0, q_len, block_q))
    state = {}
    for k_start in range(0, kv_len, block_k):
        k_end = min(k_start + block_k, kv_len)
        k_block, v_block = k[..., k_start:k_end, :].float(), v[..., k_start:k_end, :].float()
        for q_start in q_starts:
            q_end = min(q_start + block_q, q_len)
            if causal and k_start > q_end - 1:
                continue  # above the diagonal
            if q_start not in state:
                rows = q.shape[:-2] + (q_end - q_start,)
                state[q_start] = (torch.full(rows, float("-inf"), device=q.device), torch.zeros(rows, device=q.device),
                                  torch.zeros(rows + (v.shape[-1],), device=q.device))
            scores = torch.einsum("...qd,...kd->...qk", q[..., q_start:q_end, :].float(), k_block) * scale
            if causal:
                keep = torch.arange(k_start, k_end, device=q.device)[None, :] <= torch.arange(q_start, q_end, device=q.device)[:, None]
                scores = torch.where(keep, scores, torch.full_like(scores, float("-inf")))
            state[q_start] = online_softmax_update(*state[q_start], scores, v_block)
    outs = [(state[s][2] * state[s][1].reciprocal()[..., None]).to(q.dtype) for s in q_starts]
    lses = [state[s][0] + state[s][1].log() for s in q_starts]
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1).detach()'''

ALTERNATIVES = [
    Mutant("recomputing_backward", "a torch.autograd.Function whose backward recomputes each tile from lse (FlashAttention-2's backward)",
           [(FORWARD_LOOP, RECOMPUTE)]),
    Mutant("kv_outer_loop", "key blocks in the outer loop and query blocks inside, states kept per query block (FlashAttention-1's order), einsum and torch.where",
           [(FORWARD_LOOP, KV_OUTER)]),
    Mutant("nan_to_num_guard", "guards -inf - (-inf) with nan_to_num after the exponentials, as Triton tutorials do",
           [(M_REF + "\n", ""),
            (ALPHA, "    alpha = torch.exp(m - m_new).nan_to_num(nan=0.0)"),
            (P, "    p = torch.exp(scores - m_new[..., None]).nan_to_num(nan=0.0)")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {
    "full_score_matrix": "its outputs are exact; only a dispatch-mode watcher over every tensor the code creates (the hidden "
                         "suite's) sees the q_len x kv_len score matrix it builds before slicing tiles out of it",
}
