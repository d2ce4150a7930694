"""Ground What You See (GWYS, released as OMNEX-VL; spec `../shared/specs/gwys.md`): the pure core.

- `prompts`: one question prompt per output form (four-tag, think/answer) shared by SFT, RL and
  evaluation, per-problem-type instructions, the caption judge's request;
- `data`: LLaVA-CoT records into four-tag SFT records; Video-R1-style rows into the RL pool table;
- `rewards`: TRL reward callables (accuracy per problem type, format, caption via a text judge);
- `selection`: reward-variance selection (Hard / Easy / Medium, Medium ranked by variance);
- `conflict`: the InfoNCE conflict term over pooled representations, once per unique prompt;
- `advantages`: GRPO group advantages, the k3 KL, identical-group and all-wrong/all-correct checks;
- `grpo_settings`: the GRPO run's settings (the spec's values by default) and TRL's GRPOConfig
  arguments, pure Python.

The modules above import neither trl nor datasets (nor torch, but `conflict`'s tensor functions).
The model side sits on top of them: `grpo` (TRL's GRPOTrainer with the rewards and the conflict
term, `train_grpo`).
"""
