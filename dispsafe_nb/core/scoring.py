"""Log-probabilities of given token ids under a model (optionally after a prefix): whole sequences, per
token, the next token; the KL between two systems' next-token distributions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from dispsafe_nb.core.batching import plan_batches
from dispsafe_nb.core.decoding import sampling_log_probs
from dispsafe_nb.core.llm import LLM, prepend_prefix
from dispsafe_nb.core.model_parts import backbone_and_head
from dispsafe_nb.core.prefix_cache import PrefixCache

REDUCTIONS = ("sum", "mean")


# ----------------------------------------------------------------------------------------------------------
# sequence log-probs
# ----------------------------------------------------------------------------------------------------------


def final_logit_softcap(model: Any) -> float | None:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return getattr(cfg, "final_logit_softcapping", None)


def sequence_logprobs(
    llm: LLM,
    prompts: Sequence[str],
    responses: Sequence[str] | None,
    prefix: torch.Tensor | None = None,
    reduction: str = "sum",
    append_eos: bool | Sequence[bool] = True,
    method: Any | None = None,
    batch_size: int | None = None,
    response_ids: Sequence[Sequence[int]] | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    keep_targets: bool = False,
    prefix_cache: PrefixCache | None = None,
    token_budget: int | None = None,
) -> torch.Tensor:
    """Teacher-forced ``log q(response | prompt [, prefix])`` under the chat template, one value per pair.

    Each row is laid out ``[pad ... pad | prefix | chat(prompt) | response (+ eos)]``: the prompt is
    chat-templated exactly as for generation (ending where the assistant starts to speak), the response is
    tokenized on its own (no special tokens) and, with ``append_eos``, followed by the tokenizer's eos token
    (``<|im_end|>`` for SmolLM2, the token generation stops on), so that a *finished* answer is scored, not
    just its prefix. ``append_eos`` may be one flag per row: a sample cut at ``max_new_tokens`` is scored as
    the prefix it is (no eos). ``response_ids``: score these token ids (e.g. exactly what generate() sampled,
    `llm.Generation.token_ids`) instead of tokenizing ``responses`` (then ``responses`` may be None).
    Positions come from the attention mask's cumulative sum, so left padding does not shift
    them and a batched row scores exactly as the same row alone.

    prefix: optional N x d embeddings (a soft prompt's ``W``) inserted after the padding, as in
    generation; gradients flow into it. ``method``: alternatively, an object with
    ``apply(llm, input_ids, attention_mask) -> (inputs_embeds, attention_mask)`` (e.g. a ``SoftPrompt``).
    reduction: "sum" (the sequence log-prob) or "mean" (per-token average, sum / number of response tokens).
    batch_size, token_budget: score in micro-batches of at most this many rows (None: no cap) and this many padded
    tokens (prefix + chat prompt + response; `core.batching`, whose default applies when None), longest rows
    first; the values come back in the given order and do not depend on the split (gradients still flow).
    temperature, top_p: score under the distribution a sampler with these settings draws from (tempered, cut to
    the nucleus and renormalised: `decoding.sampling_log_probs`) instead of the model's own (1.0, 1.0). A token
    outside the nucleus then has log-probability -inf, unless `keep_targets` (for responses that this very sampler
    drew: recomputed logits can put a drawn token a rounding error outside the nucleus).
    prefix_cache: a soft prompt's `prefix_cache.PrefixCache` in place of `prefix`: its keys and values are read,
    not recomputed (for scoring: no gradient reaches the prompt); rows are ``[prefix | pad | chat | response]``.

    Memory: vocabulary logits are computed only at the positions that predict response tokens. The backbone
    returns hidden states (B x T x d); we gather the few rows that predict a response token and apply the
    lm_head to those alone. Full-sequence logits would be B x T x V floats (V = 49,152 for SmolLM2; at B=32
    and T=512 that is 3.2 GB, plus as much again for log-softmax and its gradient), almost all of it for
    prompt and prefix positions whose predictions the loss never uses.
    """
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("pass lists of prompts and responses, not single strings")
    prompts = list(prompts)
    resp_ids = response_token_ids(llm, responses, response_ids, append_eos, len(prompts))
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
    if sum(x is not None for x in (prefix, method, prefix_cache)) > 1:
        raise ValueError("pass at most one of prefix, method and prefix_cache")
    if not prompts:
        raise ValueError("no prompts given")
    n_prefix = prefix_cache.n_tokens if prefix_cache is not None else _n_prefix(prefix, method)
    prompts = llm.check_prompts(prompts, reserve_tokens=n_prefix + max(len(r) for r in resp_ids))
    lengths = [n_prefix + n + len(r) for n, r in zip(llm.chat_lengths(prompts), resp_ids, strict=True)]
    batches = plan_batches(lengths, budget=token_budget, max_rows=batch_size, what="prompt + response")
    if len(batches) > 1:
        order = [i for b in batches for i in b]
        chunks = [
            _sequence_logprobs_batch(
                llm,
                [prompts[i] for i in b],
                [resp_ids[i] for i in b],
                prefix,
                reduction,
                method,
                temperature,
                top_p,
                keep_targets,
                prefix_cache,
            )
            for b in batches
        ]
        # explicit devices: scoring must not depend on torch's default device (a test sets it to "meta")
        device = chunks[0].device
        inverse = torch.empty(len(order), dtype=torch.long, device=device)
        inverse[torch.tensor(order, device=device)] = torch.arange(len(order), device=device)
        return torch.cat(chunks)[inverse]
    return _sequence_logprobs_batch(
        llm, prompts, resp_ids, prefix, reduction, method, temperature, top_p, keep_targets, prefix_cache
    )


def _sequence_logprobs_batch(
    llm: LLM,
    prompts: list[str],
    resp_ids: list[list[int]],
    prefix: torch.Tensor | None,
    reduction: str,
    method: Any | None,
    temperature: float,
    top_p: float,
    keep_targets: bool,
    prefix_cache: PrefixCache | None,
) -> torch.Tensor:
    """`sequence_logprobs` of one micro-batch of checked prompts (the rows share one forward pass)."""
    log_probs, targets, row_of, n_resp = _response_log_softmax(
        llm,
        prompts,
        resp_ids,
        prefix,
        method,
        temperature,
        top_p,
        keep_targets,
        prefix_cache=prefix_cache,
        validate=False,
    )
    token_logp = log_probs.gather(-1, targets[:, None])[:, 0]
    out = torch.zeros(len(prompts), dtype=token_logp.dtype, device=token_logp.device).index_add(
        0, row_of, token_logp
    )
    if reduction == "mean":
        out = out / n_resp.to(out.dtype)
    return out


def left_pad(
    llm: LLM, rows: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows left-padded with the tokenizer's pad id (eos if it has none): (input ids, attention mask)."""
    tok = llm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long, device=device)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def response_token_ids(
    llm: LLM,
    responses: Sequence[str] | None,
    response_ids: Sequence[Sequence[int]] | None,
    append_eos: bool | Sequence[bool],
    n_rows: int,
) -> list[list[int]]:
    """The token ids to score per row: given ids, or the tokenized responses; eos appended where flagged."""
    tok = llm.tokenizer
    if response_ids is not None:
        if responses is not None and len(list(responses)) != len(response_ids):
            raise ValueError(f"got {len(responses)} responses but {len(response_ids)} id lists")
        rows = [[int(t) for t in ids] for ids in response_ids]
    else:
        if responses is None:
            raise ValueError("pass responses (texts) or response_ids")
        rows = []
        for i, response in enumerate(responses):
            if not isinstance(response, str):
                raise TypeError(f"response {i} is a {type(response).__name__}, not a str")
            rows.append(list(tok(response, add_special_tokens=False)["input_ids"]))
    if len(rows) != n_rows:
        raise ValueError(f"got {n_rows} prompts but {len(rows)} responses")
    flags = [bool(append_eos)] * n_rows if isinstance(append_eos, bool) else [bool(f) for f in append_eos]
    if len(flags) != n_rows:
        raise ValueError(f"got {n_rows} prompts but {len(flags)} append_eos flags")
    for i, (ids, flag) in enumerate(zip(rows, flags, strict=True)):
        if flag:
            ids.append(tok.eos_token_id)
        if not ids:
            raise ValueError(f"response {i} is empty and append_eos=False: there is no token to score")
    return rows


def _response_log_softmax(
    llm: LLM,
    prompts: list[str],
    resp_ids: list[list[int]],
    prefix: torch.Tensor | None,
    method: Any | None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    keep_targets: bool = False,
    hidden_out: list[torch.Tensor] | None = None,
    prefix_cache: PrefixCache | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-softmax over the vocabulary at the positions that predict response tokens only (of the tempered,
    nucleus-cut distribution when `temperature`, `top_p` are not 1). `hidden_out`, when given, receives the
    final hidden states at those positions.

    `resp_ids`: the token ids to score per row (eos included where it should be). Returns (log_probs
    [n_tokens, V], target ids [n_tokens], row index of each token [n_tokens], number of response tokens per
    row [B]); tokens are ordered row by row, left to right. `validate=False`: the caller already checked the prompts.
    """
    tok = llm.tokenizer
    n_prefix = prefix_cache.n_tokens if prefix_cache is not None else _n_prefix(prefix, method)
    if validate:
        prompts = llm.check_prompts(prompts, reserve_tokens=n_prefix + max(len(r) for r in resp_ids))
    prompt_ids = [list(tok(llm.chat_text(p), add_special_tokens=False)["input_ids"]) for p in prompts]

    # Left-padded [pad | chat prompt | response] rows; the prefix goes in after the padding below.
    rows = [p + r for p, r in zip(prompt_ids, resp_ids, strict=True)]
    device = llm.device
    input_ids, attention_mask = left_pad(llm, rows, device)

    # A method acts through its input embeddings (`apply`) and/or inside the forward pass (`active`: LoRA's
    # adapters, a steering hook), so both calls sit inside its context.
    context = method.active(llm) if hasattr(method, "active") else contextlib.nullcontext()
    with context:
        if method is not None:
            embeds, attention_mask = method.apply(llm, input_ids, attention_mask)
        elif prefix is not None:
            embeds, attention_mask = prepend_prefix(llm, input_ids, attention_mask, prefix)
        else:
            embeds = llm.model.get_input_embeddings()(input_ids)
        backbone, head = backbone_and_head(llm.model)
        if prefix_cache is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            hidden = backbone(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state
        else:  # [prefix (cached) | pad | chat | response]: the mask covers the prefix, positions continue after it
            mask = torch.cat([attention_mask.new_ones(len(rows), n_prefix), attention_mask], dim=1)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, n_prefix:]
            hidden = backbone(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=position_ids,
                cache=prefix_cache.expand(len(rows)),
                use_cache=True,
            ).last_hidden_state

    # Responses sit at the right end of every row; the token at column t is predicted by column t - 1.
    total = embeds.shape[1]
    n_resp = torch.tensor([len(r) for r in resp_ids], device=device)
    cols = torch.arange(total, device=device)
    is_target = cols[None, :] >= (total - n_resp)[:, None]  # (B, T)
    targets = torch.full((len(rows), total), -1, dtype=torch.long, device=device)
    for i, r in enumerate(resp_ids):
        targets[i, total - len(r) :] = torch.tensor(r, dtype=torch.long, device=device)
    select = is_target[:, 1:]  # (B, T-1): hidden column t predicts column t + 1

    picked = hidden[:, :-1][select]  # (n_response_tokens, d)
    logits = head(picked).float()
    cap = final_logit_softcap(llm.model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    row_of = select.nonzero()[:, 0]
    target_ids = targets[:, 1:][select]
    if hidden_out is not None:
        hidden_out.append(picked)
    if temperature == 1.0 and top_p >= 1.0:
        return torch.log_softmax(logits, dim=-1), target_ids, row_of, n_resp
    keep = target_ids if keep_targets else None
    return sampling_log_probs(logits, temperature, top_p, keep=keep), target_ids, row_of, n_resp


def token_logprobs(
    llm: LLM,
    prompts: Sequence[str],
    response_ids: Sequence[Sequence[int]],
    append_eos: bool | Sequence[bool],
    method: Any | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token ``log q(y_t | x, y_<t)`` of given responses, with the final hidden state that predicted each.

    Returns (log-probs [n_tokens], row index of each token [n_tokens], hidden states [n_tokens, d]), tokens
    ordered row by row, left to right (the layout of `sequence_logprobs`, which sums them per row). For
    token-level objectives (PPO's ratios, its value head and its per-token KL penalty)."""
    prompts = list(prompts)
    rows = response_token_ids(llm, None, response_ids, append_eos, len(prompts))
    hidden: list[torch.Tensor] = []
    log_probs, targets, row_of, _ = _response_log_softmax(llm, prompts, rows, None, method, hidden_out=hidden)
    return log_probs.gather(-1, targets[:, None])[:, 0], row_of, hidden[0]


def next_token_log_probs(llm: LLM, prompts: Sequence[str], method: Any | None = None) -> torch.Tensor:
    """(B, V): ``log q(· | x)`` of the first answer token, where the assistant starts to speak."""
    prompts = list(prompts)
    eos = llm.tokenizer.eos_token_id
    log_probs, _, _, _ = _response_log_softmax(llm, prompts, [[eos]] * len(prompts), None, method)
    return log_probs


@torch.no_grad()
def fidelity_kl(
    llm: LLM,
    prompts: Sequence[str],
    responses: Sequence[str],
    method: Any,
    batch_size: int | None = None,
    token_budget: int | None = None,
) -> torch.Tensor:
    """Mean per-token KL(base || system) along given responses, one value per pair (0 = unchanged).

    The usefulness measure of the evaluation: on the base model's own (greedy) answers to benign prompts, how far
    does the method move the next-token distribution? Both distributions see the same tokens, so positions align.
    Micro-batches as in `sequence_logprobs` (`batch_size` rows at most, `token_budget` padded tokens).
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    ids = response_token_ids(llm, responses, None, True, len(prompts))
    n_prefix = _n_prefix(None, method)
    prompts = llm.check_prompts(prompts, reserve_tokens=n_prefix + max(len(r) for r in ids))
    lengths = [n_prefix + n + len(r) for n, r in zip(llm.chat_lengths(prompts), ids, strict=True)]
    out = torch.zeros(len(prompts), device="cpu")
    for batch in plan_batches(lengths, budget=token_budget, max_rows=batch_size, what="prompt + response"):
        p_chunk, r_ids = [prompts[i] for i in batch], [ids[i] for i in batch]
        base, _, row_of, n_resp = _response_log_softmax(llm, p_chunk, r_ids, None, None, validate=False)
        system, _, _, _ = _response_log_softmax(llm, p_chunk, r_ids, None, method, validate=False)
        kl_tok = (base.exp() * (base - system)).sum(-1)
        per_row = torch.zeros(len(p_chunk), dtype=kl_tok.dtype, device=kl_tok.device).index_add(
            0, row_of, kl_tok
        )
        out[torch.tensor(batch, device="cpu")] = (per_row / n_resp.to(per_row.dtype)).float().cpu()
    return out


def _n_prefix(prefix: torch.Tensor | None, method: Any | None) -> int:
    if prefix is not None:
        if prefix.ndim != 2:
            raise ValueError(f"prefix must be N x d, got shape {tuple(prefix.shape)}")
        return int(prefix.shape[0])
    if method is not None:
        return int(getattr(method, "n_tokens", 0))
    return 0
