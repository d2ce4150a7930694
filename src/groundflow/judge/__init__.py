"""Judging model outputs against references: `judge.answers` (CVC answer checking by dense
similarity; it loads torch) and `judge.llm_judge` (multiple-choice answers by rule or by a judge
model through the generator layer; light). Import the module you need: this package imports
neither, so a light job that judges by rule never loads torch."""
