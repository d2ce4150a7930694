import json

from groundflow.train.checkpoints import last_complete_checkpoint


def save(folder, step, state: str | None):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_resume_skips_checkpoints_killed_while_saving(tmp_path, caplog):
    done = save(tmp_path, 2, json.dumps({"global_step": 2}))
    save(tmp_path, 10, json.dumps({"global_step": 10})[:-5])  # state cut off mid-write
    save(tmp_path, 12, None)  # killed before the state was written
    assert last_complete_checkpoint(tmp_path) == str(done)
    assert "checkpoint-12 is incomplete" in caplog.text and "checkpoint-10 is incomplete" in caplog.text


def test_newest_complete_checkpoint_by_step_not_by_name(tmp_path):
    save(tmp_path, 9, json.dumps({"global_step": 9}))
    newest = save(tmp_path, 10, json.dumps({"global_step": 10}))
    (tmp_path / "checkpoint-notes").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(newest)


def test_a_state_of_another_step_is_not_this_checkpoint(tmp_path):
    save(tmp_path, 4, json.dumps({"global_step": 2}))  # a copied or stale state file
    assert last_complete_checkpoint(tmp_path) is None
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_before_step_picks_the_checkpoint_below_it(tmp_path):
    earlier = save(tmp_path, 4, json.dumps({"global_step": 4}))
    save(tmp_path, 8, json.dumps({"global_step": 8}))
    assert last_complete_checkpoint(tmp_path, before_step=8) == str(earlier)
    assert last_complete_checkpoint(tmp_path, before_step=4) is None
