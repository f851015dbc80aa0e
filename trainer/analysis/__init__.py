"""Analysis: trained runs in, numbers, tables and plots out.

`evaluate` (`cvtrain eval`: each network and their fusion), `logits` (the 12 exits'
logits and measured cost), `wise` (WISE weights, ablations, early exit and cost), and
`report` (Markdown and PNGs over seeds).
"""
