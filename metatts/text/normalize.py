"""English text normalization: what a reader would say, spelled out in words, before phonemization.

espeak-ng reads digits and some symbols itself, but not always the way a transcript means them
("$5.20", "1999", "3rd", "Dr. Smith"), and when it does the phonemes no longer match the words of the
transcript. Everything a listener hears is therefore made explicit here, so the text in the feature
store, the phonemes and the audio agree. The steps run in a fixed order because later ones rely on
earlier ones: unicode cleanup first (so every later pattern sees plain ASCII punctuation), casing
before abbreviations (so "MR. SMITH" and "Mr. Smith" take the same path), abbreviations before
numbers ("No. 5"), currency and percentages before bare numbers (they consume their digits).

``normalize_text`` is a pure function and idempotent: normalizing normalized text changes nothing.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_text", "number_to_words", "ordinal_to_words", "year_to_words"]

# ---------------------------------------------------------------------------------------------------
# numbers

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ["", "thousand", "million", "billion", "trillion", "quadrillion"]
_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                      "nine": "ninth", "twelve": "twelfth"}


def _below_thousand(n: int) -> str:
    words = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens] + (f" {_ONES[ones]}" if ones else ""))
    elif rest or not hundreds:
        words.append(_ONES[rest])
    return " ".join(words)


def number_to_words(n: int) -> str:
    """Cardinal in American style, without "and": 2019 -> "two thousand nineteen"; negatives get "minus"."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 1000:
        return _below_thousand(n)
    if n >= 1000 ** len(_SCALES):
        # Beyond quadrillions nobody says the number; reading the digits is what a person would do.
        return " ".join(_ONES[int(d)] for d in str(n))
    groups = []
    scale = 0
    while n:
        n, group = divmod(n, 1000)
        if group:
            groups.append(_below_thousand(group) + (f" {_SCALES[scale]}" if scale else ""))
        scale += 1
    return " ".join(reversed(groups))


def ordinal_to_words(n: int) -> str:
    """21 -> "twenty first"; only the last word of the cardinal changes."""
    words = number_to_words(n).split(" ")
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_to_words(n: int) -> str:
    """Years the way they are spoken: 1999 "nineteen ninety nine", 1905 "nineteen oh five",
    1900 "nineteen hundred", 2000 "two thousand", 2007 "two thousand seven", 2019 "twenty nineteen"."""
    if n % 1000 == 0 or 2000 <= n < 2010 or not 1000 <= n <= 9999:
        return number_to_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{number_to_words(high)} hundred"
    if low < 10:
        return f"{number_to_words(high)} oh {_ONES[low]}"
    return f"{number_to_words(high)} {number_to_words(low)}"


def _digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s)


def _plural(words: str) -> str:
    """"nineteen ninety" -> "nineteen nineties" (for decades such as "1990s")."""
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}".strip()


def _int_words(s: str) -> str:
    """A digit string, possibly with thousands commas. Leading zeros ("007") are read digit by digit."""
    s = s.replace(",", "")
    if len(s) > 1 and s.startswith("0"):
        return _digits(s)
    return number_to_words(int(s))


def _decimal_words(integer: str, fraction: str) -> str:
    head = _int_words(integer) if integer else ""
    return f"{head} point {_digits(fraction)}".strip()


# ---------------------------------------------------------------------------------------------------
# regular expressions, compiled once (they are constants, not state)

_NUM = r"\d{1,3}(?:,\d{3})+|\d+"  # "1,234,567" or "1234567"
_SCALE_WORD = r"(?:hundred|thousand|million|billion|trillion)"
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents"), "¥": ("yen", "yen", "sen", "sen")}
_CURRENCY_RE = re.compile(r"([$£€¥])\s?(" + _NUM + r")(?:\.(\d+))?(?:\s(" + _SCALE_WORD + r")\b)?")
_PERCENT_RE = re.compile(r"(-?)(" + _NUM + r")?(?:\.(\d+))?\s?(?:%|\bper ?cent\b)")
_ORDINAL_RE = re.compile(r"\b(" + _NUM + r")(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(1[1-9]|20)(\d0)'?s\b")
_SHORT_DECADE_RE = re.compile(r"(?<!\w)'([2-9]0)s\b")
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})\b(?:\s?([ap])\.?\s?m\b\.?)?", re.IGNORECASE)
_AMPM_RE = re.compile(r"\b(\d{1,2})\s?([ap])\.?m\b\.?", re.IGNORECASE)
_RANGE_RE = re.compile(r"(\d)\s?[-–]\s?(\d)")
_DECIMAL_RE = re.compile(r"(?<![\d.])(\d*)\.(\d+)\b")
_YEAR_RE = re.compile(r"(?<![\d,.$£€¥])\b(1[1-9]\d\d|20\d\d)\b(?![,.]\d)")
_INT_RE = re.compile(r"(?<![\d])(" + _NUM + r")(?!\d)")
_NEGATIVE_RE = re.compile(r"(?<![\w\d])-(?=\d)")
_FRACTION_RE = re.compile(r"\b([1-9])/([2-9]|10)\b")
_HASH_NUMBER_RE = re.compile(r"#\s?(?=\d)")

_FRACTION_NAMES = {2: ("half", "halves"), 3: ("third", "thirds"), 4: ("quarter", "quarters"),
                   5: ("fifth", "fifths"), 6: ("sixth", "sixths"), 7: ("seventh", "sevenths"),
                   8: ("eighth", "eighths"), 9: ("ninth", "ninths"), 10: ("tenth", "tenths")}


def _currency(m: re.Match) -> str:
    symbol, whole, fraction, scale = m.groups()
    unit, units, sub, subs = _CURRENCIES[symbol]
    if scale:
        # "$3.5 million" is "three point five million dollars": the fraction belongs to the scale.
        amount = _decimal_words(whole, fraction) if fraction else _int_words(whole)
        return f"{amount} {scale} {units}"
    n = int(whole.replace(",", ""))
    cents = int((fraction + "00")[:2]) if fraction else 0
    if fraction and len(fraction) > 2:
        return f"{_decimal_words(whole, fraction)} {units}"
    parts = []
    if n or not cents:
        parts.append(f"{_int_words(whole)} {unit if n == 1 else units}")
    if cents:
        parts.append(f"{number_to_words(cents)} {sub if cents == 1 else subs}")
    return " and ".join(parts)


def _percent(m: re.Match) -> str:
    sign, whole, fraction = m.groups()
    if whole is None and fraction is None:
        return m.group(0)
    amount = _decimal_words(whole or "", fraction) if fraction else _int_words(whole)
    return ("minus " if sign else "") + amount + " percent"


def _time(m: re.Match) -> str:
    hours, minutes, half = int(m.group(1)), int(m.group(2)), m.group(3)
    if hours > 24 or minutes > 59:
        return m.group(0)  # not a clock time (a ratio or a score): leave it to the later rules
    words = number_to_words(hours)
    if minutes == 0:
        words += "" if half else " o'clock"
    elif minutes < 10:
        words += f" oh {_ONES[minutes]}"
    else:
        words += f" {number_to_words(minutes)}"
    if half:
        # "ay em" rather than "a m": espeak reads a lone "a" as the article.
        words += " ay em" if half.lower() == "a" else " pee em"
    return words + _full_stop(m, m.group(0).endswith("."))


def _ampm(m: re.Match) -> str:
    return (number_to_words(int(m.group(1))) + (" ay em" if m.group(2).lower() == "a" else " pee em")
            + _full_stop(m, m.group(0).endswith(".")))


def _fraction(m: re.Match) -> str:
    num, den = int(m.group(1)), int(m.group(2))
    one, many = _FRACTION_NAMES[den]
    if num == 1:
        return ("a " if den != 2 else "one ") + one
    return f"{number_to_words(num)} {many}"


def _expand_numbers(s: str) -> str:
    s = _CURRENCY_RE.sub(_currency, s)
    s = _PERCENT_RE.sub(_percent, s)
    s = _ORDINAL_RE.sub(lambda m: ordinal_to_words(int(m.group(1).replace(",", ""))), s)
    s = _DECADE_RE.sub(lambda m: _plural(year_to_words(int(m.group(1) + m.group(2)))), s)
    s = _SHORT_DECADE_RE.sub(lambda m: _plural(number_to_words(int(m.group(1)))), s)
    s = _TIME_RE.sub(_time, s)
    s = _AMPM_RE.sub(_ampm, s)
    s = _HASH_NUMBER_RE.sub("number ", s)
    s = _FRACTION_RE.sub(_fraction, s)
    s = _RANGE_RE.sub(r"\1 to \2", s)
    s = _NEGATIVE_RE.sub("minus ", s)
    s = _DECIMAL_RE.sub(lambda m: _decimal_words(m.group(1), m.group(2)), s)
    s = _YEAR_RE.sub(lambda m: year_to_words(int(m.group(1))), s)
    s = _INT_RE.sub(lambda m: _int_words(m.group(1)), s)
    return s


# ---------------------------------------------------------------------------------------------------
# abbreviations

# Abbreviations that are only ever abbreviations when written with their period.
_DOTTED = {
    "prof": "professor", "jr": "junior", "sr": "senior", "capt": "captain", "col": "colonel",
    "gen": "general", "lt": "lieutenant", "sgt": "sergeant", "rev": "reverend", "hon": "honorable",
    "gov": "governor", "sen": "senator", "rep": "representative", "pres": "president", "mt": "mount",
    "co": "company", "corp": "corporation", "inc": "incorporated", "ltd": "limited", "ave": "avenue",
    "blvd": "boulevard", "rd": "road", "dept": "department", "approx": "approximately", "vs": "versus",
    "etc": "et cetera", "jan": "january", "feb": "february", "mar": "march", "apr": "april",
    "jun": "june", "jul": "july", "aug": "august", "sep": "september", "sept": "september",
    "oct": "october", "nov": "november", "dec": "december", "mon": "monday", "tue": "tuesday",
    "tues": "tuesday", "wed": "wednesday", "thu": "thursday", "thurs": "thursday", "fri": "friday",
    "sat": "saturday", "sun": "sunday",
}
# Titles, expanded with or without the period (British style writes "Mr Smith").
_TITLES = {"mr": "mister", "mrs": "missus", "ms": "miz", "messrs": "messieurs"}
_LATIN_RE = re.compile(r"\b(e\.\s?g|i\.\s?e|a\.\s?k\.\s?a)\.(?=\s|$|[,;:])", re.IGNORECASE)
_LATIN = {"eg": "for example", "ie": "that is", "aka": "also known as"}
_NUMBER_ABBREV_RE = re.compile(r"\b(no|nos)\.\s?(?=\d)", re.IGNORECASE)
_TITLE_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\b\.?(?=\s+[A-Za-z])", re.IGNORECASE)
_DOTTED_RE = re.compile(r"\b(" + "|".join(sorted(_DOTTED, key=len, reverse=True)) + r")\.", re.IGNORECASE)
_ST_DR_RE = re.compile(r"(\b[A-Za-z]+\s+)?\b(st|dr)\b\.?(\s+[A-Za-z]+)?", re.IGNORECASE)


# Abbreviations that can close a sentence; their period then doubles as the full stop and is kept.
_CAN_END_SENTENCE = {"etc", "inc", "ltd", "co", "corp", "jr", "sr", "approx", "ave", "blvd", "rd", "dept",
                     "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
                     "mon", "tue", "tues", "wed", "thu", "thurs", "fri", "sat", "sun"}


def _keep_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


def _full_stop(m: re.Match, consumed_period: bool) -> str:
    """"." when the period an expansion swallowed also ended the sentence (end of text, or a capital follows)."""
    rest = m.string[m.end():]
    return "." if consumed_period and (not rest.strip() or re.match(r"\s+[A-Z]", rest)) else ""


def _st_dr(m: re.Match) -> str:
    before, abbrev, after = m.group(1) or "", m.group(2), m.group(3) or ""
    raw = m.group(0)[len(before):len(m.group(0)) - len(after)]
    if not raw.endswith(".") and not after.strip()[:1].isupper():
        # Without a period "st"/"dr" before a lowercase word is not an abbreviation we can trust.
        return m.group(0)
    # Before a name it is a title ("St. John", "Dr. Lee"); after a capitalized name with no name following,
    # a street ("Baker St. near"). All-lower-case text has no capitals to go by, so a following word decides.
    title = bool(after.strip()) and (after.strip()[:1].isupper() or not before[:1].isupper())
    word = {"st": ("saint", "street"), "dr": ("doctor", "drive")}[abbrev.lower()][0 if title else 1]
    stop = _full_stop(m, raw.endswith(".")) if not after else ""
    return before + _keep_case(word, abbrev) + stop + after


def _expand_abbreviations(s: str) -> str:
    s = _LATIN_RE.sub(lambda m: _LATIN[re.sub(r"[\s.]", "", m.group(1).lower())], s)
    s = _NUMBER_ABBREV_RE.sub(lambda m: "numbers " if m.group(1).lower() == "nos" else "number ", s)
    s = _TITLE_RE.sub(lambda m: _keep_case(_TITLES[m.group(1).lower()], m.group(1)), s)
    s = _ST_DR_RE.sub(_st_dr, s)
    s = _DOTTED_RE.sub(lambda m: _keep_case(_DOTTED[m.group(1).lower()], m.group(1))
                       + (_full_stop(m, True) if m.group(1).lower() in _CAN_END_SENTENCE else ""), s)
    return s


# ---------------------------------------------------------------------------------------------------
# unicode, symbols, casing, whitespace

_CHAR_MAP = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u02bc\u0060\u00b4", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\u2039\u203a", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2043\u2212", "-"),  # hyphens and the minus sign
    "\u2044": "/", "\u00d7": " times ", "\u00b0": " degrees ", "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4",
}
_DASH_RE = re.compile(r"\s*[\u2013\u2014\u2015]+\s*|\s+-{1,3}\s+|(?<=\w)--+(?=\w)")
_SYMBOL_WORDS = [(re.compile(r"\s*&\s*"), " and "), (re.compile(r"\s*\+\s*"), " plus "),
                 (re.compile(r"\s*=\s*"), " equals "), (re.compile(r"(?<=\w)@(?=\w)"), " at "),
                 (re.compile(r"\s@\s"), " at ")]
_EN_DASH_RANGE_RE = re.compile(r"(\d)\s?\u2013\s?(\d)")
_BRACKETS_RE = re.compile(r"[()\[\]{}]")
_KEEP_RE = re.compile(r"[^\w\s'\-,.?!;:\"]")  # after cleanup only words, spaces and plain punctuation remain
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.?!;:])")
_COMMA_RUN_RE = re.compile(r",(\s*,)+")
_COMMA_BEFORE_STOP_RE = re.compile(r",\s*(?=[.?!;:]|$)")
_LEADING_PUNCT_RE = re.compile(r"^[\s,.;:!?\-]+(?=[\w'\"])|^[\s,;:\-]+$")
_STRAY_HYPHEN_RE = re.compile(r"(?<!\w)-+|-+(?!\w)")
_SPACES_RE = re.compile(r"\s+")


def _clean_unicode(s: str) -> str:
    # NFKC folds full-width forms, ligatures and compatibility characters ("ﬁ", "…") to plain ones.
    s = unicodedata.normalize("NFKC", s)
    s = "".join(_CHAR_MAP.get(c, c) for c in s)
    out = []
    for c in s:
        cat = unicodedata.category(c)
        if c.isspace() or cat in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif cat == "Cf":
            continue  # zero-width spaces and joiners, soft hyphens: invisible inside a word, so removed
        elif cat in ("So", "Sk", "Cs", "Co", "Cn", "Mn", "Me"):
            # Emoji, pictographs and private-use characters are silent (espeak would read emoji by
            # name: "grinning face"). NFKC already composed accents, so a lone combining mark left
            # here belongs to nothing.
            out.append(" ")
        elif cat.startswith("L") and ord(c) > 0x024F and not unicodedata.name(c, "").startswith("LATIN"):
            # Letters of other scripts: an English voice reads "中" as "chinese letter". They are not
            # part of what an English transcript says, so they are dropped.
            out.append(" ")
        else:
            out.append(c)
    return "".join(out)


def _is_shouting(s: str) -> bool:
    """True when the whole text is upper case (speechocean762, some subtitle corpora). espeak spells
    upper-case words it knows as abbreviations ("IT" becomes "I T"), which is wrong for such text."""
    cased = [c for c in s if c.isalpha() and c.lower() != c.upper()]
    return len(cased) >= 2 and all(c.isupper() for c in cased)


def normalize_text(text: str) -> str:
    """English transcript -> the words a reader would say, with plain punctuation and single spaces.

    Numbers, currency, percentages, ordinals, times, years and common abbreviations are spelled out;
    all-capitals text is lower-cased (otherwise espeak spells known acronyms such as "IT"); curly
    quotes, dashes and other unicode punctuation become plain ASCII; emoji and control characters are
    removed. Text with nothing pronounceable comes out as punctuation only, or empty.
    """
    s = _clean_unicode(text)
    if _is_shouting(s):
        s = s.lower()
    s = _EN_DASH_RANGE_RE.sub(r"\1 to \2", s)  # "1990–1995" is a range, not a pause
    s = _DASH_RE.sub(", ", s)
    s = s.replace("...", "\u2026")  # protect ellipses from the abbreviation and decimal rules
    s = _expand_abbreviations(s)
    s = _expand_numbers(s)
    for pattern, words in _SYMBOL_WORDS:
        s = pattern.sub(words, s)
    s = _BRACKETS_RE.sub(", ", s)
    s = s.replace("\u2026", "...")
    s = _KEEP_RE.sub(" ", s)
    s = s.replace("_", " ")  # \w keeps the underscore, which nobody pronounces
    s = _STRAY_HYPHEN_RE.sub(" ", s)
    s = _SPACES_RE.sub(" ", s).strip()
    s = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", s)
    s = _COMMA_RUN_RE.sub(",", s)
    s = _COMMA_BEFORE_STOP_RE.sub("", s)
    s = _LEADING_PUNCT_RE.sub("", s)
    # Punctuation glued to the next word ("yes,no") gets its space back, so words stay words.
    s = re.sub(r"([,;:?!])(?=[^\W\d_])", r"\1 ", s)
    return _SPACES_RE.sub(" ", s).strip()
