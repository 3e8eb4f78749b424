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


INT_1, INT_0 = "an int >= 1", "an int >= 0 (0: never)"
BAD_DISTILL = [  # (field, bad value, the allowed range the message states)
    ("lr", -1e-3, "a finite number > 0"),
    ("lr", 0.0, "a finite number > 0"),
    ("lr", math.inf, "a finite number > 0"),
    ("value_lr", 0, "a finite number > 0"),
    ("n_tokens", 0, INT_1),
    ("steps", 0, INT_1),
    ("batch_size", -2, INT_1),
    ("grad_accum", 0, INT_1),
    ("rl_samples", 0, INT_1),
    ("rl_max_new_tokens", 0, INT_1),
    ("ppo_epochs", 0, INT_1),
    ("eval_every", -1, INT_0),
    ("checkpoint_every", -1, INT_0),
    ("lora_rank", 0, "None or an int >= 1"),
    ("steering_layer", -1, "None or an int >= 0"),
    ("ppo_beta", -0.1, "a finite number >= 0"),
    ("value_coef", -1.0, "a finite number >= 0"),
    ("ppo_clip", 1.0, "a number in (0, 1)"),
    ("ppo_clip", 0.0, "a number in (0, 1)"),
    ("gae_lambda", 1.5, "a number in [0, 1]"),
    ("gae_lambda", -0.5, "a number in [0, 1]"),
    ("init_text", "  ", "a non-empty string"),
]


@pytest.mark.parametrize(("field", "value", "allowed"), BAD_DISTILL)
def test_distill_config_refuses_each_bad_number(field, value, allowed):
    with pytest.raises(ValueError) as err:
        DistillConfig(**{field: value})
    assert str(err.value) == f"DistillConfig.{field} must be {allowed}, not {value!r}"


def test_distill_config_accepts_every_boundary_value():
    DistillConfig(
        eval_every=0, checkpoint_every=0, lora_rank=1, steering_layer=0, ppo_beta=0.0, value_coef=0.0
    )
    DistillConfig(gae_lambda=0.0)
    DistillConfig(gae_lambda=1.0)
    DistillConfig(ppo_clip=0.01, lr=1e-12, value_lr=1e-12)


def test_distill_config_cross_field_errors_say_what_to_do():
    with pytest.raises(ValueError) as err:
        DistillConfig(objective="ppo", rl_samples=1)
    assert str(err.value) == "reward objectives need rl_samples >= 2 (the leave-one-out baseline needs two)"
    with pytest.raises(ValueError) as err:
        DistillConfig(scoring="separate", autocast="bf16")
    assert (
        str(err.value) == "autocast='bf16' needs scoring='shared_prompt' (the reference path stays float32)"
    )


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
