"""Judging model outputs against references (CVC answer checking by dense similarity)."""

from groundflow.judge.answers import answer_similarities, judge_correct

__all__ = ["answer_similarities", "judge_correct"]
