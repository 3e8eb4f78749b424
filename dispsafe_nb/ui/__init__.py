"""Interactive front ends (notebooks 06 and 07): their logic is plain functions, tested without a browser.

prober                  probe(): any prompts through any systems, with alpha, verdicts, q(y_r | x) and latency
probe_records           what a probe is asked (ProbeDecoding) and what it returns (SystemAnswer, ProbeResult)
prompt_presets          evaluation prompts by set and category (test splits), notebook 06's fixed list
over_refusal_explorer   over-refusal by XSTest type / JBB category from evaluation records
widgets                 the ipywidgets front ends of both, and the toy explorer (render only)
"""
