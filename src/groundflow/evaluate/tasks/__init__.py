"""groundflow's lmms-eval task definitions (YAMLs and their Python helpers), package data read by
`groundflow.evaluate.harness` through `TaskManager(include_path=<this folder>)`."""
