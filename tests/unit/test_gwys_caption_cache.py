"""The caption reward's judge answers kept on disk across restarts (gwys.rewards.JudgeAnswerCache) and
its per-call metrics through TRL's `log_metric`."""

from groundflow.generate.backends import SamplingParams
from groundflow.gwys.rewards import CaptionReward, JudgeAnswerCache

QUESTION = "Which colour?\nOptions:\nA. blue\nB. red"


class Judge:
    """Answers B when the caption names a cube; raises for a caption holding "boom"."""

    def __init__(self, model="judge-a"):
        self.model = model
        self.asked = []

    def describe(self):
        return {"backend": "fake", "model": self.model, "base_url": f"http://somewhere/{len(self.asked)}"}

    def generate(self, prompts, params):
        users = [p.messages[-1]["content"] for p in prompts]
        self.asked += users
        if any("boom" in u for u in users):
            raise TimeoutError("judge timed out")
        return [["<answer>B</answer>" if "cube" in u else "<answer>A</answer>"] for u in users]


def completion(caption):
    return [{"role": "assistant", "content": f"<prethink>p</prethink><caption>{caption}</caption><think>t</think><answer>B</answer>"}]


def columns(n):
    return {"format_question": [QUESTION] * n, "solution": ["<answer>B</answer>"] * n,
            "problem_type": ["multiple choice"] * n}


def test_a_restarted_run_reads_the_answers_from_disk(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    first = Judge()
    assert CaptionReward(first, cache_file=cache)([completion("a red cube"), completion("a blue ball")], **columns(2)) == [1.0, 0.0]
    assert len(first.asked) == 2
    again = Judge()  # a new process: nothing in memory
    reward = CaptionReward(again, cache_file=cache)
    assert reward([completion("a red cube"), completion("a blue ball"), completion("a cube again")], **columns(3)) == [1.0, 0.0, 1.0]
    assert len(again.asked) == 1 and "a cube again" in again.asked[0]  # only the new caption is asked
    assert len(reward.store) == 3


def test_another_judge_or_other_sampling_does_not_reuse_the_answers(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    CaptionReward(Judge("judge-a"), cache_file=cache)([completion("a red cube")], **columns(1))
    other_model = Judge("judge-b")
    CaptionReward(other_model, cache_file=cache)([completion("a red cube")], **columns(1))
    assert len(other_model.asked) == 1
    other_sampling = Judge("judge-a")
    CaptionReward(other_sampling, cache_file=cache, params=SamplingParams(max_new_tokens=7))([completion("a red cube")], **columns(1))
    assert len(other_sampling.asked) == 1
    assert len(cache.read_text().splitlines()) == 3  # every judge's lines kept


def test_a_line_cut_short_is_skipped_and_failures_are_not_stored(tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    reward = CaptionReward(Judge(), cache_file=cache)
    reward([completion("a red cube"), completion("boom")], **columns(2))
    assert len(cache.read_text().splitlines()) == 1  # the failed request is not stored
    with cache.open("a") as f:
        f.write('{"judge": "x", "caption": "cut')
    assert len(JudgeAnswerCache(cache, reward.store.fingerprint)) == 1


def test_each_call_logs_its_failures_and_requests():
    logged = []
    reward = CaptionReward(Judge())
    log_metric = lambda name, value: logged.append((name, value))  # noqa: E731  (TRL's callback)
    group = [completion("a red cube"), completion("boom"), completion("boom"), completion("a red cube")]
    assert reward(group, log_metric=log_metric, **columns(4)) == [1.0, 0.0, 0.0, 1.0]
    # the batch of two distinct requests fails and each is asked again (4 requests); two completions failed
    assert logged == [("caption/judge_failures", 2.0), ("caption/judge_requests", 4.0)]
    logged.clear()
    reward([completion("a red cube")], log_metric=log_metric, **columns(1))
    assert logged == [("caption/judge_failures", 0.0), ("caption/judge_requests", 0.0)]  # answered from memory
