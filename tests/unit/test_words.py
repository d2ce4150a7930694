from groundflow.cvc.words import Word, find_occurrences, find_phrase_spans, word_tokenize


def texts(text):
    return [w.text for w in word_tokenize(text)]


def test_offsets_point_at_the_words():
    assert word_tokenize("A dog, sitting.") == [
        Word("A", 0, 1),
        Word("dog", 2, 5),
        Word(",", 5, 6),
        Word("sitting", 7, 14),
        Word(".", 14, 15),
    ]


def test_punctuation_is_split_off():
    assert texts('A "red" car (parked); then?!') == ["A", '"', "red", '"', "car", "(", "parked", ")", ";", "then", "?", "!"]
    assert texts("Wait... the cat--asleep") == ["Wait", "...", "the", "cat", "--", "asleep"]


def test_possessives_and_contractions_are_split():
    assert texts("A dog's bowl") == ["A", "dog", "'s", "bowl"]
    assert texts("the dogs' bowls") == ["the", "dogs", "'", "bowls"]
    assert texts("It isn't here, they can't go, I'm sure we'll see") == [
        "It", "is", "n't", "here", ",", "they", "ca", "n't", "go", ",", "I", "'m", "sure", "we", "'ll", "see",
    ]
    assert texts("a cat\u2019s toy") == ["a", "cat", "\u2019s", "toy"]


def test_hyphenated_words_stay_whole():
    assert texts("A 3-year-old boy in a t-shirt") == ["A", "3-year-old", "boy", "in", "a", "t-shirt"]


def test_numbers_and_abbreviations_stay_whole():
    assert texts("3.5 kg, 1,000 apples at 12:30 in the U.S.") == [
        "3.5", "kg", ",", "1,000", "apples", "at", "12:30", "in", "the", "U.S.",
    ]
    assert texts("2 dogs.") == ["2", "dogs", "."]


def test_empty_text():
    assert word_tokenize("") == []
    assert word_tokenize("   ") == []


def test_find_occurrences_ignores_case():
    caption = word_tokenize("Dog and a small DOG near the dog.")
    assert find_occurrences(caption, word_tokenize("dog")) == [(0, 1), (4, 5), (7, 8)]
    assert find_occurrences(caption, ["SMALL", "dog"]) == [(3, 5)]


def test_find_occurrences_matches_whole_words_only():
    caption = word_tokenize("The cattle and a hot-dog stand")
    assert find_occurrences(caption, ["cat"]) == []
    assert find_occurrences(caption, ["dog"]) == []
    assert find_occurrences(caption, ["hot-dog", "stand"]) == [(4, 6)]


def test_find_occurrences_edge_cases():
    assert find_occurrences(["a", "b"], []) == []
    assert find_occurrences([], ["a"]) == []
    assert find_occurrences(["a", "b"], ["a", "b", "c"]) == []
    # the typographic apostrophe matches the plain one
    assert find_occurrences(word_tokenize("the dog\u2019s bowl"), word_tokenize("dog's bowl")) == [(1, 4)]


def test_find_phrase_spans_returns_character_spans():
    text = "A Small dog, a small dog's bowl."
    assert find_phrase_spans(text, "small dog") == [(2, 11), (15, 24)]
    assert text[2:11] == "Small dog"
    assert find_phrase_spans(text, "cat") == []
