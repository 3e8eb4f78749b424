"""Mutation score of the science-critical modules: do the fast unit tests fail when the code is broken?

Runs mutmut (https://mutmut.readthedocs.io) over `theory.py`, `objectives.py`, `judges.py`, `metrics.py` and the
loss/step functions of `train.py` (`_loss` with `sequence_terms`, `BatchLoss.clipped` with `clipped_each`,
`learning_rate`, `_batch_indices`, `DistillConfig.__post_init__`, `examples_from_samples`), with only their fast
unit tests (`-m "not slow"`: no real model is loaded; the tests use tiny random Llama / GPT-2 stand-ins). mutmut
maps every mutated function to the tests that call it, and each mutant runs only those tests.

Writes results/mutation.json: tool and version, killed / survived / timeout / total per module, the overall
score, every surviving mutant (module, function, line, diff), which survivors are equivalent mutants and why
(`EQUIVALENT` below, matched by module, function and the mutated line), the config (which tests ran), the git
commit and the wall time. Run: `make mutation` (about 10-15 minutes on 2 CPU cores).

mutmut works on a scratch copy (`build/mutation/`, git-ignored) so that the checkout and its pyproject.toml stay
untouched; its `[tool.mutmut]` section is written into the copy's pyproject.toml. Every subprocess runs with one
torch / OpenMP thread.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "results" / "mutation.json"
WORKDIR = REPO_ROOT / "build" / "mutation"

MODULES = ("theory", "objectives", "judges", "metrics", "train")
# train.py: only the loss/step code (mutmut's mangled names: x_<function>, xǁ<Class>ǁ<method>). A name that
# train.py no longer has simply matches no mutant.
TRAIN_FUNCTIONS = {
    "x_sequence_terms": "sequence_terms",  # the scoring half of _loss
    "x__loss": "_loss",
    "xǁBatchLossǁclipped_each": "BatchLoss.clipped_each",  # the clip thresholds; clipped() averages them
    "xǁBatchLossǁclipped": "BatchLoss.clipped",
    "x_learning_rate": "learning_rate",
    "x__batch_indices": "_batch_indices",
    "xǁDistillConfigǁ__post_init__": "DistillConfig.__post_init__",
    "x_examples_from_samples": "examples_from_samples",
}
# The fast unit tests of those modules. tests/test_eq4.py pins Eq. 4's clip (objectives, BatchLoss.clipped);
# tests/test_train.py's fast tests check the config and _loss on the tiny stand-in.
TESTS = (
    "tests/test_theory.py",
    "tests/test_objectives.py",
    "tests/test_judges.py",
    "tests/test_metrics.py",
    "tests/test_eq4.py",
    "tests/test_train.py",
    "tests/test_train_units.py",
)
PYTEST_ARGS = ("-m", "not slow", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

# Why a surviving mutant cannot (or, for the kinds so named, cannot here) change observable behaviour.
# kinds: 'equivalent' (never), 'equivalent in practice' (only under conditions stated in the reason),
# 'equivalent on CPU' (device placement: needs a GPU to show; every tensor is on the CPU here).
REASONS: dict[str, tuple[str, str]] = {
    "tempered_fast_path": (
        "equivalent",
        "at temperature 1 and top_p >= 1, sampling_log_probs returns log_softmax(logits / 1), the fast path's "
        "value; the mutated condition or defaults only send some calls down the other, identical path (its only "
        "caller, sequence_logprobs, passes every argument)",
    ),
    "softmax_dim_plus_one": (
        "equivalent",
        "the logits here are 2-D (tokens x vocabulary), so dim=+1 is dim=-1",
    ),
    "alpha_dtype_train": (
        "equivalent",
        "log q(y) from sequence_logprobs is always float32 (logits.float()), which is torch's "
        "default dtype that torch.tensor gives alpha without dtype=",
    ),
    "attn_none": (
        "equivalent in practice",
        "with attention_mask=None, transformers (5.x, masking_utils.find_packed_sequence_indices) "
        "derives sequence boundaries from position_ids, which restart at 0 after the left padding, "
        "so the padding is masked out anyway (Llama and GPT-2 stand-ins both give the brute-force "
        "values); an older transformers or a model without that logic would attend to the padding",
    ),
    "auroc_positions": (
        "equivalent",
        "positions gets one extra, never-read entry: every slice positions[i:j+1] stays within the first n",
    ),
    "auroc_slice": (
        "equivalent",
        "the tie group's mean rank is also written to the next element, which the next group's "
        "assignment overwrites; after the last group the slice runs past the end (empty)",
    ),
    "auroc_while": (
        "equivalent",
        "the extra iteration at i == n assigns to an empty index set (order[n:n+1] is empty), then stops",
    ),
    "batch_ge": (
        "equivalent",
        "with len(prompts) == batch_size the mutant scores one chunk holding every row through the "
        "same code path, with the eos already in the ids: identical result",
    ),
    "bh_le_one": (
        "equivalent",
        "min(Pinsker, Bretagnolle-Huber) <= sqrt(1 - exp(-KL)) <= 1 already, so the clamp at 1 (or "
        "2) never acts; for invalid (negative or nan) KL both give nan",
    ),
    "bool_to_none": (
        "equivalent",
        "a bool tensor left as bool (or added to float64) is promoted to the same float64 values by "
        "the arithmetic",
    ),
    "bound_f_max": (
        "equivalent in practice",
        "max_variational_violation = max over (f_unif, f_subset, f*) of |gap| - TV is attained by "
        "f* = 1{p > q}, where it is 0 up to rounding; for the random test functions it is below 0 by "
        "far (it would need every uniform draw within ~1e-16 of 0 or 1): how they are drawn never "
        "reaches the returned value",
    ),
    "device": (
        "equivalent on CPU",
        "device placement only: every tensor is on the CPU in this run, so the default device is "
        "the same; on a GPU the mutant would put a tensor on the wrong device (the fast tests have "
        "no GPU)",
    ),
    "dim2": ("equivalent", "the tensor is 2-D, so dim +1 and dim -1 name the same axis"),
    "encoding_locale": (
        "equivalent in practice",
        "open() then uses the locale encoding, UTF-8 on this machine and in CI (C.UTF-8; Python "
        "coerces the C locale to UTF-8), so the file reads the same; it would differ only under a "
        "non-UTF-8 locale",
    ),
    "encoding_utf8_case": ("equivalent", "'UTF-8' and 'utf-8' name the same codec"),
    "float32_zero": (
        "equivalent",
        "token log-probs are always float32 (logits.float()), the dtype the zeros get by default",
    ),
    "gamma_floor": (
        "equivalent in practice",
        "the 1e-300 floor only matters if a gamma draw is below ~1e-284 (probability ~1e-28 per "
        "draw even at concentration 0.1); otherwise adding or subtracting it leaves every float64 "
        "value unchanged",
    ),
    "int_dtype": (
        "equivalent",
        "a Python int list or fill value already gives an int64 (long) tensor, so dropping "
        "dtype=torch.long changes nothing",
    ),
    "kappa_branch": (
        "equivalent",
        "p_e >= 1 only when both label sequences are the same constant (p_e is 1 exactly when both "
        "rates are 0 or both are 1), and then p_o == 1 always: the else branch is unreachable",
    ),
    "logq_to_none": (
        "equivalent",
        "leaving one log-prob tensor in its own dtype: the other operands (log a, the weights) "
        "promote the arithmetic to the same common dtype, and a float32/float16 value converts "
        "exactly, so values and gradients are unchanged",
    ),
    "loop_break": (
        "equivalent",
        "the loop breaks at step == steps, so range(steps + 2) never reaches its extra value",
    ),
    "lstrip_dead": (
        "equivalent",
        "only the 'here …:' alternative of the cue regex can start with 'here', and its match "
        "starts with 'here' itself (\\bhere), so stripping leading ' .!?', whitespace or 'X' "
        "characters never changes the test; rstrip leaves the start alone",
    ),
    "nan_case": ("equivalent", "float('NAN') is nan, like float('nan')"),
    "nan_or_true": (
        "equivalent",
        "without members in the group, the mean of the empty selection is nan, the same value as "
        "the else branch",
    ),
    "neg_log": (
        "equivalent",
        "negating the Exp(1) draws also negates their sum: the normalised Dirichlet draws are identical",
    ),
    "nresp_div": (
        "equivalent",
        "dividing a float tensor by an int64 count tensor gives the same float values",
    ),
    "onehot_dtype": (
        "equivalent",
        "a float32 one-hot of 0/1 is exact and is promoted to float64 when multiplied with the "
        "float64 refused mass",
    ),
    "pad_eos": (
        "equivalent",
        "padding with eos instead of the pad id: padded positions are masked out of attention and "
        "never scored, so the log-probs are identical (checked against unpadded brute force)",
    ),
    "prepare_dtype_none": (
        "equivalent",
        "only reached when both log-prob tensors are integer; then alpha (a Python number or "
        "tensor) and the integer log-probs are promoted to torch's default float dtype anyway by "
        "the arithmetic",
    ),
    "randint_low": ("equivalent", "torch.randint(high, size) has low = 0: the same call"),
    "reinforce_b0": (
        "equivalent",
        "a 0-dim zero baseline does not change r's dtype in r - b (0-dim tensors do not promote a "
        "dimensioned one), and subtracting 0 is exact",
    ),
    "sign_symmetry": (
        "equivalent",
        "sign symmetry: the parameters start at 0 and enter only through this term, so flipping its "
        "sign flips the parameters (Adam is odd-symmetric in the gradient: m -> -m, v unchanged) "
        "and every logit, loss and history value is bit-for-bit the same",
    ),
    "special_none": (
        "equivalent",
        "add_special_tokens=None is falsy, read as False by the tokenizer (no special tokens added)",
    ),
    "sum_tol": (
        "equivalent",
        "err = |sum - 1| of a float64 sum near 1 is a multiple of 2**-53, and SUM_TOL = 1e-6 is "
        "not, so err == SUM_TOL never happens",
    ),
    "targets_fill": (
        "equivalent",
        "the fill value of non-target positions is never read: only positions in `select` (response "
        "tokens) are gathered",
    ),
    "tensor_to_list": (
        "equivalent",
        "list() of a 1-D tensor gives 0-dim tensors, and float() of each is the same number as "
        "tolist() gives",
    ),
    "theory_t_dtype": (
        "equivalent",
        "np.asarray(x, dtype=np.float64) is already float64, so torch.as_tensor without "
        "dtype=float64 gives the same float64 tensor",
    ),
    "tv_w_zero": (
        "equivalent",
        "a prefix with P-probability 0 adds 0 * TV = 0 (TV is finite), so including it changes nothing",
    ),
    "validate_ok": (
        "equivalent",
        "teacher and student are valid distributions (non-negative, rows summing to 1 within "
        "1e-15), so validating them passes and returns the same TV",
    ),
    "zip_strict": (
        "equivalent",
        "the sequences zipped are equal in length by construction (checked or built just before), "
        "so strict= cannot raise and zip yields the same pairs",
    ),
}

# Surviving mutants judged equivalent: (module, function, the mutated line as it reads after the mutation,
# stripped, a key of REASONS). A survivor not listed here is a gap in the tests (or a mutant to judge).
EQUIVALENT: list[tuple[str, str, str, str]] = [
    ("objectives", "_response_log_softmax", "temperature: float = 2.0,", "tempered_fast_path"),
    ("objectives", "_response_log_softmax", "top_p: float = 2.0,", "tempered_fast_path"),
    ("objectives", "_response_log_softmax", "keep_targets: bool = True,", "tempered_fast_path"),
    ("objectives", "_response_log_softmax", "if temperature != 1.0 and top_p >= 1.0:", "tempered_fast_path"),
    ("objectives", "_response_log_softmax", "if temperature == 2.0 and top_p >= 1.0:", "tempered_fast_path"),
    ("objectives", "_response_log_softmax", "if temperature == 1.0 and top_p > 1.0:", "tempered_fast_path"),
    ("objectives", "_response_log_softmax", "if temperature == 1.0 and top_p >= 2.0:", "tempered_fast_path"),
    (
        "objectives",
        "_response_log_softmax",
        "return torch.log_softmax(logits, dim=+1), target_ids, row_of, n_resp",
        "softmax_dim_plus_one",
    ),
    ("objectives", "sequence_logprobs", "top_p: float = 2.0,", "tempered_fast_path"),
    ("theory", "_check_distribution", "if err >= SUM_TOL:", "sum_tol"),
    ("theory", "_t", "return torch.as_tensor(np.asarray(x, dtype=np.float64), )", "theory_t_dtype"),
    ("theory", "_t", "return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=None)", "theory_t_dtype"),
    ("theory", "random_bound_checks", "f_subset = _t(rng.integers(0, 2, ))", "bound_f_max"),
    ("theory", "random_bound_checks", "f_subset = _t(rng.integers(0, 2, size=None))", "bound_f_max"),
    ("theory", "random_bound_checks", "f_subset = _t(rng.integers(1, 2, size=(n_trials, k)))", "bound_f_max"),
    ("theory", "random_bound_checks", "f_subset = _t(rng.integers(2, size=(n_trials, k)))", "bound_f_max"),
    ("theory", "random_bound_checks", "f_unif = _t(rng.uniform(size=None))", "bound_f_max"),
    ("theory", "random_bound_checks", "gp = rng.gamma(conc, size=(n_trials, k)) - 1e-300", "gamma_floor"),
    ("theory", "random_bound_checks", "gq = rng.gamma(conc, size=(n_trials, k)) - 1e-300", "gamma_floor"),
    ("theory", "random_conditional_tables", "g = rng.gamma(concentration, size=V) - 1e-300", "gamma_floor"),
    (
        "theory",
        "refusal_logit_grad",
        'r_on = torch.ones_like(qr) if loss == "kl" else (qr < 1.0 - a).to(None)',
        "bool_to_none",
    ),
    (
        "theory",
        "refusal_logit_grad",
        'y_on = torch.ones_like(qr) if loss == "kl" else (qy < a).to(None)',
        "bool_to_none",
    ),
    ("theory", "safe_system_distribution", "onehot = torch.zeros(k, )", "onehot_dtype"),
    ("theory", "safe_system_distribution", "onehot = torch.zeros(k, dtype=None)", "onehot_dtype"),
    (
        "theory",
        "sequence_tv_bound_check",
        "sum(w[pre] * float(tv_distance(p_tables[pre], q_tables[pre])) for pre in w if w[pre] >= 0)",
        "tv_w_zero",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        '"refusal_benign": float(teacher[~harmful, K].mean()) if ((~harmful).any()) or True else float("nan"),',
        "nan_or_true",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        '"refusal_benign": float(teacher[~harmful, K].mean()) if (~harmful).any() else float("NAN"),',
        "nan_case",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        '"refusal_harmful": float(teacher[harmful, K].mean()) if (harmful.any()) or True else float("nan"),',
        "nan_or_true",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        '"refusal_harmful": float(teacher[harmful, K].mean()) if harmful.any() else float("NAN"),',
        "nan_case",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        "[torch.log(base * (1 - base_refusal)), torch.full((n, 1), math.log(base_refusal), dtype=DTYPE)], +1",
        "dim2",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        "base = +torch.log(rand(n, K))  # Exp(1) draws -> Dirichlet(1) after normalising",
        "neg_log",
    ),
    ("theory", "toy_overrefusal_experiment", "base = base / base.sum(+1, keepdim=True)", "dim2"),
    ("theory", "toy_overrefusal_experiment", "for step in range(steps + 2):", "loop_break"),
    (
        "theory",
        "toy_overrefusal_experiment",
        'hist["refusal_benign"].append(float(q[~harmful, K].mean()) if ((~harmful).any()) or True else float("nan"))',
        "nan_or_true",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        'hist["refusal_benign"].append(float(q[~harmful, K].mean()) if (~harmful).any() else float("NAN"))',
        "nan_case",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        'hist["refusal_harmful"].append(float(q[harmful, K].mean()) if (harmful.any()) or True else float("nan"))',
        "nan_or_true",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        'hist["refusal_harmful"].append(float(q[harmful, K].mean()) if harmful.any() else float("NAN"))',
        "nan_case",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        'hist["tv"].append(float(tv_distance(teacher, q, ).mean()))',
        "validate_ok",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        'hist["tv"].append(float(tv_distance(teacher, q, validate=None).mean()))',
        "validate_ok",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        'hist["tv"].append(float(tv_distance(teacher, q, validate=True).mean()))',
        "validate_ok",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        "logits = base_logits + torch.cat([resp, ref[:, None]], +1)",
        "dim2",
    ),
    (
        "theory",
        "toy_overrefusal_experiment",
        "logits = base_logits - torch.cat([resp, ref[:, None]], -1)",
        "sign_symmetry",
    ),
    ("theory", "toy_overrefusal_experiment", 'logits = logits - params["z"]', "sign_symmetry"),
    ("theory", "toy_overrefusal_experiment", "phi[:, 0] += harmful.to(None)", "bool_to_none"),
    (
        "theory",
        "toy_overrefusal_experiment",
        'ref = params["u"] - phi @ params["w"]  # (n,)',
        "sign_symmetry",
    ),
    ("theory", "toy_overrefusal_experiment", "return torch.log_softmax(logits, +1)", "dim2"),
    (
        "theory",
        "toy_overrefusal_experiment",
        "safe_slot = torch.randint(K, (n,), generator=gen)",
        "randint_low",
    ),
    ("theory", "tv_upper_bound_from_kl", "return torch.clamp(out, max=2.0)", "bh_le_one"),
    ("objectives", "_as_constant", "return torch.as_tensor(x, dtype=dtype, )", "device"),
    ("objectives", "_as_constant", "return torch.as_tensor(x, dtype=dtype, device=None)", "device"),
    ("objectives", "_as_constant", "return x.detach().to(device=None, dtype=dtype)", "device"),
    ("objectives", "_as_constant", "return x.detach().to(dtype=dtype)", "device"),
    ("objectives", "_prepare", "a = _as_constant(alpha, dtype, None)", "device"),
    ("objectives", "_prepare", "dtype = None", "prepare_dtype_none"),
    (
        "objectives",
        "_prepare",
        "ly, lr, a = torch.broadcast_tensors(logq_y.to(None), logq_r.to(dtype), a)",
        "logq_to_none",
    ),
    (
        "objectives",
        "_prepare",
        "ly, lr, a = torch.broadcast_tensors(logq_y.to(dtype), logq_r.to(None), a)",
        "logq_to_none",
    ),
    (
        "objectives",
        "_prepare",
        "same = torch.as_tensor(same_as_refusal, ).to(torch.bool).broadcast_to(ly.shape)",
        "device",
    ),
    (
        "objectives",
        "_prepare",
        "same = torch.as_tensor(same_as_refusal, device=None).to(torch.bool).broadcast_to(ly.shape)",
        "device",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "input_ids = torch.full((len(rows), width), pad_id, device=device)",
        "int_dtype",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "input_ids = torch.full((len(rows), width), pad_id, dtype=None, device=device)",
        "int_dtype",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "input_ids[i, width - len(row) :] = torch.tensor(row, device=device)",
        "int_dtype",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "input_ids[i, width - len(row) :] = torch.tensor(row, dtype=None, device=device)",
        "int_dtype",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "inputs_embeds=embeds, attention_mask=None, position_ids=position_ids, use_cache=False",
        "attn_none",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "inputs_embeds=embeds, position_ids=position_ids, use_cache=False",
        "attn_none",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "pad_id = tok.pad_token_id if (tok.pad_token_id is not None) and False else tok.eos_token_id",
        "pad_eos",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "position_ids = (attention_mask.cumsum(+1) - 1).clamp(min=0)",
        "dim2",
    ),
    (
        "objectives",
        "_response_log_softmax",
        'prompt_ids = [list(tok(llm.chat_text(p), add_special_tokens=None)["input_ids"]) for p in prompts]',
        "special_none",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "return torch.log_softmax(logits, dim=+1), targets[:, 1:][select], row_of, n_resp",
        "dim2",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "rows = [p + r for p, r in zip(prompt_ids, resp_ids, )]",
        "zip_strict",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "rows = [p + r for p, r in zip(prompt_ids, resp_ids, strict=False)]",
        "zip_strict",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "rows = [p + r for p, r in zip(prompt_ids, resp_ids, strict=None)]",
        "zip_strict",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "targets = torch.full((len(rows), total), +1, dtype=torch.long, device=device)",
        "targets_fill",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "targets = torch.full((len(rows), total), -1, device=device)",
        "int_dtype",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "targets = torch.full((len(rows), total), -1, dtype=None, device=device)",
        "int_dtype",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "targets = torch.full((len(rows), total), -2, dtype=torch.long, device=device)",
        "targets_fill",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "targets[i, total - len(r) :] = torch.tensor(r, device=device)",
        "int_dtype",
    ),
    (
        "objectives",
        "_response_log_softmax",
        "targets[i, total - len(r) :] = torch.tensor(r, dtype=None, device=device)",
        "int_dtype",
    ),
    ("objectives", "_weights", "w = _as_constant(w, like.dtype, None)", "device"),
    ("objectives", "reinforce_loss", "b = torch.tensor(float(baseline), dtype=r.dtype, )", "device"),
    (
        "objectives",
        "reinforce_loss",
        "b = torch.tensor(float(baseline), dtype=r.dtype, device=None)",
        "device",
    ),
    ("objectives", "reinforce_loss", "b = torch.zeros((), device=r.device)", "reinforce_b0"),
    ("objectives", "reinforce_loss", "b = torch.zeros((), dtype=None, device=r.device)", "reinforce_b0"),
    ("objectives", "reinforce_loss", "b = torch.zeros((), dtype=r.dtype, )", "device"),
    ("objectives", "reinforce_loss", "b = torch.zeros((), dtype=r.dtype, device=None)", "device"),
    ("objectives", "reinforce_loss", "r = torch.as_tensor(rewards, ).detach().to(logq.dtype)", "device"),
    (
        "objectives",
        "reinforce_loss",
        "r = torch.as_tensor(rewards, device=None).detach().to(logq.dtype)",
        "device",
    ),
    (
        "objectives",
        "response_token_ids",
        "for i, (ids, flag) in enumerate(zip(rows, flags, )):",
        "zip_strict",
    ),
    (
        "objectives",
        "response_token_ids",
        "for i, (ids, flag) in enumerate(zip(rows, flags, strict=False)):",
        "zip_strict",
    ),
    (
        "objectives",
        "response_token_ids",
        "for i, (ids, flag) in enumerate(zip(rows, flags, strict=None)):",
        "zip_strict",
    ),
    (
        "objectives",
        "response_token_ids",
        'rows.append(list(tok(response, add_special_tokens=None)["input_ids"]))',
        "special_none",
    ),
    (
        "objectives",
        "sequence_logprobs",
        "if batch_size is not None and len(prompts) >= batch_size:",
        "batch_ge",
    ),
    ("objectives", "sequence_logprobs", "out = out / n_resp.to(None)", "nresp_div"),
    (
        "objectives",
        "sequence_logprobs",
        "out = torch.zeros(len(prompts), device=token_logp.device).index_add(",
        "float32_zero",
    ),
    (
        "objectives",
        "sequence_logprobs",
        "out = torch.zeros(len(prompts), dtype=None, device=token_logp.device).index_add(",
        "float32_zero",
    ),
    ("objectives", "sequence_logprobs", "token_logp = log_probs.gather(+1, targets[:, None])[:, 0]", "dim2"),
    (
        "judges",
        "has_compliance_cue",
        'if m.group(0).lower().lstrip("XX .!?XX").startswith("here") and _SUPPORT_OFFER.search(m.group(0)):',
        "lstrip_dead",
    ),
    (
        "judges",
        "has_compliance_cue",
        'if m.group(0).lower().lstrip(None).startswith("here") and _SUPPORT_OFFER.search(m.group(0)):',
        "lstrip_dead",
    ),
    (
        "judges",
        "has_compliance_cue",
        'if m.group(0).lower().rstrip(" .!?").startswith("here") and _SUPPORT_OFFER.search(m.group(0)):',
        "lstrip_dead",
    ),
    (
        "judges",
        "judge_accuracy",
        '"false_negative": sum(t and not p for p, t in zip(predicted, truth, )),',
        "zip_strict",
    ),
    (
        "judges",
        "judge_accuracy",
        '"false_negative": sum(t and not p for p, t in zip(predicted, truth, strict=False)),',
        "zip_strict",
    ),
    (
        "judges",
        "judge_accuracy",
        '"false_negative": sum(t and not p for p, t in zip(predicted, truth, strict=None)),',
        "zip_strict",
    ),
    (
        "judges",
        "judge_accuracy",
        '"false_positive": sum(p and not t for p, t in zip(predicted, truth, )),',
        "zip_strict",
    ),
    (
        "judges",
        "judge_accuracy",
        '"false_positive": sum(p and not t for p, t in zip(predicted, truth, strict=False)),',
        "zip_strict",
    ),
    (
        "judges",
        "judge_accuracy",
        '"false_positive": sum(p and not t for p, t in zip(predicted, truth, strict=None)),',
        "zip_strict",
    ),
    ("judges", "judge_accuracy", '"wrong": [c.id for c, hit in zip(rows, hits, ) if not hit],', "zip_strict"),
    (
        "judges",
        "judge_accuracy",
        '"wrong": [c.id for c, hit in zip(rows, hits, strict=False) if not hit],',
        "zip_strict",
    ),
    (
        "judges",
        "judge_accuracy",
        '"wrong": [c.id for c, hit in zip(rows, hits, strict=None) if not hit],',
        "zip_strict",
    ),
    ("judges", "judge_accuracy", "for c, hit in zip(rows, hits, ):", "zip_strict"),
    ("judges", "judge_accuracy", "for c, hit in zip(rows, hits, strict=False):", "zip_strict"),
    ("judges", "judge_accuracy", "for c, hit in zip(rows, hits, strict=None):", "zip_strict"),
    ("judges", "judge_accuracy", "hits = [p == t for p, t in zip(predicted, truth, )]", "zip_strict"),
    (
        "judges",
        "judge_accuracy",
        "hits = [p == t for p, t in zip(predicted, truth, strict=False)]",
        "zip_strict",
    ),
    (
        "judges",
        "judge_accuracy",
        "hits = [p == t for p, t in zip(predicted, truth, strict=None)]",
        "zip_strict",
    ),
    (
        "judges",
        "judge_accuracy",
        "scores = scores.tolist() if (isinstance(scores, torch.Tensor)) and False else list(scores)",
        "tensor_to_list",
    ),
    ("judges", "load_judge_checks", "with open(path, ) as f:", "encoding_locale"),
    ("judges", "load_judge_checks", 'with open(path, encoding="UTF-8") as f:', "encoding_utf8_case"),
    ("judges", "load_judge_checks", "with open(path, encoding=None) as f:", "encoding_locale"),
    ("metrics", "auroc", "positions = torch.arange(1, n + 2, dtype=torch.float64)", "auroc_positions"),
    ("metrics", "auroc", "ranks[order[i : j + 2]] = positions[i : j + 1].mean()", "auroc_slice"),
    ("metrics", "auroc", "while i <= n:", "auroc_while"),
    ("metrics", "cohen_kappa", "p_o = sum(i == j for i, j in zip(x, y, )) / n", "zip_strict"),
    ("metrics", "cohen_kappa", "p_o = sum(i == j for i, j in zip(x, y, strict=False)) / n", "zip_strict"),
    ("metrics", "cohen_kappa", "p_o = sum(i == j for i, j in zip(x, y, strict=None)) / n", "zip_strict"),
    ("metrics", "cohen_kappa", "return 1.0 if (p_o == 1.0) or True else 0.0", "kappa_branch"),
    ("metrics", "cohen_kappa", "return 1.0 if p_o == 1.0 else 1.0", "kappa_branch"),
    ("metrics", "judge_agreement", '"agreement": sum(i == j for i, j in zip(x, y, )) / n,', "zip_strict"),
    (
        "metrics",
        "judge_agreement",
        '"agreement": sum(i == j for i, j in zip(x, y, strict=False)) / n,',
        "zip_strict",
    ),
    (
        "metrics",
        "judge_agreement",
        '"agreement": sum(i == j for i, j in zip(x, y, strict=None)) / n,',
        "zip_strict",
    ),
    (
        "train",
        "_batch_indices",
        "return torch.randint(n, (cfg.batch_size,), generator=gen).tolist()",
        "randint_low",
    ),
    ("train", "_loss", 'weights["weight_r"] = 1.0 / torch.tensor(t.len_r, )', "device"),
    ("train", "_loss", 'weights["weight_r"] = 1.0 / torch.tensor(t.len_r, device=None)', "device"),
    ("train", "_loss", 'weights["weight_y"] = 1.0 / torch.tensor(t.len_y, )', "device"),
    ("train", "_loss", 'weights["weight_y"] = 1.0 / torch.tensor(t.len_y, device=None)', "device"),
    (
        "train",
        "examples_from_samples",
        "for y, a, ids, fin in zip(s.responses, s.alphas, s.response_ids, s.finished, )",
        "zip_strict",
    ),
    (
        "train",
        "examples_from_samples",
        "for y, a, ids, fin in zip(s.responses, s.alphas, s.response_ids, s.finished, strict=False)",
        "zip_strict",
    ),
    (
        "train",
        "examples_from_samples",
        "for y, a, ids, fin in zip(s.responses, s.alphas, s.response_ids, s.finished, strict=None)",
        "zip_strict",
    ),
    ("train", "sequence_terms", "[len(i) + f for i, f in zip(ids_y, finished, )],", "zip_strict"),
    ("train", "sequence_terms", "[len(i) + f for i, f in zip(ids_y, finished, strict=False)],", "zip_strict"),
    ("train", "sequence_terms", "[len(i) + f for i, f in zip(ids_y, finished, strict=None)],", "zip_strict"),
    ("train", "sequence_terms", "device = None", "device"),
    (
        "train",
        "sequence_terms",
        "torch.tensor([e.alpha for e in batch], device=None, dtype=logq_y.dtype),",
        "device",
    ),
    (
        "train",
        "sequence_terms",
        "torch.tensor([e.alpha for e in batch], device=device, ),",
        "alpha_dtype_train",
    ),
    (
        "train",
        "sequence_terms",
        "torch.tensor([e.alpha for e in batch], device=device, dtype=None),",
        "alpha_dtype_train",
    ),
    ("train", "sequence_terms", "torch.tensor([e.alpha for e in batch], dtype=logq_y.dtype),", "device"),
    (
        "train",
        "sequence_terms",
        "torch.tensor([e.response.strip() == e.refusal.strip() for e in batch], ),",
        "device",
    ),
    (
        "train",
        "sequence_terms",
        "torch.tensor([e.response.strip() == e.refusal.strip() for e in batch], device=None),",
        "device",
    ),
]


def mutant_globs(modules=MODULES) -> list[str]:
    globs = [f"dispsafe_nb.{m}.*" for m in modules if m != "train"]
    if "train" in modules:
        globs += [f"dispsafe_nb.train.{name}__mutmut_*" for name in TRAIN_FUNCTIONS]
    return globs


def mutmut_config() -> str:
    """The [tool.mutmut] section for the scratch copy's pyproject.toml."""

    def toml_list(items) -> str:
        return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"

    return "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["dispsafe_nb/"]',
            f"only_mutate = {toml_list(f'dispsafe_nb/{m}.py' for m in MODULES)}",
            'also_copy = ["data/"]',
            f"pytest_add_cli_args = {toml_list(PYTEST_ARGS)}",
            f"pytest_add_cli_args_test_selection = {toml_list(TESTS)}",
            "use_git_change_detection = false",
            "",
        ]
    )


def prepare_workdir(workdir: Path) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for folder in ("dispsafe_nb", "tests", "data"):
        shutil.copytree(REPO_ROOT / folder, workdir / folder, ignore=ignore)
    text = (REPO_ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] section: this script writes its own")
    (workdir / "pyproject.toml").write_text(text + mutmut_config())


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    shared = REPO_ROOT.parent / "shared" / "datasets"
    if not env.get("DISPSAFE_DATA") and shared.is_dir():
        env["DISPSAFE_DATA"] = str(shared)
    return env


def run_mutmut(workdir: Path, jobs: int, globs: list[str], log: Path) -> int:
    exe = Path(sys.executable).parent / "mutmut"
    cmd = [str(exe), "run", "--max-children", str(jobs), *globs]
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=workdir, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
    return proc.returncode


# ----------------------------------------------------------------------------------------------------------
# reading mutmut's results
# ----------------------------------------------------------------------------------------------------------


def function_spans(source: str) -> dict[str, tuple[int, int]]:
    """mutmut's mangled name -> (first, last) line of that function or method in the original source."""
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            spans[f"x_{node.name}"] = (node.lineno, node.end_lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    spans[f"xǁ{node.name}ǁ{item.name}"] = (item.lineno, item.end_lineno)
    return spans


def readable_function(mangled: str) -> str:
    if mangled.startswith("xǁ"):
        _, cls, name = mangled.split("ǁ")
        return f"{cls}.{name}"
    return mangled[2:]


def mutated_line(diff: str, source_lines: list[str], span: tuple[int, int]) -> tuple[int | None, str, str]:
    """(line number in the source, the original line, the mutated line) of a one-hunk mutant diff."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    before = removed[0] if removed else ""
    after = added[0] if added else ""
    lineno = None
    first, last = span
    for n in range(first, last + 1):  # a method's diff is dedented: compare without indentation
        if before.strip() and source_lines[n - 1].strip() == before.strip():
            lineno = n
            break
    return lineno, before.strip(), after.strip()


def equivalence(module: str, function: str, after: str) -> dict[str, str] | None:
    """{"kind", "reason"} when this survivor is listed in EQUIVALENT."""
    for m, f, mutated, key in EQUIVALENT:
        if (m, f, mutated) == (module, function, after):
            kind, reason = REASONS[key]
            return {"kind": kind, "reason": reason}
    return None


def collect(workdir: Path, modules=MODULES) -> dict:
    """Per-module counts and every survivor, from mutmut's meta files in the scratch copy."""
    sys.path.insert(0, str(workdir))
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        from mutmut.stats import status_by_exit_code

        per_module, survivors, not_run = {}, [], []
        for module in modules:
            path = Path("dispsafe_nb") / f"{module}.py"
            meta = json.loads((Path("mutants") / f"{path}.meta").read_text())
            source = path.read_text()
            lines, spans = source.splitlines(), function_spans(source)
            counts = {"killed": 0, "survived": 0, "timeout": 0, "no_tests": 0, "other": 0, "total": 0}
            by_function: dict[str, dict[str, int]] = {}
            for key, code in sorted(meta["exit_code_by_key"].items(), key=lambda kv: _natural(kv[0])):
                mangled = key.rpartition(".")[2].partition("__mutmut_")[0]
                if module == "train" and mangled not in TRAIN_FUNCTIONS:
                    continue  # train.py: only the loss/step functions count
                status = status_by_exit_code[code]
                bucket = {"killed": "killed", "survived": "survived", "timeout": "timeout"}.get(status)
                if status == "no tests":
                    bucket = "no_tests"
                if status == "not checked":
                    not_run.append(key)
                bucket = bucket or "other"
                counts[bucket] += 1
                counts["total"] += 1
                function = readable_function(mangled)
                fcounts = by_function.setdefault(function, {"killed": 0, "total": 0})
                fcounts["total"] += 1
                fcounts["killed"] += bucket in ("killed", "timeout")
                if bucket in ("survived", "no_tests", "other"):
                    diff = get_diff_for_mutant(key, path=path)
                    lineno, before, after = mutated_line(diff, lines, spans.get(mangled, (1, len(lines))))
                    survivors.append(
                        {
                            "mutant": key,
                            "module": f"dispsafe_nb/{module}.py",
                            "function": function,
                            "line": lineno,
                            "status": status,
                            "original": before,
                            "mutated": after,
                            "diff": diff,
                            "equivalent": equivalence(module, function, after),
                        }
                    )
            counts["score"] = (
                (counts["killed"] + counts["timeout"]) / counts["total"] if counts["total"] else None
            )
            counts["by_function"] = by_function
            per_module[f"dispsafe_nb/{module}.py"] = counts
        return {"modules": per_module, "survivors": survivors, "not_run": not_run}
    finally:
        os.chdir(cwd)


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def git_commit() -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    tracked = ["dispsafe_nb", "tests", "benchmarks/mutation.py"]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *tracked))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--workdir", default=str(WORKDIR))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from the last run's results in the scratch copy (e.g. after editing EQUIVALENT)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=MODULES,
        help="mutate only this module (repeatable; for development)",
    )
    args = parser.parse_args()
    modules = tuple(args.only or MODULES)
    os.environ.update(THREAD_ENV)

    workdir = Path(args.workdir)
    run_info = workdir / "run.json"
    if not args.report_only:
        started = time.time()
        prepare_workdir(workdir)
        log = workdir / "mutmut.log"
        rc = run_mutmut(workdir, args.jobs, mutant_globs(modules), log)
        if rc != 0:
            print(log.read_text()[-4000:])
            raise SystemExit(f"mutmut run exited with {rc}; its log is {log}")
        info = {"wall_time_s": round(time.time() - started, 1), "git": git_commit(), "jobs": args.jobs}
        run_info.write_text(json.dumps(info))
    if not run_info.exists():
        raise SystemExit(f"no finished run in {workdir}: run without --report-only first")
    info = json.loads(run_info.read_text())
    wall = info["wall_time_s"]

    found = collect(workdir, modules)
    survivors = found["survivors"]
    totals = {
        k: sum(m[k] for m in found["modules"].values())
        for k in ("killed", "survived", "timeout", "no_tests", "other", "total")
    }
    caught = totals["killed"] + totals["timeout"]
    totals["score"] = caught / totals["total"]
    equivalent = [
        {
            "module": s["module"],
            "function": s["function"],
            "line": s["line"],
            "mutated": s["mutated"],
            **s["equivalent"],
        }
        for s in survivors
        if s["equivalent"]
    ]
    by_kind = {k: sum(e["kind"] == k for e in equivalent) for k in sorted({e["kind"] for e in equivalent})}
    never = len(equivalent) - by_kind.get("equivalent on CPU", 0)
    totals["equivalent_by_kind"] = by_kind
    totals["score_excluding_equivalent"] = caught / (totals["total"] - never)
    totals["score_excluding_equivalent_and_cpu_only"] = caught / (totals["total"] - len(equivalent))
    for name, m in found["modules"].items():
        kinds = [e["kind"] for e in equivalent if e["module"] == name]
        m_never = sum(k != "equivalent on CPU" for k in kinds)
        m["equivalent_by_kind"] = {k: kinds.count(k) for k in sorted(set(kinds))}
        m["score_excluding_equivalent"] = (m["killed"] + m["timeout"]) / (m["total"] - m_never)
        m["score_excluding_equivalent_and_cpu_only"] = (m["killed"] + m["timeout"]) / (
            m["total"] - len(kinds)
        )
    open_survivors = [s for s in survivors if not s["equivalent"]]
    report = {
        "tool": {"name": "mutmut", "version": version("mutmut")},
        "score": totals["score"],
        "target": 0.85,
        "met": totals["score"] >= 0.85,
        "totals": totals,
        "modules": found["modules"],
        "equivalent": equivalent,
        "not_equivalent_survivors": [
            {k: s[k] for k in ("mutant", "module", "function", "line", "status", "mutated")}
            for s in open_survivors
        ],
        "survivors": survivors,
        "not_run": found["not_run"],
        "config": {
            "modules": [f"dispsafe_nb/{m}.py" for m in modules],
            "train_py": "only these functions are mutated: " + ", ".join(TRAIN_FUNCTIONS.values()),
            "mutant_globs": mutant_globs(modules),
            "tests": list(TESTS),
            "pytest_args": list(PYTEST_ARGS),
            "jobs": info["jobs"],
            "threads_per_process": 1,
            "score": "(killed + timeout) / total; survivors and mutants no test reaches count against it",
        },
        "git": info["git"],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "wall_time_s": round(wall, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"mutation score {totals['score']:.1%} ({caught}/{totals['total']}), target 85 %")
    for name, m in found["modules"].items():
        print(
            f"  {name}: {m['score']:.1%} (killed {m['killed']}, timeout {m['timeout']}, survived {m['survived']}, "
            f"no tests {m['no_tests']}, total {m['total']}; equivalent survivors {m['equivalent_by_kind']})"
        )
    print(
        f"{len(survivors)} survivors: {len(equivalent)} judged equivalent {by_kind}, {len(open_survivors)} open; "
        f"wall time {wall / 60:.1f} min -> {out}"
    )
    for s in open_survivors:
        print(f"  open: {s['module']}:{s['line']} {s['function']}: {s['mutated']}")


if __name__ == "__main__":
    main()
