"""dispsafe_nb: the package behind the dispsafe notebooks.

Distilling a safe LLM system (LLM + guard) into soft prompts, after Alfarra et al., *Distilling Safe LLM Systems
via Soft Prompts for On Device Settings* (UAI 2026).

The map: one folder per layer, data flowing up. A module imports only from its own layer and the layers below it
(`make test` enforces it with import-linter; the contracts are in pyproject.toml). Each folder's docstring lists
its modules.

    notebooks/ exercises/   what the notebooks need to run, be tested and be worked through
    ui/                     the prober and the over-refusal explorer (ipywidgets front ends over plain functions)
    plots/                  plotly figures by concept
    report/                 what a run found: the paper's numbers, notebook checks, claims, findings, tables
    study/                  runs that train and evaluate: the pipeline, the baselines, the paper-scale student
    evaluation/ costs/      evaluate any system on named sets, judges, probes; on-device costs
    training/               distillation: config, examples, objectives (TV, KL, perplexity, REINFORCE, PPO), loop
    methods/                soft prompt, LoRA, steering vector, refusal direction: one `Method` interface
    system/                 the dual system (the teacher) and its cached samples
    guards/                 the `Guard` protocol, the embedding guard, Llama-Guard, guard training
    core/                   load an LLM, decode, score token ids: the base system
    data/                   prompt records, splits, bundled and public sets, training mixes, decontamination
    theory/ common/         the exact maths of Theorem 3.1 and the surrogates; paths, hashes, artifacts, statistics
"""

__version__ = "0.1.0"
