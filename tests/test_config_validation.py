"""Bad configs are refused where they are made, with an error naming the field, the value and the allowed range
(issue: DecodingConfig(max_new_tokens=-1), DecodingConfig(temperature=-1.0) and DistillConfig(lr=-1e-3) were
accepted without a word)."""

from __future__ import annotations

import math

import pytest

from dispsafe_nb.core.decoding import DECODING_PRESETS, DecodingConfig, decoding_preset
from dispsafe_nb.training.config import DistillConfig

BAD_DECODING = [
    ("max_new_tokens", -1),
    ("max_new_tokens", 0),
    ("max_new_tokens", 2.5),
    ("max_new_tokens", True),
    ("temperature", -1.0),
    ("temperature", math.nan),
    ("temperature", "hot"),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("seed", -1),
    ("seed", 1.0),
]


@pytest.mark.parametrize(("field", "value"), BAD_DECODING)
def test_decoding_config_refuses_each_bad_field(field, value):
    with pytest.raises(ValueError, match=rf"DecodingConfig\.{field} must be .*not {value!r}"):
        DecodingConfig(**{field: value})


def test_decoding_presets_are_the_one_home_of_the_defaults():
    assert DECODING_PRESETS["evaluation"].greedy and DECODING_PRESETS["probing"].greedy
    teacher = decoding_preset("teacher", max_new_tokens=12, seed=3)
    assert (teacher.temperature, teacher.top_p, teacher.max_new_tokens, teacher.seed) == (0.7, 0.95, 12, 3)
    assert DECODING_PRESETS["teacher"].seed == 0  # presets are not changed by a call
    with pytest.raises(ValueError, match="Did you mean 'teacher'"):
        decoding_preset("teachr")
    with pytest.raises(ValueError, match="DecodingConfig.max_new_tokens"):
        decoding_preset("evaluation", max_new_tokens=0)


BAD_DISTILL = [
    ("lr", -1e-3),
    ("lr", 0.0),
    ("lr", math.inf),
    ("value_lr", 0),
    ("n_tokens", 0),
    ("steps", 0),
    ("batch_size", -2),
    ("grad_accum", 0),
    ("rl_samples", 0),
    ("rl_max_new_tokens", 0),
    ("ppo_epochs", 0),
    ("eval_every", -1),
    ("checkpoint_every", -1),
    ("lora_rank", 0),
    ("steering_layer", -1),
    ("ppo_beta", -0.1),
    ("value_coef", -1.0),
    ("ppo_clip", 1.0),
    ("gae_lambda", 1.5),
    ("init_text", "  "),
]


@pytest.mark.parametrize(("field", "value"), BAD_DISTILL)
def test_distill_config_refuses_each_bad_number(field, value):
    with pytest.raises(ValueError, match=rf"DistillConfig\.{field} must be .*not {value!r}"):
        DistillConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value", "close"),
    [
        ("objective", "tvv", "tv"),
        ("init", "txt", "text"),
        ("reduction", "summ", "sum"),
        ("weighting", "per-token", "per_token"),
        ("lr_schedule", "linera", "linear"),
        ("teacher_alpha", "deploy", "deployed"),
        ("scoring", "shared", "shared_prompt"),
        ("autocast", "bf61", "bf16"),
        ("bucketing", "lenght", "length"),
        ("sampling", "epochs", "epoch"),
    ],
)
def test_distill_config_names_the_close_match_of_an_unknown_choice(field, value, close):
    with pytest.raises(
        ValueError, match=rf"Unknown DistillConfig\.{field} '{value}'\. Did you mean '{close}'"
    ):
        DistillConfig(**{field: value})


def test_good_configs_pass():
    DistillConfig(lr=1e-3, lora_rank=2, steering_layer=0, eval_every=0)
    DecodingConfig(max_new_tokens=1, temperature=0.0, top_p=1.0, seed=0)
