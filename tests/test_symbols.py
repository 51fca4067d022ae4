"""The symbol table: fixed ids, encode/decode, append-only growth, JSON persistence."""

from __future__ import annotations

import json

import pytest

from metatts.text.symbols import BASE_SYMBOLS, PAD, PAUSES, STRESS_MARKS, UNK, WORD_BOUNDARY, SymbolTable

# The ids saved feature stores and checkpoints rely on. Appending to BASE_SYMBOLS is fine; changing
# any of these positions breaks every saved artefact, which is what this test is for.
PINNED = (
    "<pad>", "<unk>", "|", ",", ".", "?", "!", "ˈ", "ˌ",
    "p", "b", "t", "d", "k", "ɡ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ", "h", "tʃ", "dʒ",
    "m", "n", "ŋ", "l", "ɹ", "w", "j", "ɾ", "ʔ", "n̩",
    "ə", "ɚ", "ɪ", "i", "iː", "ɛ", "æ", "ɑː", "ɔ", "ɔː", "ʊ", "uː", "ʌ", "ɐ", "ᵻ", "ɜː", "əl",
    "eɪ", "aɪ", "ɔɪ", "aʊ", "oʊ", "iə", "aɪə", "ɪɹ", "ɛɹ", "ʊɹ", "ɑːɹ", "ɔːɹ", "aɪɚ",
    "a", "aː", "ɒ", "əʊ", "eə", "ʊə", "ɛə", "r", "x", "u", "ʍ", "e", "eː", "o", "oː", "ɜ",
    "ʉ", "ʉː", "ʌʉ", "ʌɹ", "eʲ", "əɹ", "ʉɹ", "t̪", "ɑə", "oə", "ɔə", "aa", "æʊ", "ei", "əu", "ʌʊ", "oɪ", "əɪ",
)


def test_base_inventory_is_append_only():
    assert BASE_SYMBOLS[:len(PINNED)] == PINNED


def test_default_table_layout():
    table = SymbolTable()
    assert len(table) == len(BASE_SYMBOLS) and len(set(table.symbols)) == len(table)
    assert table.id(PAD) == table.pad_id == 0 and table.id(UNK) == table.unk_id == 1
    assert WORD_BOUNDARY in table and all(p in table for p in PAUSES) and all(s in table for s in STRESS_MARKS)


def test_encode_decode_round_trip():
    table = SymbolTable()
    seq = ["h", "ə", "l", "ˈ", "oʊ", ",", WORD_BOUNDARY, "w", "ˈ", "ɜː", "l", "d", "."]
    ids = table.encode(seq)
    assert all(isinstance(i, int) and i > 1 for i in ids)
    assert table.decode(ids) == seq


def test_unknown_symbols():
    table = SymbolTable()
    assert table.encode(["p", "Q!"]) == [table.id("p"), table.unk_id]
    with pytest.raises(KeyError, match="Q!"):
        table.encode(["p", "Q!"], strict=True)
    with pytest.raises(IndexError):
        table.decode([len(table)])


def test_extension_appends_and_keeps_ids():
    base = SymbolTable()
    grown = base.extended(["p", "ʀ", "ç", "ʀ"])
    assert len(grown) == len(base) + 2
    assert grown.symbols[-2:] == ("ʀ", "ç")  # first-seen order, no repeats
    assert grown.extends(base) and not base.extends(grown)
    assert grown.encode(["p", "d"]) == base.encode(["p", "d"])
    assert base.extended(["p", "d"]) is base  # nothing new, same table


def test_json_round_trip():
    table = SymbolTable().extended(["ʀ"])
    text = table.to_json()
    assert "ʀ" in text  # stored readable, not \\u-escaped
    assert SymbolTable.from_json(text) == table
    assert SymbolTable.from_dict(json.loads(text)) == table


@pytest.mark.parametrize("data", [
    {"format": "something else", "version": 1, "symbols": ["<pad>", "<unk>"]},
    {"format": "metatts.symbols", "version": 99, "symbols": ["<pad>", "<unk>"]},
])
def test_rejects_foreign_json(data):
    with pytest.raises(ValueError):
        SymbolTable.from_dict(data)


@pytest.mark.parametrize("symbols", [["a", "<pad>", "<unk>"], ["<pad>", "<unk>", "a", "a"], ["<pad>", "<unk>", ""]])
def test_rejects_malformed_tables(symbols):
    with pytest.raises(ValueError):
        SymbolTable(symbols)
