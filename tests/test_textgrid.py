"""Reading MFA TextGrids into per-phone frame durations."""

from __future__ import annotations

import numpy as np
import pytest

from metatts.align import TextGridError, parse_textgrid, phone_durations, read_textgrid, textgrid_durations

# 100 frames per second (sample rate 16000, hop 160) makes the expected frame counts easy to read.
SR, HOP = 16000, 160

LONG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1.0
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 1.0
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.9
            text = "say ""hi"""
        intervals [3]:
            xmin = 0.9
            xmax = 1.0
            text = ""
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 1.0
        intervals: size = 7
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.304
            text = "S"
        intervals [3]:
            xmin = 0.304
            xmax = 0.5
            text = "EY1"
        intervals [4]:
            xmin = 0.5
            xmax = 0.55
            text = "sp"
        intervals [5]:
            xmin = 0.55
            xmax = 0.7
            text = "HH"
        intervals [6]:
            xmin = 0.7
            xmax = 0.9
            text = "AY1"
        intervals [7]:
            xmin = 0.9
            xmax = 1.0
            text = "sil"
'''

SHORT = '''File type = "ooTextFile"
Object class = "TextGrid"

0
1.0
<exists>
1
"IntervalTier"
"phones"
0
1.0
7
0
0.1
""
0.1
0.304
"S"
0.304
0.5
"EY1"
0.5
0.55
"sp"
0.55
0.7
"HH"
0.7
0.9
"AY1"
0.9
1.0
"sil"
'''


def test_long_and_short_formats_give_the_same_phones():
    long, short = parse_textgrid(LONG), parse_textgrid(SHORT)
    assert set(long) == {"words", "phones"}
    assert long["phones"] == short["phones"]
    assert long["words"].intervals[1].text == 'say "hi"'  # doubled quotes unescaped
    assert [i.text for i in long["phones"].intervals] == ["", "S", "EY1", "sp", "HH", "AY1", "sil"]


def test_durations_in_frames_keep_silences_and_sum_to_the_mel_length():
    result = phone_durations(parse_textgrid(LONG), SR, HOP, n_frames=100)
    assert result.phones == ["sil", "S", "EY1", "sil", "HH", "AY1", "sil"]
    assert result.durations.tolist() == [10, 20, 20, 5, 15, 20, 10]  # 0.304 s rounds to frame 30
    assert result.durations.dtype == np.int64


def test_last_boundary_is_pinned_to_the_mel_length():
    # A centred STFT gives one frame more than duration / hop: the last phone absorbs it, the sum stays exact.
    for frames in (99, 101, 102):
        result = phone_durations(parse_textgrid(LONG), SR, HOP, n_frames=frames)
        assert result.durations.sum() == frames
        assert result.durations[:-1].tolist() == [10, 20, 20, 5, 15, 20]


def test_silences_can_be_dropped_and_their_frames_given_to_neighbours():
    result = phone_durations(parse_textgrid(LONG), SR, HOP, n_frames=100, silence_label=None)
    assert result.phones == ["S", "EY1", "HH", "AY1"]
    assert result.durations.tolist() == [30, 20, 20, 30]  # leading silence to S, "sp" to HH, trailing to AY1


def test_trimmed_audio_is_cut_from_the_grid():
    # Feature extraction trimmed 0.1 s of leading and trailing silence: 80 frames remain.
    result = phone_durations(parse_textgrid(LONG), SR, HOP, n_frames=80, start_seconds=0.1)
    assert result.phones == ["S", "EY1", "sil", "HH", "AY1"]
    assert result.durations.tolist() == [20, 20, 5, 15, 20]


def test_every_phone_keeps_a_frame_when_phones_are_shorter_than_a_hop():
    grid = parse_textgrid(SHORT.replace("0.304", "0.101"))  # "S" lasts 1 ms
    result = phone_durations(grid, SR, HOP, n_frames=100)
    assert (result.durations >= 1).all() and result.durations.sum() == 100
    assert result.durations[1] == 1


def test_errors_name_the_problem():
    with pytest.raises(TextGridError, match="no interval tier named 'phone'"):
        phone_durations(parse_textgrid(LONG), SR, HOP, 100, tier="phone")
    with pytest.raises(TextGridError, match=r"line 13: expected a number for xmin of interval 1 of tier 'phones'"):
        parse_textgrid(SHORT.replace("7\n0\n0.1", '7\n"zero"\n0.1'))
    with pytest.raises(TextGridError, match="file ends"):
        parse_textgrid(SHORT[: SHORT.index('"HH"')])
    with pytest.raises(TextGridError, match="not a Praat text file"):
        parse_textgrid("hello")
    with pytest.raises(TextGridError, match="covers 100.0 frames but the utterance has 200"):
        phone_durations(parse_textgrid(LONG), SR, HOP, n_frames=200)  # e.g. a wrong hop length


def test_read_textgrid_from_utf16_file(tmp_path):
    path = tmp_path / "a.TextGrid"
    path.write_bytes(LONG.encode("utf-16"))
    assert read_textgrid(path)["phones"] == parse_textgrid(LONG)["phones"]
    assert textgrid_durations(path, SR, HOP, 100).durations.sum() == 100
