"""English normalization: numbers, money, times, abbreviations, casing, unicode, whitespace."""

from __future__ import annotations

import pytest

from metatts.text.normalize import normalize_text, number_to_words, ordinal_to_words, year_to_words


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (42, "forty two"), (100, "one hundred"),
    (101, "one hundred one"), (1000, "one thousand"), (2019, "two thousand nineteen"),
    (1_234_567, "one million two hundred thirty four thousand five hundred sixty seven"),
    (-5, "minus five"),
])
def test_cardinals(n, words):
    assert number_to_words(n) == words


@pytest.mark.parametrize("n, words", [
    (1, "first"), (2, "second"), (3, "third"), (5, "fifth"), (11, "eleventh"), (12, "twelfth"),
    (21, "twenty first"), (40, "fortieth"), (112, "one hundred twelfth"),
])
def test_ordinals(n, words):
    assert ordinal_to_words(n) == words


@pytest.mark.parametrize("n, words", [
    (1999, "nineteen ninety nine"), (1905, "nineteen oh five"), (1900, "nineteen hundred"),
    (2000, "two thousand"), (2007, "two thousand seven"), (2019, "twenty nineteen"),
])
def test_years(n, words):
    assert year_to_words(n) == words


@pytest.mark.parametrize("text, expected", [
    ("I have 3 cats.", "I have three cats."),
    ("It was the 1st, 2nd, 3rd and 21st time.", "It was the first, second, third and twenty first time."),
    ("Born in 1999, moved in 2019.", "Born in nineteen ninety nine, moved in twenty nineteen."),
    ("Pi is 3.14 or about 0.5 of 6.28", "Pi is three point one four or about zero point five of six point two eight"),
    ("It costs $5.20 today.", "It costs five dollars and twenty cents today."),
    ("I paid $1.", "I paid one dollar."),
    ("Only $0.50 left", "Only fifty cents left"),
    ("They raised $1,000,000.", "They raised one million dollars."),
    ("A $3.5 million deal", "A three point five million dollars deal"),
    ("Two £2 coins and €10", "Two two pounds coins and ten euros"),
    ("About 50% agreed, 3.5% did not.", "About fifty percent agreed, three point five percent did not."),
    ("We met at 7:00 and left at 3:30 pm.", "We met at seven o'clock and left at three thirty pee em."),
    ("Wake me at 10 a.m.", "Wake me at ten ay em."),
    ("The 1990s and the '80s.", "The nineteen nineties and the eighties."),
    ("Pages 10-20, years 1990–1995.", "Pages ten to twenty, years nineteen ninety to nineteen ninety five."),
    ("It fell to -5 degrees.", "It fell to minus five degrees."),
    ("Add 1/2 a cup", "Add one half a cup"),
    ("Agent 007 was #1 of 10,000", "Agent zero zero seven was number one of ten thousand"),
])
def test_numbers_in_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith and Mrs. Jones met Dr. Lee.", "Mister Smith and Missus Jones met Doctor Lee."),
    ("Mr Smith arrived.", "Mister Smith arrived."),
    ("She lives near St. John's church.", "She lives near Saint John's church."),
    ("He lives on Main St.", "He lives on Main Street."),
    ("The shop on Baker St. near the park.", "The shop on Baker Street near the park."),
    ("Turn left at Elm Dr. and stop.", "Turn left at Elm Drive and stop."),
    ("Bring pens, paper, etc. Then sit.", "Bring pens, paper, et cetera. Then sit."),
    ("Fruit, e.g. apples, i.e. the red ones", "Fruit, for example apples, that is the red ones"),
    ("Room No. 5 vs. room No. 6", "Room number five versus room number six"),
    ("On Jan. 5th, Prof. Chen spoke.", "On January fifth, Professor Chen spoke."),
])
def test_abbreviations(text, expected):
    assert normalize_text(text) == expected


def test_all_caps_is_lower_cased():
    # speechocean762 transcripts are upper case; espeak would read "IT" as the acronym I.T.
    assert normalize_text("WE CALL IT BEAR") == "we call it bear"
    assert normalize_text("MR. AND MRS. SMITH WENT TO DR. JONES") == "mister and missus smith went to doctor jones"


def test_mixed_case_keeps_acronyms():
    assert normalize_text("The IT department called the BBC.") == "The IT department called the BBC."
    assert normalize_text("I") == "I"  # one capital letter is not shouting


@pytest.mark.parametrize("text, expected", [
    ("\u201cHello,\u201d she said \u2014 twice\u2026", '"Hello," she said, twice...'),
    ("It\u2019s fine", "It's fine"),
    ("caf\u00e9 na\u00efve", "caf\u00e9 na\u00efve"),  # accented Latin letters stay: espeak reads them
    ("\uff11\uff12 apples", "twelve apples"),  # full-width digits
    ("a\u00a0b\u200bc", "a bc"),  # no-break space is a space, zero-width space is nothing
    ("I love it \U0001F600\U0001F600!", "I love it!"),
    ("\u4e2d\u6587 text", "text"),  # other scripts are dropped (an English voice says "chinese letter")
    ("Rock & roll + jazz", "Rock and roll plus jazz"),
    ("yes,no", "yes, no"),
    ("Hi -- there (really)", "Hi, there, really"),
])
def test_unicode_and_punctuation(text, expected):
    assert normalize_text(text) == expected


def test_whitespace_is_collapsed():
    assert normalize_text("  many \t spaces\n\nhere  .") == "many spaces here."


@pytest.mark.parametrize("text", ["", "   ", "\U0001F600", "\u4e2d\u6587"])
def test_nothing_pronounceable_gives_empty(text):
    assert normalize_text(text) == ""


@pytest.mark.parametrize("text", ["...", "!!!"])
def test_punctuation_only_stays_punctuation(text):
    assert normalize_text(text) == text  # the phonemizer turns it into an empty symbol list


@pytest.mark.parametrize("text", [
    "Mr. Smith paid $5.20 for 3 apples on Jan. 5th at 7:45 pm.", "WE CALL IT BEAR", "In the 1980s, 40% cost $1.10.",
    "\u201cQuoted\u201d \u2014 text\u2026 etc.", "He lives on Main St.", "Dr. Lee, St. Paul, and 1990–1995.",
])
def test_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
