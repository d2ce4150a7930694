# Tiny randomly initialised models of the real architectures for the embedded default.
# They are saved like real checkpoints and loaded by path through the same loaders.


rule build_tiny_model:
    output:
        directory(config["models_dir"] + "/tiny-{kind}"),
    params:
        seed=config["seed"],
    wildcard_constraints:
        kind="llama|roberta|grounding-dino|sam|llava|llama3|clip",
    log:
        "logs/models/tiny-{kind}.log",
    benchmark:
        "benchmarks/models/tiny-{kind}.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/build_tiny_model.py"
