"""Score several continuations of the same prompts with one pass over the prompts: the fast trainer's scorer.

Eq. 4 needs log q(y | x) and log q(y_r | x) for every prompt x. `scoring.sequence_logprobs` scores each pair in
its own pass over soft prompt + chat template + prompt + response, so the shared part (the prompt, usually the
longer part) is encoded twice. Here the prompt rows ``[pad | prefix | chat(x)]`` run once, keeping their keys and
values (with gradient), and every branch's response tokens run as one batch of continuations reading them.
Positions, masks and the tokens each position attends to are those of `sequence_logprobs`, so the log-probs are
the same up to floating-point rounding (a test checks values and gradients).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from dispsafe_nb.core.llm import LLM
from dispsafe_nb.core.model_parts import backbone_and_head
from dispsafe_nb.core.scoring import final_logit_softcap, left_pad


def shared_prompt_logprobs(
    llm: LLM,
    prompts: Sequence[str],
    branches: Sequence[Sequence[Sequence[int]]],
    method: Any | None = None,
    reduction: str = "sum",
) -> list[torch.Tensor]:
    """``log q(continuation | prompt)`` for every branch: `branches[j][i]` are the token ids (eos included where
    it should be scored, as `scoring.response_token_ids` returns them) of branch j's continuation of prompt i.
    Returns one tensor [len(prompts)] per branch; gradients flow into the method's parameters.
    reduction: "sum" (the sequence log-prob) or "mean" (per token)."""
    from transformers import DynamicCache  # noqa: PLC0415 (deferred: transformers takes seconds to import; only code that runs a model needs it)

    prompts = list(prompts)
    n_rows, n_branches = len(prompts), len(branches)
    if not prompts or not branches:
        raise ValueError("need at least one prompt and one branch")
    if any(len(b) != n_rows for b in branches):
        raise ValueError(f"every branch needs one continuation per prompt ({n_rows})")
    if any(len(ids) == 0 for b in branches for ids in b):
        raise ValueError("a continuation is empty: there is no token to score")
    if reduction not in {"sum", "mean"}:
        raise ValueError(f"reduction must be 'sum' or 'mean', not {reduction!r}")
    n_prefix = int(getattr(method, "n_tokens", 0)) if method is not None else 0
    longest = max(len(ids) for b in branches for ids in b)
    device = llm.device
    tok = llm.tokenizer
    prompts = llm.check_prompts(prompts, reserve_tokens=n_prefix + longest)
    prompt_ids, prompt_mask = left_pad(
        llm, [tok(llm.chat_text(p), add_special_tokens=False)["input_ids"] for p in prompts], device
    )
    backbone, head = backbone_and_head(llm.model)
    context = method.active(llm) if method is not None else contextlib.nullcontext()
    with context:
        if method is not None:
            embeds, mask = method.apply(llm, prompt_ids, prompt_mask)
        else:
            embeds, mask = llm.model.get_input_embeddings()(prompt_ids), prompt_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=llm.model.config)
        prompt_out = backbone(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
        first = prompt_out.last_hidden_state[:, -1]  # predicts every continuation's first token

        # Continuations, right-padded, rows ordered prompt by prompt: (prompt 0, branch 0), (prompt 0, branch 1), ...
        conts = [list(branches[j][i]) for i in range(n_rows) for j in range(n_branches)]
        width = max(len(c) for c in conts)
        pad = (
            llm.tokenizer.pad_token_id
            if llm.tokenizer.pad_token_id is not None
            else llm.tokenizer.eos_token_id
        )
        ids = torch.full((len(conts), width), pad, dtype=torch.long, device=device)
        cont_mask = torch.zeros_like(ids)
        for r, c in enumerate(conts):
            ids[r, : len(c)] = torch.tensor(c, dtype=torch.long, device=device)
            cont_mask[r, : len(c)] = 1
        cache.batch_repeat_interleave(n_branches)
        full_mask = torch.cat([mask.repeat_interleave(n_branches, 0), cont_mask], dim=1)
        start = positions[:, -1:].repeat_interleave(n_branches, 0) + 1
        cont_positions = start + torch.arange(width, device=device)[None, :]
        hidden = backbone(
            inputs_embeds=llm.model.get_input_embeddings()(ids),
            attention_mask=full_mask,
            position_ids=cont_positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state

    # Token t of a continuation is predicted by the prompt's last position (t = 0) or continuation position t - 1.
    lengths = torch.tensor([len(c) for c in conts], device=device)
    predictors = torch.cat([first.repeat_interleave(n_branches, 0)[:, None], hidden[:, :-1]], dim=1)
    select = torch.arange(width, device=device)[None, :] < lengths[:, None]
    # The vocabulary head at its own dtype (float32 for our model), not autocast's.
    with torch.autocast(device_type=device.type, enabled=False):
        logits = head(predictors[select].to(head.weight.dtype)).float()
    cap = final_logit_softcap(llm.model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, ids[select][:, None])[:, 0]
    row_of = select.nonzero()[:, 0]
    per_row = torch.zeros(len(conts), dtype=log_probs.dtype, device=device).index_add(0, row_of, log_probs)
    if reduction == "mean":
        per_row = per_row / lengths.to(per_row.dtype)
    per_row = per_row.view(n_rows, n_branches)
    return [per_row[:, j] for j in range(n_branches)]
