"""Analysis: trained runs in, numbers, tables and plots out.

`evaluate` (`cvtrain eval`: each network and their fusion), `logits` (the 12 exits'
logits and measured cost), `wise` (WISE weights, ablations, early exit and cost), and
`report` (Markdown and PNGs over seeds), and `input_rate` (`cvtrain bench-data`: whether
the loader keeps the model busy).
"""
