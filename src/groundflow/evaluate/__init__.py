"""Evaluations any method's checkpoint can take (a shared layer: nothing here imports a method).

`pope`: object hallucination of a vision-language model in the POPE form (Li et al., 2023).
"""
