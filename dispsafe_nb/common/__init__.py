"""The bottom layer: what every other layer may use and that knows nothing of models or data.

paths          where things live on disk (repository, results, figures, the cache)
names          "unknown name" messages that suggest the close match
artifacts      .safetensors + JSON artifacts (never pickle)
content_hash   stable hashes of data; `code_digest`, the digest of code by content that keys every cache
classifier_stats  AUROC, binary reports (TPR/FPR), Cohen's kappa and agreement of two binary judges
provenance     the commit and the processor a result was made on
"""
