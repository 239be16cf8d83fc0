"""The file-level rules on their own: what a refusal says about the first row and about the quarantined share."""

from __future__ import annotations

import random
import re

import pytest

from abalone_pipeline.validation import SourceRejected, ValidationPolicy, check_fraction, check_header


def refusal_of_share(quarantined: int, data_rows: int, limit: float) -> str:
    with pytest.raises(SourceRejected) as refused:
        check_fraction(quarantined, data_rows, {"Sex:isin": quarantined}, [], "src", ValidationPolicy(limit))
    return str(refused.value)


@pytest.mark.parametrize(
    ("quarantined", "data_rows", "limit", "share", "shown_limit"),
    [
        (43, 4177, 0.01, "1.03%", "1.00%"),
        (3, 53, 0.01, "5.7%", "1.0%"),
        (10_001, 1_000_000, 0.01, "1.0001%", "1.0000%"),
        (62, 4177, 0.0125, "1.48%", "1.25%"),  # the limit as set, not rounded to 1.2%
        (2, 4177, 0.0, "0.05%", "0.00%"),
    ],
)
def test_the_share_shows_the_digits_that_tell_it_from_the_limit(quarantined, data_rows, limit, share, shown_limit):
    message = refusal_of_share(quarantined, data_rows, limit)
    assert f"({share}) break the row rules, more than the {shown_limit} allowed" in message


def test_a_share_above_the_limit_never_reads_as_equal_or_below_it():
    draw = random.Random(16)
    for _ in range(2000):
        data_rows = draw.randint(1, 10**9)
        limit = draw.choice([0.0, 0.001, 0.01, 0.0125, 0.05, 0.1, 0.3])
        quarantined = min(data_rows, int(limit * data_rows) + draw.randint(1, 3))
        if quarantined / data_rows <= limit:
            continue
        share, shown_limit = re.search(
            r"\(([\d.]+)%\) .* the ([\d.]+)% allowed", refusal_of_share(quarantined, data_rows, limit)
        ).groups()
        assert float(share) > float(shown_limit), (quarantined, data_rows, limit)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            ["M;0.455;0.365;0.095;0.514;0.2245;0.101;0.15;15"],
            r"^src line 3: 1 field where 9 were expected: wrong delimiter\? \(looks like ';'-separated\); "
            r"the source must be comma-separated$",
        ),
        (["M 0.455 0.365 0.095 0.514 0.2245 0.101 0.15 15"], r"\(looks like space-separated\)"),
        (
            ["M", "0,455", "0,365", "0,095", "0,514", "0,2245", "0,101", "0,15", "15"],
            r"^src line 3: the file has no header \(its first row is data\) and the row's fields cannot be read: "
            r"9 fields found \(9 expected\); "
            r"'0,455', '0,365', '0,095' and 4 more are not numbers \(decimal commas\? the decimal mark must be '\.'\)$",
        ),
        (
            ["M", "", "", "", "", "", "", "", "15"],
            r"9 fields found \(9 expected\); '', '', '' and 4 more are not numbers$",
        ),
        (
            ["Sex", "Length", "Diameter", "Height", "Shucked", "Whole", "Viscera", "Shell", "Rings"],
            r"^src: the header's columns are reordered \(Shucked, Whole out of place\)",
        ),
        (
            ["Sex", "Sex", "Diameter", "Height", "Whole", "Shucked", "Viscera", "Shell", "Rings"],
            r"does not name the expected columns: missing: Length; repeated: Sex\. Expected Sex, Length,",
        ),
        (
            ["Sex", "Length", "Diameter", "Height", "Whole", "Shucked", "Viscera", "Shell", "Age"],
            r"^src: unknown or renamed columns: 'Age' where 'Rings' was expected$",
        ),
    ],
)
def test_a_first_row_that_no_rule_could_read_is_refused_for_what_it_is(fields, message):
    with pytest.raises(SourceRejected, match=message):
        check_header(fields, "src", line=3)


@pytest.mark.parametrize(
    ("fields", "is_header"),
    [
        (["M", "0.455", "0.365", "0.095", "0.514", "0.2245", "0.101", "0.15", "15"], False),
        (["M", "?", "0.365", "0.095", "0.514", "0.2245", "0.101", "0.15", "15"], False),  # a row to quarantine
        ("sex,length,diameter,height,whole weight,shucked-weight,Viscera_weight,shell,RINGS".split(","), True),
        (["Sex", "Length", "Diam", "Height", "Whole", "Shucked", "Viscera", "Shell", "Rings"], True),
    ],
)
def test_data_and_headers_in_the_names_we_know_are_read(fields, is_header):
    assert check_header(fields, "src") is is_header
