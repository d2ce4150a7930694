"""Draw the CVC evaluation demo's benchmark files (yes/no and multiple-choice records over fresh
drawn scenes, one bad record per file) into one folder."""
from pathlib import Path

from groundflow.cvc.eval_fixture import IMAGES_DIR, MULTIPLE_CHOICE_FILE, YES_NO_FILE, make_eval_fixture
from groundflow.pipeline import log, setup_logging

setup_logging(snakemake.log[0])
folder = Path(snakemake.output.yes_no).parent
expected = {"yes_no": folder / YES_NO_FILE, "multiple_choice": folder / MULTIPLE_CHOICE_FILE,
            "images": folder / IMAGES_DIR}
misnamed = {name: str(getattr(snakemake.output, name)) for name, path in expected.items()
            if Path(getattr(snakemake.output, name)) != path}
if misnamed:
    raise ValueError(f"the eval fixture's outputs must be {YES_NO_FILE}, {MULTIPLE_CHOICE_FILE} and {IMAGES_DIR}/ "
                     f"in one folder ({folder}); got {misnamed}")
summary = make_eval_fixture(folder, seed=snakemake.params.seed, n_images=snakemake.params.n_images,
                            include_bad=snakemake.params.include_bad)
log.info("CVC eval fixture: %d images; yes/no %s; multiple choice %s; bad records %s", summary["images"],
         summary["yes_no"], summary["multiple_choice"], summary["bad_records"])
