"""Prompt files: exactly the fields a use fills, refused at load time naming the file otherwise."""

import pytest

from groundflow.prompts import load_prompt, prompt_fields


def test_a_users_file_is_read_and_versioned_by_its_text(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Caption: {caption} {{literal}}\n")
    prompt = load_prompt(path, "cvc/does-not-matter", fields={"caption"})
    assert prompt.format(caption="a dog") == "Caption: a dog {literal}\n"
    assert prompt.version.startswith("mine-")
    path.write_text("Caption, reworded: {caption}\n")
    assert load_prompt(path, "x", fields={"caption"}).version != prompt.version


def test_a_windows_file_reads_as_the_same_prompt(tmp_path):
    plain, windows = tmp_path / "plain.txt", tmp_path / "windows.txt"
    plain.write_bytes("Légende : {caption}\nRéponds.\n".encode())
    windows.write_bytes(b"\xef\xbb\xbf" + "Légende : {caption}\r\nRéponds.\r\n".encode())
    expected = load_prompt(plain, "x", fields={"caption"}).format(caption="犬")
    assert load_prompt(windows, "x", fields={"caption"}).format(caption="犬") == expected == "Légende : 犬\nRéponds.\n"


@pytest.mark.parametrize("text, words", [
    ("no field here", "lacks the field(s) {caption}"),
    ("{caption} {label}", "asks for unknown field(s) {label}"),
    ("{caption} {", "literal braces"),
])
def test_a_file_with_the_wrong_fields_is_refused_naming_it(tmp_path, text, words):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        load_prompt(path, "x", fields={"caption"})
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        load_prompt(tmp_path / "nothere.txt", "x", fields=set())


def test_fields_are_read_from_format_syntax():
    assert prompt_fields("{a} and {b!r} and {{c}}") == {"a", "b"}
