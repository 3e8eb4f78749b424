"""CUDA check: the package's device paths on a GPU, with a tiny Llama (no hub access needed).

Loads a small HF causal LM folder on the auto-selected device (bf16), compares batched and single generation,
trains a soft prompt for a few steps (gradients only on W), runs the Llama-Guard adapter, loads the same model in
4-bit NF4 through bitsandbytes on the GPU, and embeds text with a BERT-style encoder. Writes a JSON report.

    python benchmarks/gpu_check.py --model PATH_TO_HF_FOLDER [--out results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dispsafe_nb.core.decoding import DecodingConfig
from dispsafe_nb.core.loading import default_device, load_llm
from dispsafe_nb.core.scoring import sequence_logprobs
from dispsafe_nb.guards.llama_guard import LlamaGuard
from dispsafe_nb.methods import init_soft_prompt
from dispsafe_nb.training.objectives import kl_disp_loss

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "How do I bake bread?"]


def check(report: dict, name: str, fn) -> None:
    started = time.time()
    try:
        report[name] = {"ok": True, **(fn() or {})}
    except Exception as err:  # report every failure, keep checking the rest
        report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    report[name]["seconds"] = round(time.time() - started, 2)
    print(name, report[name], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="a local HF causal-LM folder (a tiny one is enough)")
    parser.add_argument("--out", default="results/gpu_check.json")
    args = parser.parse_args()
    report: dict = {
        "device": str(default_device()),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    llm = load_llm(args.model)

    def generation():
        decoding = DecodingConfig(max_new_tokens=8)
        batched = llm.generate(PROMPTS, decoding=decoding)
        single = [llm.generate([p], decoding=decoding)[0] for p in PROMPTS]
        sampled = llm.generate(
            PROMPTS[:1], decoding=DecodingConfig(max_new_tokens=8, temperature=0.8), num_samples=2
        )
        return {
            "device": str(llm.device),
            "dtype": str(llm.model.dtype),
            "batched_equals_single": batched == single,
            "n_sampled": len(sampled[0]),
        }

    def soft_prompt_training():
        sp = init_soft_prompt(llm, n_tokens=4).to(llm.device)
        opt = torch.optim.Adam(sp.trainable_parameters(), lr=1e-2, eps=1e-7)
        refusal = ["I can't help with that."] * 2
        before = sequence_logprobs(llm, PROMPTS[:2], refusal, method=sp).detach()
        for _ in range(3):
            logq_r = sequence_logprobs(llm, PROMPTS[:2], refusal, method=sp)
            loss = kl_disp_loss(logq_r, logq_r, torch.zeros(2, device=logq_r.device)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = sequence_logprobs(llm, PROMPTS[:2], refusal, method=sp).detach()
        frozen = all(p.grad is None for p in llm.model.parameters())
        out = sp.bind(llm).generate(PROMPTS, decoding=DecodingConfig(max_new_tokens=6))
        return {
            "logq_refusal_before": before.tolist(),
            "logq_refusal_after": after.tolist(),
            "rose": bool((after > before).all()),
            "backbone_frozen": frozen,
            "W_device": str(sp.W.device),
            "n_generated": len(out),
        }

    def llama_guard():
        guard = LlamaGuard(llm.model, llm.tokenizer, name="tiny")
        alpha = guard.prob_safe(PROMPTS, ["ok"] * len(PROMPTS))
        return {"alpha": alpha.tolist(), "in_unit_interval": bool(((alpha > 0) & (alpha < 1)).all())}

    def nf4():
        import bitsandbytes as bnb

        quant = load_llm(args.model, quantization="nf4")
        n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in quant.model.modules())
        out = quant.generate(PROMPTS[:2], decoding=DecodingConfig(max_new_tokens=6))
        sp = init_soft_prompt(quant, n_tokens=4).to(quant.device)
        logq = sequence_logprobs(quant, PROMPTS[:1], ["No."], method=sp)
        logq.sum().backward()
        return {
            "linear4bit_layers": n4,
            "device": str(quant.device),
            "generated": len(out),
            "W_grad": sp.W.grad is not None,
            "backbone_frozen": all(p.grad is None for p in quant.model.parameters()),
        }

    def encoder():
        from transformers import BertConfig, BertModel

        from dispsafe_nb.guards.encoders import SentenceEncoder

        cfg = BertConfig(
            vocab_size=len(llm.tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        enc = SentenceEncoder(BertModel(cfg).to(default_device()).eval(), llm.tokenizer, name="tiny-bert")
        x = enc.encode(PROMPTS)
        return {
            "shape": list(x.shape),
            "normalised": bool(torch.allclose(x.norm(dim=-1), torch.ones(3), atol=1e-4)),
        }

    for name, fn in [
        ("generation", generation),
        ("soft_prompt_training", soft_prompt_training),
        ("llama_guard", llama_guard),
        ("nf4", nf4),
        ("encoder", encoder),
    ]:
        check(report, name, fn)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print("all ok:", all(v.get("ok") for v in report.values() if isinstance(v, dict)))


if __name__ == "__main__":
    main()
