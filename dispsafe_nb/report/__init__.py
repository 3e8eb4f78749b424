"""What a run found, in one home: the paper's numbers, checks, claims and their rendering.

paper                  the paper's reference numbers and the boxes that show them
notebook_checks        named checks on each notebook's metrics, with the sabotages each must catch
claims                 what each notebook's prose claims about a full run (judged; may fail)
findings               the notebooks' "what this run found" passages, rendered from their metrics
baselines_tables       notebook 04's findings in Markdown
generalisation_tables  the generalisation reports and the variants table in Markdown
harm_probe_tables      the linear harm probe's report in Markdown
"""
