import pytest

from tierwise.common.errors import TierwiseError
from tierwise.common.units import format_bytes, format_size, parse_count, parse_size


@pytest.mark.parametrize("text,nbytes", [("8M", 8 << 20), ("1.5G", 3 << 29), ("64MiB", 64 << 20), ("512K", 512 << 10),
                                         ("2 MiB", 2 << 20), ("17.3MB", 17_300_000), ("4096", 4096), ("4096B", 4096),
                                         ("1T", 1 << 40), (300, 300)])
def test_sizes_binary_by_default_decimal_with_b(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["huge", "8Mi", "-1", "", "M", "1.2.3G"])
def test_a_bad_size_names_the_option(text):
    with pytest.raises(TierwiseError, match=r"--flash-size: cannot read"):
        parse_size(text, "--flash-size")


def test_counts():
    assert parse_count("10M") == 10_000_000 and parse_count("1e6") == 1_000_000 and parse_count("250k") == 250_000
    assert parse_count("1_000") == 1000
    for bad in ("0", "1.5", "ten", "-3"):
        with pytest.raises(TierwiseError, match="--requests"):
            parse_count(bad, "--requests")


def test_format_bytes():
    assert format_bytes(24 << 20) == "24 MiB" and format_bytes(1536 << 20) == "1.5 GiB" and format_bytes(100) == "100 B"


@pytest.mark.parametrize("nbytes", [8 << 20, 64 << 10, 1536 << 10, 100, 3 << 30])
def test_format_size_reads_back(nbytes):
    assert parse_size(format_size(nbytes)) == nbytes
    assert format_size(8 << 20) == "8M" and format_size(1536 << 10) == "1536K"
